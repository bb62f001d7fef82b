"""`custody-audit`: the auditor's side of proof of reserves. `verify` checks a proof package on the
auditor's own node and writes a signed report; `check-report` checks a report's signature; `liabilities`
builds the client-balance sum tree (custodian), checks one client's inclusion proof (client) and a whole
exported tree (auditor). Refusals print one line and exit 1; a proof that is not valid exits 2
(invalid) or 3 (inconclusive)."""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import secrets
import sys
from pathlib import Path

from . import bip127, liabilities, log_checkpoint, report, verify
from .rpc import Node, NodeError


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        args.handler(args)
    except (liabilities.LiabilityError, NodeError, ValueError, OSError) as e:
        print(f"custody-audit: error: {e}", file=sys.stderr)
        return 1
    return 0 if args.handler != _verify else args.exit_code


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
    c = sub.add_parser("verify", help="verify a proof-of-reserves package on your own node")
    c.add_argument("package")
    c.add_argument("--node", required=True, help="your node's RPC URL (http://user:password@host:port)")
    c.add_argument("--cookie", help="the node's .cookie file, if it uses cookie authentication")
    c.add_argument("--nonce", required=True, help="the nonce you gave the custodian for this audit")
    c.add_argument("--audit", help="the audit's name, as you gave it to the custodian")
    c.add_argument("--min-depth", type=int, default=verify.DEFAULT_MIN_DEPTH,
                   help="blocks that must bury the proof height (default %(default)s)")
    c.add_argument("--liabilities", help="the published liabilities root.json: check liabilities <= reserves")
    c.add_argument("--key", help="your ed25519 signing key file (made on first use); default ./auditor.key",
                   default="auditor.key")
    c.add_argument("--auditor", default="auditor", help="your name, as the report states it")
    c.add_argument("--report", help="write the signed JSON report here")
    c.add_argument("--html", help="write the human report here")
    c.add_argument("--workers", type=int, help="processes for script verification (default: one per core)")
    c.add_argument("--checkpoints", help="directory of the custodian's event-log checkpoints you keep: the "
                   "package's head must not contradict them, and is kept there once it holds")
    c.set_defaults(handler=_verify)
    c = sub.add_parser("import-bip127", help="read a BIP-127 proof file (any tool's): its message and commitment "
                       "variant; with --out, a package for `verify`")
    c.add_argument("file")
    c.add_argument("--out", help="write a package here (needs --node, --descriptor and --height)")
    c.add_argument("--node", help="your node's RPC URL")
    c.add_argument("--cookie", help="the node's .cookie file")
    c.add_argument("--descriptor", action="append", default=[], help="a descriptor the custodian declared; repeat")
    c.add_argument("--last-index", type=int, default=999, help="the declared range's last index (default %(default)s)")
    c.add_argument("--height", type=int, help="the height the proof is for")
    c.add_argument("--network", default="regtest", choices=["main", "test", "testnet4", "signet", "regtest"])
    c.set_defaults(handler=_import_bip127)
    c = sub.add_parser("check-report", help="check a signed report was not changed")
    c.add_argument("report")
    c.add_argument("--public-key", help="the auditor's public key (hex) the report must be signed by")
    c.set_defaults(handler=_check_report)
    return p


def _verify(args) -> None:
    text = Path(args.package).read_text()
    package = verify.load_package(text)
    kept = None
    if args.checkpoints:
        if not Path(args.checkpoints).is_dir():
            raise ValueError(f"--checkpoints {args.checkpoints}: not a directory")
        kept = log_checkpoint.load_files([Path(args.checkpoints)])
    client = Node(args.node, cookie_file=args.cookie, timeout=600)
    result = verify.verify(package, client, nonce=args.nonce, audit=args.audit, min_depth=args.min_depth,
                           workers=args.workers, progress=_progress(len(package["coins"])), checkpoints=kept)
    if args.checkpoints and any(c.name == "event log" and c.verdict == verify.VALID for c in result.checks):
        head = package["event_log"]["checkpoint"]
        name = f"checkpoint-{head['seq']:012d}-{head['time'].replace(':', '')}.json"
        (Path(args.checkpoints) / name).write_text(json.dumps(package["event_log"], indent=1) + "\n")
    if args.liabilities:
        verify.solvency(result, json.loads(Path(args.liabilities).read_text()))
    signed = report.sign(report.build(package, verify.package_digest(text), result, auditor=args.auditor),
                         report.load_or_create_key(Path(args.key)))
    if args.report:
        Path(args.report).write_text(json.dumps(signed, indent=1))
    if args.html:
        Path(args.html).write_text(report.to_html(signed))
    for c in result.checks:
        print(f"{c.name:<11} {c.verdict:<13} {c.detail}")
    print(f"verdict: {result.verdict}: {result.total} sat in {result.coins} coins at height {package['height']}")
    args.exit_code = {verify.VALID: 0, verify.INVALID: 2}.get(result.verdict, 3)


def _import_bip127(args) -> None:
    proof = bip127.read(Path(args.file).read_bytes())
    standard = proof.variant == "sha256 with prefix"
    print(f"message: {proof.message.decode(errors='replace')!r}")
    print(f"commitment: {proof.variant or 'does not commit to this message'}"
          f"{' (BIP-127)' if standard else ' (not BIP-127: verification will fail the commitment check)'}")
    print(f"{len(proof.amounts)} coins, {sum(proof.amounts)} sat claimed")
    if args.out:
        if not (args.node and args.descriptor and args.height is not None):
            raise ValueError("--out needs --node, --descriptor and --height")
        client = Node(args.node, cookie_file=args.cookie, timeout=600)
        package = bip127.to_package(proof, client, height=args.height, network=args.network,
                                    descriptors=[bip127.declare(d, args.last_index) for d in args.descriptor])
        Path(args.out).write_text(json.dumps(package, indent=1))
        print(f"package written to {args.out}")


def _progress(total: int):
    """A progress line on a terminal while the node is asked about the coins."""
    if not sys.stderr.isatty():
        return None

    def show(done: int) -> None:
        print(f"\r  {done:,}/{total:,} coins looked up on the node", end="\n" if done >= total else "",
              file=sys.stderr, flush=True)
    return show


def _check_report(args) -> None:
    checked = report.check(json.loads(Path(args.report).read_text()), args.public_key)
    print(f"signature valid: {checked['verdict']} proof of {checked['total']} sat for {checked['custodian']}, "
          f"audit {checked['audit']}, height {checked['height']}")


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
