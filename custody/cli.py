"""`custody`: the command line of the custody core (keys, policies, ledger, spends).

Its commands arrive with the issues that build the custody core (keys, policies, ledger, spends); until then it says so and exits non-zero."""
from __future__ import annotations

import argparse
import sys

from importlib.metadata import PackageNotFoundError, version


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="custody", description="the custody core (keys, policies, ledger, spends)".capitalize())
    try:
        release = version("custody-toolkit")
    except PackageNotFoundError:
        release = "unknown"
    parser.add_argument("--version", action="version", version=f"%(prog)s {release}")
    parser.parse_args(argv)
    print("custody: no commands yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
