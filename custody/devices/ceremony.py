"""The onboarding ceremony: from issued devices to an active M-of-N policy every device has registered.

1. `start`: name the policy, M, and the devices (each issued to a signatory). Each device gets a fresh
   random challenge.
2. `collect_key` (through HWI) or `accept_key` (an air-gapped device's export): the device's account
   xpub with its key origin and a BIP-322 signature over the challenge by that key. A key without a
   valid proof, or whose origin is not the device's fingerprint, is refused: a swapped xpub stops here.
3. `register`: with every key in, the coordinator builds the policy and registers it on every device.
   Each device checks the policy itself (its own key, M, N) and returns a proof (its key's signature
   over the policy hash) and the first receive address it derived; both are checked against the
   coordinator's own and stored. The device then shows that address.
4. `confirm`: each signatory confirms the address their device shows is the one the coordinator
   shows. When all have, the policy becomes active and the devices active.
"""
from __future__ import annotations

import secrets

from embit import bip32
from embit.networks import NETWORKS
from embit.script import p2wpkh
from sqlalchemy import select
from sqlalchemy.orm import Session

from custody_signer.protocol import policy_id, possession_message, registration_message

from custody.bitcoin import bip322
from custody.bitcoin.keys import KeyImportError, parse_key
from custody.bitcoin.policies import build_policy, PolicyError
from custody.devices.holders import canonical
from custody.devices.hwi import open_device
from custody.devices.models import Ceremony, CeremonyMember, DeviceRegistration
from custody.errors import CustodyError, NotFound
from custody.eventlog.log import record
from custody.ledger.models import Key, Policy, Signatory, SigningDevice
from custody.ledger.registry import check_policy_name, create_policy, receive_address, set_status, store_key
from custody.store.base import utcnow

ACCOUNT_PATH = {"main": "m/48h/0h/0h/2h"}          # BIP-48 native segwit multisig, account 0
TEST_ACCOUNT_PATH = "m/48h/1h/0h/2h"


def account_path(network: str) -> str:
    return ACCOUNT_PATH.get(network, TEST_ACCOUNT_PATH)


def key_address(xpub: str, network: str) -> str:
    """The P2WPKH address of an account key: what its BIP-322 proofs are signed for."""
    return p2wpkh(bip32.HDKey.from_base58(xpub).key).address(NETWORKS[network])


def get(session: Session, ceremony_id: int) -> Ceremony:
    ceremony = session.get(Ceremony, ceremony_id)
    if ceremony is None:
        raise NotFound(f"no ceremony #{ceremony_id}")
    return ceremony


def members(session: Session, ceremony: Ceremony) -> list[tuple[CeremonyMember, SigningDevice]]:
    return list(session.execute(select(CeremonyMember, SigningDevice).join(
        SigningDevice, SigningDevice.id == CeremonyMember.device_id).where(
        CeremonyMember.ceremony_id == ceremony.id).order_by(SigningDevice.id)))


def start(session: Session, name: str, threshold: int, serials: list[str], *, actor: str,
          replaces: Policy | None = None) -> Ceremony:
    name = name.strip()
    if not name or len(name) > 200:
        raise CustodyError("a policy name is 1 to 200 characters")
    check_policy_name(name)          # refused now, not when the ceremony makes the policy
    if session.scalar(select(Policy).where(Policy.name == name)) or \
            session.scalar(select(Ceremony).where(Ceremony.policy_name == name)):
        raise CustodyError(f"the name {name!r} is taken by a policy or another ceremony")
    if len(set(serials)) != len(serials):
        raise CustodyError("a device is listed twice")
    if not 1 <= threshold <= len(serials):
        raise CustodyError(f"threshold {threshold} is not between 1 and the {len(serials)} devices")
    devices = []
    for serial in serials:
        device = session.scalar(select(SigningDevice).where(SigningDevice.serial == serial))
        if device is None:
            raise NotFound(f"no device {serial} in the inventory")
        if device.status not in ("issued", "active"):
            raise CustodyError(f"device {serial} is {device.status}; only issued or active devices join a ceremony")
        devices.append(device)
    ceremony = Ceremony(policy_name=name, threshold=threshold, state="keys", created_by=actor,
                        replaces_policy_id=replaces.id if replaces else None)
    session.add(ceremony)
    session.flush()
    for device in devices:
        session.add(CeremonyMember(ceremony_id=ceremony.id, device_id=device.id, challenge=secrets.token_hex(16)))
    session.flush()
    record(session, "ceremony.started", actor, f"ceremony:{ceremony.id}",
           {"policy": name, "threshold": threshold, "devices": serials,
            "replaces": replaces.name if replaces else None})
    return ceremony


