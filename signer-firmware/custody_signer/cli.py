"""`custody-signer`: the command line of the reference signer; its commands arrive with the issue that builds it."""
import argparse
import importlib.metadata
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="custody-signer", description="the reference signer")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.parse_args(argv)
    print("custody-signer: no commands yet", file=sys.stderr)
    return 2


def _version() -> str:
    try:
        return importlib.metadata.version("custody-toolkit")
    except importlib.metadata.PackageNotFoundError:   # run from a source tree that was never installed
        return "unknown"
