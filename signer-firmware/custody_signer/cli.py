"""`custody-signer`: the command line of the reference signer; its commands arrive with the issue that builds it."""
import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(prog="custody-signer", description="the reference signer").parse_args(argv)
    print("custody-signer: no commands yet", file=sys.stderr)
    return 2
