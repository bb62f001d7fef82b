"""`custody`: the command line of the custody core (keys, policies, ledger, spends); its commands arrive with the issue that builds it."""
import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(prog="custody", description="the custody core (keys, policies, ledger, spends)").parse_args(argv)
    print("custody: no commands yet", file=sys.stderr)
    return 2
