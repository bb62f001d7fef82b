"""`custody approver keygen|enroll|list`: officers' approval keys, the ones the devices' policies name."""
from __future__ import annotations

from pathlib import Path

from custody.errors import CustodyError

from coordinator.cli.plumbing import sessions


def add_commands(sub, command) -> None:
    """Register the commands; `command(name, handler, help, parent)` comes from coordinator.cli.main."""
    ap = sub.add_parser("approver", help="officers' approval keys (what the devices' policies name)").add_subparsers(
        dest="approver_command", required=True)
    c = command("keygen", _approver_keygen, "make an approval key file; the officer keeps it, the coordinator "
                "gets only its public key", ap)
    c.add_argument("file")
    c.add_argument("--kind", choices=["ed25519", "p256"], default="ed25519")
    c = command("enroll", _approver_enroll, "enrol an officer's approval public key (hex, or a PEM file)", ap)
    c.add_argument("public_key")
    c.add_argument("--officer", required=True)
    c.add_argument("--label", default="key file")
    command("list", _approver_list, "every officer's approval keys, as a device policy's approvers", ap)


def _approver_keygen(args):
    from custody.people.credentials import generate_key_file
    try:
        public = generate_key_file(Path(args.file), args.kind)
    except FileExistsError:
        raise CustodyError(f"{args.file} exists: an approval key is never overwritten") from None
    return {"file": args.file, "kind": args.kind, "public_key": public}


def _approver_enroll(args):
    from custody.people import credentials
    from coordinator.accounts import get_user
    text = Path(args.public_key).read_text() if Path(args.public_key).is_file() else args.public_key
    with sessions(args).begin() as s:
        return credentials.credential_json(credentials.enroll_key(s, get_user(s, args.officer), text,
                                                                  label=args.label, actor=args.actor))


def _approver_list(args):
    from custody.people import credentials
    with sessions(args)() as s:
        return {"approvers": credentials.device_approvers(s)}
