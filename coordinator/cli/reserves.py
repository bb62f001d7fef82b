"""`custody reserves ...`: proof of reserves on the command line (create, sign, finalize, package)."""
from __future__ import annotations

import sys
from pathlib import Path

from custody.reserves import service as rs


def add_commands(sub, command, tx, client) -> None:
    """Register the subcommands; `command`, `tx(fn)` (run `fn(session, args)` in one transaction) and
    `client(args)` come from cli."""
    res = sub.add_parser("reserves", help="proof of reserves for auditors").add_subparsers(
        dest="reserves_command", required=True)
    c = command("create", tx(lambda s, a: _create(s, a, client(a))),
                "start a proof over every coin held at a height, for the auditor's challenge", res)
    c.add_argument("--auditor-nonce", required=True, help="the nonce the auditor gave you")
    c.add_argument("--audit", required=True, help="the audit's name, e.g. 2026-Q4")
    c.add_argument("--custodian", required=True, help="who is proving, as the message names them")
    c.add_argument("--height", type=int, help="the height the auditor chose (default: the tip)")
    c.add_argument("--policy", action="append", help="a policy to prove; repeat (default: every policy not retired)")
    c.add_argument("--kind", choices=["bip322", "bip127"], default="bip322",
                   help="how input 0 commits to the message (default bip322)")
    c.add_argument("--device", action="append", default=[], help="sign on this device through HWI; repeat")
    c.add_argument("--out", help="when fully signed, finalize and write the package here")
    command("list", tx(lambda s, a: rs.runs(s)), "every run", res)
    c = command("show", tx(lambda s, a: rs.show(s, a.run)), "one run", res)
    c.add_argument("run", type=int)
    c = command("psbt", tx(lambda s, a: _write(rs.psbt(s, a.run), a.out)), "the proof PSBT for signers", res)
    c.add_argument("run", type=int)
    c.add_argument("--out", default="-")
    c = command("sign", tx(lambda s, a: rs.sign(s, a.run, Path(a.file).read_text() if a.file != "-" else sys.stdin.read(),
                                               actor=a.actor)), "add a signed copy of the PSBT", res)
    c.add_argument("run", type=int)
    c.add_argument("file")
    c = command("sign-device", tx(lambda s, a: rs.sign_on_device(s, a.run, a.serial, actor=a.actor)),
                "have a device show the message and sign, through HWI", res)
    c.add_argument("run", type=int)
    c.add_argument("serial")
    c = command("finalize", tx(lambda s, a: _finalize(s, a)), "assemble the proof and write its package", res)
    c.add_argument("run", type=int)
    c.add_argument("--out", required=True)
    c = command("package", tx(lambda s, a: _write(rs.package(s, a.run), a.out)), "a finalized run's package", res)
    c.add_argument("run", type=int)
    c.add_argument("--out", default="-")
    c = command("export-bip127", tx(lambda s, a: _write(rs.bip127_psbt(s, a.run), a.out)),
                "a finalized bip127 run as a BIP-127 proof file (finalized PSBT)", res)
    c.add_argument("run", type=int)
    c.add_argument("--out", default="-")
    c = command("check", tx(lambda s, a: _check(s, a, client(a))),
                "verify a finalized run as the auditor will, on this node, and keep the signed report", res)
    c.add_argument("run", type=int)
    c.add_argument("--min-depth", type=int, default=1)
    c = command("schedule", tx(lambda s, a: rs.schedule(s, a.audit, every_days=a.every_days, policies=a.policy,
                                                        actor=a.actor)), "ask for a re-proof every N days", res)
    c.add_argument("audit")
    c.add_argument("--every-days", type=int, required=True)
    c.add_argument("--policy", action="append")
    command("schedules", tx(lambda s, a: rs.schedules(s)), "scheduled re-proofs", res)


def _create(s, a, client) -> dict:
    run = rs.create(s, client, nonce=a.auditor_nonce, audit=a.audit, custodian=a.custodian, policies=a.policy,
                    height=a.height, kind=a.kind, actor=a.actor)
    for serial in a.device:
        run = rs.sign_on_device(s, run["id"], serial, actor=a.actor)
    if a.out and a.device:
        rs.finalize(s, run["id"], actor=a.actor)
        _write(rs.package(s, run["id"]), a.out)
        run = {**rs.show(s, run["id"]), "package": a.out}
    return run


def _check(s, a, client) -> dict:
    signed = rs.self_check(s, client, a.run, actor=a.actor, min_depth=a.min_depth)
    return {"verdict": signed["report"]["verdict"],
            **{c["name"]: f"{c['verdict']}: {c['detail']}" for c in signed["report"]["checks"]}}


def _finalize(s, a) -> dict:
    rs.finalize(s, a.run, actor=a.actor)
    _write(rs.package(s, a.run), a.out)
    return {**rs.show(s, a.run), "package": a.out}


def _write(text: str, out: str) -> str | None:
    if out == "-":
        return text
    Path(out).write_text(text)
    return None
