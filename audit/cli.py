"""`custody-audit`: the auditor's side of proof of reserves. So far, liabilities: build the client-balance
sum tree (custodian), check one client's inclusion proof (client), check a whole exported tree (auditor).
Refusals print one line and exit 1."""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import secrets
import sys
from pathlib import Path

from . import liabilities


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        args.handler(args)
    except (liabilities.LiabilityError, ValueError, OSError) as e:
        print(f"custody-audit: error: {e}", file=sys.stderr)
        return 1
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="custody-audit", description="the auditor's proof-of-reserves tools")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    lia = sub.add_parser("liabilities", help="client balances as a Merkle sum tree").add_subparsers(
        dest="liabilities_command", required=True)
    c = lia.add_parser("build", help="build the tree from client,balance CSV; write root, tree and proofs")
    c.add_argument("csv")
    c.add_argument("--out", required=True, help="directory for root.json, tree.json and proofs/")
    c.add_argument("--secret-file", help="hex secret the salts derive from (made and written if missing)")
    c.set_defaults(handler=_build)
    c = lia.add_parser("check", help="a client checks their inclusion proof against the published root")
    c.add_argument("proof")
    c.add_argument("--root", help="the published root hash (default: the one in the proof; compare it!)")
    c.add_argument("--total", type=int, help="the published total in satoshis")
    c.set_defaults(handler=_check)
    c = lia.add_parser("verify-tree", help="check every node of an exported tree adds up and commits")
    c.add_argument("tree")
    c.set_defaults(handler=_verify_tree)
    return p


def _build(args) -> None:
    balances = liabilities.read_csv(Path(args.csv).read_text())
    secret_file = Path(args.secret_file) if args.secret_file else Path(args.out) / "secret.hex"
    out = Path(args.out)
    (out / "proofs").mkdir(parents=True, exist_ok=True)
    if not secret_file.exists():
        secret_file.write_text(secrets.token_hex(32))
        secret_file.chmod(0o600)
    tree = liabilities.build(balances, bytes.fromhex(secret_file.read_text().strip()))
    (out / "root.json").write_text(json.dumps(tree.published(), indent=1))
    (out / "tree.json").write_text(json.dumps(liabilities.export_levels(tree)))
    for n in range(len(balances)):
        (out / "proofs" / f"{n:06d}.json").write_text(json.dumps(tree.proof_at(n), indent=1))
    published = tree.published()
    print(f"{published['leaves']} clients, total {published['total']} sat, root {published['root']}")


def _check(args) -> None:
    proof = json.loads(Path(args.proof).read_text())
    balance = liabilities.verify_inclusion(proof, root=args.root, total=args.total)
    print(f"included: {proof['client']} holds {balance} sat in the tree with root {args.root or proof['root']}")


def _verify_tree(args) -> None:
    levels = [[tuple(node) for node in level] for level in json.loads(Path(args.tree).read_text())]
    digest, total = liabilities.verify_tree(levels)
    print(f"every node adds up: root {digest}, total {total} sat, {len(levels[0])} leaves")


def _version() -> str:
    try:
        return importlib.metadata.version("custody-toolkit")
    except importlib.metadata.PackageNotFoundError:   # run from a source tree that was never installed
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