def _member(session: Session, ceremony: Ceremony, serial: str) -> tuple[CeremonyMember, SigningDevice]:
    for member, device in members(session, ceremony):
        if device.serial == serial:
            return member, device
    raise NotFound(f"device {serial} is not part of ceremony #{ceremony.id}")


def collect_key(session: Session, ceremony: Ceremony, serial: str, network: str, *, actor: str) -> Key:
    """Ask the device (through HWI) for its account key and a proof of possession."""
    member, device = _member(session, ceremony, serial)
    path = account_path(network)
    with open_device(device, network) as d:
        fingerprint = d.fingerprint()
        xpub = d.xpub(path)
        proof = d.sign_message(possession_message(member.challenge), path)
    return accept_key(session, ceremony, serial, f"[{fingerprint}{path[1:]}]{xpub}", proof, network, actor=actor)


def accept_key(session: Session, ceremony: Ceremony, serial: str, key_text: str, proof: str, network: str,
               *, actor: str) -> Key:
    """Check a key and its proof of possession, then bind it to the device for this ceremony."""
    if ceremony.state != "keys":
        raise CustodyError(f"ceremony #{ceremony.id} is past collecting keys ({ceremony.state})")
    member, device = _member(session, ceremony, serial)
    try:
        key = parse_key(key_text, network=network)
    except KeyImportError as e:
        raise CustodyError(str(e)) from None
    if device.fingerprint is not None and key.fingerprint != device.fingerprint:
        raise CustodyError(f"the key's origin fingerprint {key.fingerprint} is not device {serial}'s "
                           f"({device.fingerprint}): refused")
    if key.path_str != account_path(network):
        raise CustodyError(f"the key is at {key.path_str}; the ceremony takes {account_path(network)}")
    if not bip322.verify_simple(p2wpkh(key.hdkey.key).data, possession_message(member.challenge), proof):
        raise CustodyError(f"the proof of possession does not verify for this key: device {serial} did not sign "
                           f"the challenge with it (a swapped xpub?): refused")
    row = store_key(session, key)
    if row.device_id not in (None, device.id):
        raise CustodyError(f"key {key.origin} belongs to another device")
    row.device_id, row.signatory_id = device.id, device.signatory_id
    member.key_id = row.id
    device.fingerprint = key.fingerprint
    record(session, "ceremony.key", actor, f"ceremony:{ceremony.id}",
           {"device": serial, "key": str(key), "proof": proof, "challenge": member.challenge})
    return row


def register(session: Session, ceremony: Ceremony, network: str, *, actor: str) -> Policy:
    """Build the policy from the collected keys and register it on every device, checking each proof."""
    if ceremony.state != "keys":
        raise CustodyError(f"ceremony #{ceremony.id} is {ceremony.state}")
    pairs = members(session, ceremony)
    missing = [device.serial for member, device in pairs if member.key_id is None]
    if missing:
        raise CustodyError(f"keys still missing from: {', '.join(missing)}")
    keys = [session.get(Key, member.key_id) for member, _ in pairs]
    try:
        spec = build_policy("wsh-sortedmulti", ceremony.threshold,
                            [f"[{k.fingerprint}{k.path[1:]}]{k.xpub}" for k in keys], network=network)
    except PolicyError as e:
        raise CustodyError(str(e)) from None
    policy = create_policy(session, ceremony.policy_name, spec, actor=actor)
    first = receive_address(session, policy)
    expected_hash = policy_id(policy.name, policy.descriptor)
    for (member, device), key in zip(pairs, keys):
        with open_device(device, network) as d:
            result = d.register(policy.name, policy.descriptor)
            shown = d.display_address(_at_first_address(policy.descriptor))
        check_registration(result, expected_hash, key, first, shown, device.serial, network)
        session.add(DeviceRegistration(device_id=device.id, policy_id=policy.id, state="registered",
                                       policy_hash=expected_hash, proof=result["proof"],
                                       proof_address=result["proof_address"], first_address=shown))
        record(session, "device.registered", actor, f"device:{device.serial}",
               {"policy": policy.name, "policy_hash": expected_hash, "proof": result["proof"],
                "position": result.get("position"), "first_address": shown})
    ceremony.policy_id, ceremony.state = policy.id, "confirming"
    session.flush()
    return policy


