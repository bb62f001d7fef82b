"""`custody-audit`: the command line of the auditor's proof-of-reserves verifier.

Its commands arrive with the issues that build the auditor's proof-of-reserves verifier; until then it says so and exits non-zero."""
from __future__ import annotations

import argparse
import sys

from importlib.metadata import PackageNotFoundError, version


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="custody-audit", description="the auditor's proof-of-reserves verifier".capitalize())
    try:
        release = version("custody-toolkit")
    except PackageNotFoundError:
        release = "unknown"
    parser.add_argument("--version", action="version", version=f"%(prog)s {release}")
    parser.parse_args(argv)
    print("custody-audit: no commands yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
