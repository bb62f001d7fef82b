"""`custody log verify|export|checkpoint` and `custody log-signer`: the tamper-evident event log."""
from __future__ import annotations

from coordinator.cli.plumbing import emit_lines, OnFirstUse, read_text, sessions

log_service = OnFirstUse("custody.eventlog.service")


def add_commands(sub, command) -> None:
    """Register the commands; `command(name, handler, help, parent)` comes from coordinator.cli.main."""
    log = sub.add_parser("log", help="the tamper-evident event log").add_subparsers(dest="log_command", required=True)
    c = command("verify", _log_verify, "check every entry's hash, chain link and signature", log)
    c.add_argument("--file", help="verify an exported JSONL copy instead of the database")
    c.add_argument("--key", action="append", help="accepted coordinator public key (hex); default: this coordinator's")
    c.add_argument("--checkpoint", nargs="+", default=[], metavar="FILE",
                   help="checkpoint files (or directories of them) the log must still agree with")
    c = command("export", _log_export, "export the log as JSON Lines", log)
    c.add_argument("file", nargs="?", default="-")
    c = command("checkpoint", _log_checkpoint, "sign the log's head and write it for the auditor to keep", log)
    c.add_argument("--out", required=True, help="directory to write the checkpoint file in")
    c = command("log-signer", _log_signer, "hold the coordinator's log key in its own process, signing over a "
                "unix socket (the coordinator then runs with CUSTODY_LOG_SIGNER=unix:PATH)")
    c.add_argument("--key", required=True, help="the log key file (32-byte hex seed, mode 0600)")
    c.add_argument("--socket", required=True, help="the unix socket to answer on (made owner-only)")


def _log_verify(args):
    keys = set(args.key) if args.key else None
    kept = log_service.log_checkpoint_files(args.checkpoint, keys=keys) if args.checkpoint else None
    if args.file:
        return log_service.log_verify(None, keys=keys, jsonl=read_text(args.file), checkpoints=kept)
    with sessions(args)() as s:
        return log_service.log_verify(s, keys=keys, checkpoints=kept)


def _log_checkpoint(args):
    with sessions(args).begin() as s:
        return log_service.log_checkpoint(s, args.out, actor=args.actor)


def _log_signer(args):
    """Serve signatures until SIGTERM or SIGINT."""
    import signal
    import threading
    from coordinator.jsonlog import setup_json_logging
    from custody.eventlog.signer import serve
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    setup_json_logging()
    serve(args.key, args.socket, stop)
    return None


def _log_export(args):
    with sessions(args)() as s:
        return emit_lines(log_service.log_export(s), args.file)