def check_registration(result: dict, expected_hash: str, key: Key, first: str, shown: str, serial: str,
                       network: str) -> None:
    """A device's registration is accepted only if its proof verifies for its own key over our hash and
    it derived the same first address as the coordinator."""
    if result.get("policy_id") != expected_hash:
        raise CustodyError(f"device {serial} registered a different policy ({str(result.get('policy_id'))[:16]}…)")
    address = key_address(key.xpub, network)
    if result.get("proof_address") != address or not bip322.verify_simple(
            p2wpkh(bip32.HDKey.from_base58(key.xpub).key).data, registration_message(expected_hash),
            str(result.get("proof"))):
        raise CustodyError(f"device {serial}'s registration proof does not verify for its key: refused")
    if result.get("first_address") != first or shown != first:
        raise CustodyError(f"device {serial} derives first address {shown}, the coordinator {first}: refused")


def confirm(session: Session, ceremony: Ceremony, serial: str, address: str, *, by: str) -> Ceremony:
    """The device's holder confirms the address on its screen; the last confirmation activates the policy."""
    if ceremony.state != "confirming":
        raise CustodyError(f"ceremony #{ceremony.id} is {ceremony.state}; nothing to confirm")
    _member_row, device = _member(session, ceremony, serial)
    holder = session.get(Signatory, device.signatory_id) if device.signatory_id else None
    if holder is not None and canonical(holder.name) != canonical(by):
        raise CustodyError(f"only {holder.name}, who holds device {serial}, confirms what it shows")
    registration = session.get(DeviceRegistration, (device.id, ceremony.policy_id))
    first = receive_address(session, session.get(Policy, ceremony.policy_id))
    if address.strip() != first:
        raise CustodyError(f"{address.strip()} is not the policy's first address {first}: do not use this "
                           "policy; abandon the ceremony and investigate")
    if registration.state == "confirmed":
        raise CustodyError(f"device {serial} has already been confirmed")
    registration.state, registration.confirmed_by, registration.confirmed_at = "confirmed", by, utcnow()
    record(session, "device.confirmed", by, f"device:{serial}", {"policy": ceremony.policy_name, "address": first})
    pending = [d.serial for m, d in members(session, ceremony)
               if session.get(DeviceRegistration, (d.id, ceremony.policy_id)).state != "confirmed"]
    if not pending:
        policy = session.get(Policy, ceremony.policy_id)
        set_status(session, policy, "active", actor=by)
        for _m, d in members(session, ceremony):
            if d.status == "issued":
                d.status = "active"
                record(session, "device.status", by, f"device:{d.serial}", {"from": "issued", "to": "active",
                                                                            "reason": "ceremony complete"})
        ceremony.state = "complete"
        record(session, "ceremony.complete", by, f"ceremony:{ceremony.id}", {"policy": policy.name})
    return ceremony


def status(session: Session, ceremony: Ceremony) -> dict:
    out = {"id": ceremony.id, "policy": ceremony.policy_name, "threshold": ceremony.threshold,
           "state": ceremony.state, "devices": []}
    for member, device in members(session, ceremony):
        registration = session.get(DeviceRegistration, (device.id, ceremony.policy_id)) if ceremony.policy_id else None
        key = session.get(Key, member.key_id) if member.key_id else None
        out["devices"].append({"serial": device.serial, "challenge": member.challenge,
                               "key": f"[{key.fingerprint}{key.path[1:]}]{key.xpub}" if key else None,
                               "registration": registration.state if registration else None,
                               "first_address": registration.first_address if registration else None})
    if ceremony.policy_id:
        out["first_address"] = receive_address(session, session.get(Policy, ceremony.policy_id))
    return out


def _at_first_address(descriptor: str) -> str:
    """The policy's descriptor at receive index 0 (what HWI's displayaddress takes)."""
    return descriptor.split("#")[0].replace("/<0;1>/*", "/0/0")
