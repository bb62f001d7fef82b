"""`custody device|ceremony|firmware|rotation ...`: the device lifecycle on the command line.
Each handler opens one transaction and calls the devices' or rotations' service; a refusal rolls it back (see `main`)."""
from __future__ import annotations

from pathlib import Path

from custody.devices import service as ds
from custody.rotation import service as rs
from custody.spending import service as spend_service


def add_commands(sub, command, tx) -> None:
    """Register the subcommands; `command(name, handler, help, parent)` and `tx(fn)` (run `fn(session, args)`
    in one transaction) come from cli."""
    dev = sub.add_parser("device", help="signing devices: inventory, status, signing").add_subparsers(
        dest="device_command", required=True)
    command("connected", lambda args: ds.connected(), "devices HWI sees now", dev)
    command("list", tx(lambda s, a: [_row(d) for d in ds.device_list(s)]), "the inventory", dev)
    c = command("show", tx(lambda s, a: ds.device_show(s, a.serial)), "one device, with its registrations", dev)
    c.add_argument("serial")
    c = command("issue", tx(lambda s, a: ds.device_issue(s, model=a.model, serial=a.serial, to=a.to, actor=a.actor)),
                "record a device handed to a signatory", dev)
    c.add_argument("serial")
    c.add_argument("--model", required=True)
    c.add_argument("--to", required=True, help="the signatory")
    c = command("connect", tx(lambda s, a: ds.device_connect(s, a.serial, network=a.network, actor=a.actor,
                                                             fingerprint=a.fingerprint)),
                "find the device through HWI and record its fingerprint and firmware", dev)
    c.add_argument("serial")
    c.add_argument("--fingerprint", help="for a device HWI lists without a serial: its fingerprint (`device connected`)")
    for status in ("suspend", "resume", "revoke"):
        target = {"suspend": "suspended", "resume": "active", "revoke": "revoked"}[status]
        c = command(status, tx(lambda s, a, target=target: ds.device_status(s, a.serial, target, actor=a.actor,
                                                                            reason=a.reason)),
                    f"{status} a device", dev)
        c.add_argument("serial")
        c.add_argument("--reason", default="")
    c = command("sign", tx(lambda s, a: spend_service.spend_sign_on_device(s, a.spend, a.serial, actor=a.actor)),
                "have a device sign a spend's PSBT through HWI", dev)
    c.add_argument("spend", type=int)
    c.add_argument("serial")

    cer = sub.add_parser("ceremony", help="key ceremonies: keys with proof, registration, confirmation"
                         ).add_subparsers(dest="ceremony_command", required=True)
    c = command("start", tx(lambda s, a: ds.ceremony_start(s, a.policy, threshold=a.threshold, devices_=a.device,
                                                           actor=a.actor)), "start a ceremony for a new policy", cer)
    c.add_argument("policy")
    c.add_argument("--threshold", type=int, required=True)
    c.add_argument("--device", action="append", required=True, help="a device serial; repeat")
    command("list", tx(lambda s, a: ds.ceremony_list(s)), "every ceremony", cer)
    c = command("show", tx(lambda s, a: ds.ceremony_show(s, a.id)), "a ceremony's progress", cer)
    c.add_argument("id", type=int)
    c = command("collect", tx(lambda s, a: ds.ceremony_collect(s, a.id, a.serial, network=a.network, actor=a.actor)),
                "take the device's key and proof of possession through HWI", cer)
    c.add_argument("id", type=int)
    c.add_argument("serial")
    c = command("key", tx(lambda s, a: ds.ceremony_key(s, a.id, a.serial, key=a.key, proof=a.proof,
                                                       network=a.network, actor=a.actor)),
                "hand in an air-gapped device's key and its BIP-322 proof over the challenge", cer)
    c.add_argument("id", type=int)
    c.add_argument("serial")
    c.add_argument("--key", required=True, help="[fingerprint/48h/1h/0h/2h]tpub…")
    c.add_argument("--proof", required=True)
    c = command("register", tx(lambda s, a: ds.ceremony_register(s, a.id, network=a.network, actor=a.actor)),
                "build the policy and register it on every device", cer)
    c.add_argument("id", type=int)
    c = command("confirm", tx(lambda s, a: ds.ceremony_confirm(s, a.id, a.serial, address=a.address, by=a.actor)),
                "confirm the address the device shows", cer)
    c.add_argument("id", type=int)
    c.add_argument("serial")
    c.add_argument("--address", required=True, help="the address as read on the device's screen")

    fw = sub.add_parser("firmware", help="firmware releases, minimum versions, upgrades").add_subparsers(
        dest="firmware_command", required=True)
    c = command("trust", tx(lambda s, a: ds.firmware_trust(s, a.model, keys=a.key, threshold=a.threshold,
                                                           production=not a.test_keys, actor=a.actor)),
                "set the release keys trusted for a model", fw)
    c.add_argument("model")
    c.add_argument("--key", action="append", required=True, help="ed25519 public key (hex); repeat")
    c.add_argument("--threshold", type=int, required=True)
    c.add_argument("--test-keys", action="store_true", help="accept images built for test keys (never in production)")
    c = command("add", tx(lambda s, a: ds.firmware_add(s, Path(a.image).read_bytes(), actor=a.actor)),
                "verify a release image and add it to the registry", fw)
    c.add_argument("image")
    command("list", tx(lambda s, a: ds.firmware_list(s)), "releases in the registry", fw)
    c = command("minimum", tx(lambda s, a: ds.firmware_minimum(s, a.model, a.version, actor=a.actor)),
                "the version a model must run to sign", fw)
    c.add_argument("model")
    c.add_argument("version")
    c = command("upgrade", tx(lambda s, a: ds.firmware_upgrade(s, a.serial, a.release, network=a.network,
                                                               actor=a.actor)), "install a release on a device", fw)
    c.add_argument("serial")
    c.add_argument("release", type=int)

    rot = sub.add_parser("rotation", help="replace devices: successor policy, test spend, migration").add_subparsers(
        dest="rotation_command", required=True)
    c = command("start", tx(lambda s, a: rs.rotation_start(s, a.policy, successor=a.successor,
                                                           replace=dict(r.split("=", 1) for r in a.replace),
                                                           actor=a.actor)), "start a rotation", rot)
    c.add_argument("policy")
    c.add_argument("--successor", required=True, help="name of the successor policy")
    c.add_argument("--replace", action="append", required=True, metavar="OLD=NEW", help="device serials; repeat")
    command("list", tx(lambda s, a: rs.rotation_list(s)), "every rotation", rot)
    c = command("test", tx(lambda s, a: rs.rotation_test(s, a.id, amount=a.amount, requester=a.actor,
                                                         fee_rate=a.fee_rate)), "request the test spend", rot)
    c.add_argument("id", type=int)
    c.add_argument("--amount", default="10000sat")
    c.add_argument("--fee-rate", type=float, required=True)
    c = command("migrate", tx(lambda s, a: rs.rotation_migrate(s, a.id, requester=a.actor, fee_rate=a.fee_rate)),
                "request the sweep of every coin to the successor", rot)
    c.add_argument("id", type=int)
    c.add_argument("--fee-rate", type=float, required=True)
    c = command("complete", tx(lambda s, a: rs.rotation_complete(s, a.id, actor=a.actor)),
                "retire the old policy and revoke leaving devices, once the migration confirmed", rot)
    c.add_argument("id", type=int)


def _row(device: dict) -> dict:
    return {k: device[k] for k in ("serial", "model", "fingerprint", "firmware_version", "firmware", "status",
                                   "signatory")} | {"policies": len(device["registrations"])}
