"""`custody-audit`: the command line of the auditor's proof-of-reserves verifier; its commands arrive with the issue that builds it."""
import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(prog="custody-audit", description="the auditor's proof-of-reserves verifier").parse_args(argv)
    print("custody-audit: no commands yet", file=sys.stderr)
    return 2
