"""`custody-signer`: the command line of the reference signer.

Its commands arrive with the issues that build the reference signer; until then it says so and exits non-zero."""
from __future__ import annotations

import argparse
import sys

from importlib.metadata import PackageNotFoundError, version


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="custody-signer", description="the reference signer".capitalize())
    try:
        release = version("custody-toolkit")
    except PackageNotFoundError:
        release = "unknown"
    parser.add_argument("--version", action="version", version=f"%(prog)s {release}")
    parser.parse_args(argv)
    print("custody-signer: no commands yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
