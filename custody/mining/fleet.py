"""A mining fleet's payout wallet on a signing device: one key, a wpkh policy, and the custody policy
registered beside it as watch-only, so the device can prove for itself that a sweep pays custody.

The device gives its BIP-84 account key with a BIP-322 proof of possession over a fresh challenge,
registers the single-key wallet (with the same registration proof a multisig ceremony checks) and the
custody policy (watch-only, shown to its holder), and its holder confirms the first address the device
shows. Which destinations the key may pay is the device's own signing policy (`to_wallets`), approved
by the holder on the device, never sent by the coordinator.
"""
from __future__ import annotations

import secrets

from embit.script import p2wpkh
from sqlalchemy.orm import Session

from custody_signer.protocol import policy_id, possession_message

from custody.bitcoin import bip322
from custody.bitcoin.keys import KeyImportError, parse_key
from custody.bitcoin.policies import build_policy, PolicyError
from custody.devices import inventory as devices
from custody.devices.ceremony import _at_first_address, check_registration
from custody.devices.hwi import open_device
from custody.devices.models import DeviceRegistration
from custody.errors import CustodyError
from custody.eventlog.log import record
from custody.ledger.models import Policy, Signatory
from custody.ledger.registry import create_policy, get_policy, receive_address, set_status, store_key
from custody.mining.sweeps import CUSTODY_KINDS
from custody.store.base import utcnow

FLEET_PATH = {"main": "m/84h/0h/0h"}
TEST_FLEET_PATH = "m/84h/1h/0h"


def fleet_path(network: str) -> str:
    return FLEET_PATH.get(network, TEST_FLEET_PATH)


def create_wallet(session: Session, name: str, serial: str, custody_name: str, *, network: str,
                  actor: str) -> Policy:
    """Make the fleet wallet from the device's key and register it, and custody beside it, on the device."""
    device = devices.get(session, serial)
    if device.status in ("suspended", "revoked"):
        raise CustodyError(f"device {serial} is {device.status}")
    custody = get_policy(session, custody_name)
    if custody.kind not in CUSTODY_KINDS or custody.status != "active":
        raise CustodyError(f"policy {custody_name!r} is not an active custody policy to sweep into")
    path, challenge = fleet_path(network), secrets.token_hex(16)
    with open_device(device, network) as d:
        fingerprint, xpub = d.fingerprint(), d.xpub(path)
        proof = d.sign_message(possession_message(challenge), path)
    if device.fingerprint is not None and fingerprint != device.fingerprint:
        raise CustodyError(f"device {serial} answered with fingerprint {fingerprint}, not {device.fingerprint}")
    try:
        key = parse_key(f"[{fingerprint}{path[1:]}]{xpub}", network=network)
        spec = build_policy("wpkh", 1, [key], network=network)
    except (KeyImportError, PolicyError) as e:
        raise CustodyError(str(e)) from None
    if not bip322.verify_simple(p2wpkh(key.hdkey.key).data, possession_message(challenge), proof):
        raise CustodyError(f"device {serial} did not prove it holds the key it gave (a swapped xpub?): refused")
    key_row = store_key(session, key)
    key_row.device_id, key_row.signatory_id = device.id, device.signatory_id
    policy = create_policy(session, name, spec, actor=actor)
    first, expected_hash = receive_address(session, policy), policy_id(policy.name, policy.descriptor)
    with open_device(device, network) as d:          # custody first: the holder then reads the fleet's address
        watch = d.register_watch_only(custody.name, custody.descriptor)
        result = d.register(policy.name, policy.descriptor)
        shown = d.display_address(_at_first_address(policy.descriptor))
    check_registration(result, expected_hash, key_row, first, shown, serial, network)
    if watch.get("first_address") != receive_address(session, custody):
        raise CustodyError(f"device {serial} derives custody's first address as {watch.get('first_address')}, "
                           f"the coordinator {receive_address(session, custody)}: refused")
    session.add(DeviceRegistration(device_id=device.id, policy_id=policy.id, state="registered",
                                   policy_hash=expected_hash, proof=result["proof"],
                                   proof_address=result["proof_address"], first_address=shown))
    record(session, "fleet.wallet_created", actor, f"policy:{name}",
           {"device": serial, "key": str(key), "possession_proof": proof, "registration_proof": result["proof"],
            "first_address": shown, "custody": custody.name, "custody_watch_only": watch.get("policy_id")})
    return policy


def confirm_wallet(session: Session, name: str, serial: str, address: str, *, by: str) -> Policy:
    """The device's holder confirms the first address it shows; the wallet then receives payouts."""
    policy, device = get_policy(session, name), devices.get(session, serial)
    holder = session.get(Signatory, device.signatory_id) if device.signatory_id else None
    if holder is not None and holder.name != by:
        raise CustodyError(f"only {holder.name}, who holds device {serial}, confirms what it shows")
    registration = session.get(DeviceRegistration, (device.id, policy.id))
    if registration is None or registration.state != "registered":
        raise CustodyError(f"device {serial} has no registration of {name!r} waiting for confirmation")
    if address.strip() != receive_address(session, policy):
        raise CustodyError(f"{address.strip()} is not the wallet's first address: do not use this wallet")
    registration.state, registration.confirmed_by, registration.confirmed_at = "confirmed", by, utcnow()
    set_status(session, policy, "active", actor=by)
    if device.status == "issued":
        device.status = "active"
    record(session, "fleet.wallet_confirmed", by, f"policy:{name}", {"device": serial, "address": address.strip()})
    return policy
