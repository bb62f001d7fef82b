"""`custody-signer`: the reference signer's command line: run a simulated device, approve its signing
policy on the device, read its decision log, and build, sign and verify firmware images.
Refusals print one line and exit 1."""
from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import os
import sys
from pathlib import Path

import nacl.signing

from . import firmware, hsm, protocol
from .device import Device, DeviceError
from .durable import atomic_write


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        args.handler(args)
    except (protocol.FirmwareError, DeviceError, ValueError, OSError) as e:
        print(f"custody-signer: error: {e}", file=sys.stderr)
        return 1
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="custody-signer", description="the reference signer")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("simulate", help="run a simulated device on a local socket (made on first start)")
    c.add_argument("--state", required=True, help="the device's state directory (its flash)")
    c.set_defaults(handler=lambda args: _simulate(args.state))

    c = sub.add_parser("hsm-policy", help="approve a signing policy on the device (stands in for its screen)")
    c.add_argument("--state", required=True)
    c.add_argument("policy", help="the policy, JSON")
    c.set_defaults(handler=_install_policy)

    c = sub.add_parser("hsm-log", help="print the device's decision log and check its hash chain")
    c.add_argument("--state", required=True)
    c.set_defaults(handler=_print_log)

    c = sub.add_parser("build-image", help="build a reproducible firmware image and sign it")
    c.add_argument("payload", help="the firmware payload file")
    c.add_argument("--model", required=True, help="hardware model the image is for")
    c.add_argument("--firmware-version", required=True, metavar="MAJOR.MINOR.PATCH")
    c.add_argument("--epoch", type=int, required=True, help="security epoch (anti-rollback)")
    c.add_argument("--production", action="store_true", help="an image for production keys (default: test keys)")
    c.add_argument("--key-file", action="append", default=[], help="a release key (32-byte seed, hex); repeat")
    c.add_argument("--test-keys", type=int, default=0, help="also sign with the first N public test keys")
    c.add_argument("--out", required=True)
    c.set_defaults(handler=_build)

    c = sub.add_parser("sign-image", help="add one release key's signature to an image")
    c.add_argument("image")
    c.add_argument("--key-file", required=True)
    c.set_defaults(handler=_sign)

    c = sub.add_parser("verify-image", help="every check a device makes before installing; prints the manifest")
    c.add_argument("image")
    c.add_argument("--trusted", action="append", required=True, help="a trusted release public key (hex); repeat")
    c.add_argument("--threshold", type=int, required=True)
    c.add_argument("--model", required=True)
    c.add_argument("--installed-version", default="0.0.0")
    c.add_argument("--epoch-counter", type=int, default=0)
    c.add_argument("--production", action="store_true", help="check as a production device")
    c.set_defaults(handler=_verify)

    c = sub.add_parser("test-keys", help="print the public test release keys (never for production)")
    c.add_argument("--count", type=int, default=3)
    c.set_defaults(handler=lambda args: print("\n".join(k.verify_key.encode().hex()
                                                        for k in protocol.test_release_keys(args.count))))
    return p


def _simulate(state: str) -> None:
    from .simulator import serve
    serve(Path(state))


def _install_policy(args) -> None:
    import json
    try:
        policy = json.loads(Path(args.policy).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{args.policy}: not JSON ({e})") from None
    Device(Path(args.state)).hsm.install(policy)
    print(f"policy installed: {len(policy['rules'])} rule(s), {len(policy.get('approvers', {}))} approver(s)")


def _print_log(args) -> None:
    import json
    entries = Device(Path(args.state)).hsm.log()
    for entry in entries:
        print(json.dumps(entry, sort_keys=True))
    broken = hsm.verify_log(entries)
    if broken:
        raise ValueError(f"the decision log is broken: {broken}")


def _key(path: str) -> nacl.signing.SigningKey:
    seed = bytes.fromhex(Path(path).read_text().strip())
    if len(seed) != 32:
        raise ValueError(f"{path}: a release key file holds a 32-byte seed in hex")
    return nacl.signing.SigningKey(seed)


def _build(args) -> None:
    signers = [_key(f) for f in args.key_file] + protocol.test_release_keys(args.test_keys)[:args.test_keys]
    image = firmware.build_image(Path(args.payload).read_bytes(), model=args.model, version=args.firmware_version,
                                 epoch=args.epoch, key_set="production" if args.production else "test",
                                 signers=signers)
    atomic_write(args.out, image, mode=_file_mode(args.out))
    print(f"{args.out}: sha256 {hashlib.sha256(image).hexdigest()}, {len(signers)} signature(s)")


def _sign(args) -> None:
    path = Path(args.image)
    atomic_write(path, firmware.add_signature(path.read_bytes(), _key(args.key_file)), mode=_file_mode(path))


def _file_mode(path) -> int:
    """An image file keeps its permissions; a new one gets those any new file would (0o666 less the umask)."""
    try:
        return os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _verify(args) -> None:
    manifest = protocol.verify_image(Path(args.image).read_bytes(), trusted_keys=set(args.trusted),
                                     threshold=args.threshold, model=args.model,
                                     installed_version=protocol.parse_version(args.installed_version),
                                     epoch_counter=args.epoch_counter, production=args.production)
    print(manifest.canonical().decode())


def _version() -> str:
    try:
        return importlib.metadata.version("custody-toolkit")
    except importlib.metadata.PackageNotFoundError:   # run from a source tree that was never installed
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
