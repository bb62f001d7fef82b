"""Every signature that arrives is attributed to its key's device, whatever way it comes (issue 17, item 5):
a signed PSBT uploaded as a file, the BC-UR frames an air-gapped signer shows as QR codes, the CLI's
`spend sign`, a device driven through HWI, and a proof of reserves uploaded or signed on a device. A
signature by a suspended or revoked device, or by one below its model's minimum firmware, is refused
with the device's serial and the reason; nothing is stored: the PSBTs, their signers and the event log
are as they were, and a device refused before signing is never even reached.

Three simulated reference signers driven through HWI, on the embedded node, on SQLite and PostgreSQL.
Device A is suspended, then held below the minimum firmware (then upgraded), then signs through every
entry; device B is finally revoked. The signatures the attacks upload were made on the devices themselves,
offline, before their status changed: exactly what a signatory holding a revoked device could upload."""
from __future__ import annotations

import base64
import json

import pytest
from embit.script import address_to_scriptpubkey
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from coordinator import accounts
from coordinator.app import create_app, node_factory
from custody.bitcoin import ur
from custody.bitcoin.policies import build_policy
from custody.devices import ceremony, inventory as devices
from custody.devices.hwi import DeviceSession
from custody.errors import CustodyError
from custody.eventlog.models import EventLogEntry
from custody.ledger import registry, service
from custody.spending import service as spend_service
from custody.ledger.models import Key
from custody.people import credentials
from custody.reserves import proofs as reserves
from custody.spending import spends
from custody.store.db import open_database
from custody_signer import firmware, protocol
from custody_signer.device import MODEL, SELF_TEST_MAGIC, shown_first_address
from regtest.testwallet import TestWallet

from .approval_keys import ed25519_key
from .conftest import hd_keys, mine_coins
from .signers import install_policy, simulated_signers
from .test_device_sign_holder import device_files, PASSWORD

PAYEE = TestWallet("signature entry payee")
HOLDER = {"A": "sina", "B": "sam", "C": "sue"}
SPEND_ENTRIES = ("file", "ur", "cli", "hwi")
RESERVE_ENTRIES = ("reserves-file", "reserves-hwi")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def backend(request, tmp_path_factory):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('db') / 'custody.db'}"
    import psycopg
    server = request.getfixturevalue("postgres_server")
    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute("CREATE DATABASE custody_signature_entry")
    return f"{server}/custody_signature_entry"


@pytest.fixture(scope="module")
def fleet(backend, tmp_path_factory):
    with simulated_signers(tmp_path_factory.mktemp("entry-fleet"), "ABC") as found:
        yield found


class World:
    def __init__(self, client, sessions, tokens, fleet):
        self.client, self.sessions, self.tokens, self.fleet = client, sessions, tokens, fleet
        self.spends: dict[str, int] = {}        # entry -> a spend collecting signatures
        self.runs: dict[str, int] = {}          # entry -> a proof-of-reserves run collecting signatures
        self.offline: dict[tuple[str, str], str] = {}   # (device, entry) -> its PSBT signed on the device

    def call(self, method: str, path: str, name: str, **kw):
        return self.client.request(method, path, headers={"authorization": f"Bearer {self.tokens[name]}"}, **kw)

    def serial(self, name: str) -> str:
        return self.fleet[name]["serial"]

    def snapshot(self) -> dict:
        """What a refusal must leave as it was: every PSBT, who signed, the event log, the devices' files."""
        with self.sessions() as s:
            return {"spends": {e: spends.get_spend(s, sid).psbt for e, sid in self.spends.items()},
                    "runs": {e: reserves.get_run(s, rid).psbt for e, rid in self.runs.items()},
                    "signed_by": {e: spends.summary(s, spends.get_spend(s, sid))["signed_by"]
                                  for e, sid in self.spends.items()},
                    "events": s.scalar(select(func.count()).select_from(EventLogEntry)),
                    "devices": {n: device_files(self.fleet[n]["state"]) for n in "ABC"}}

    def enter(self, entry: str, name: str) -> tuple[int, str | list]:
        """Device `name`'s signature through `entry`: (HTTP status or 200/400 for the CLI, the answer's
        detail on a refusal, else its new signers)."""
        who, serial = HOLDER[name], self.serial(name)
        signed = self.offline.get((name, entry))
        if entry in ("file", "ur"):
            raw = base64.b64decode(signed)
            body = raw if entry == "file" else "\n".join(ur.encode_parts(raw, max_fragment_len=200)).encode()
            answer = self.call("POST", f"/api/spends/{self.spends[entry]}/signatures", who,
                               files={"file": ("signed.psbt" if entry == "file" else "signed-ur.txt", body)})
        elif entry == "cli":                     # `custody spend sign SPEND FILE`: spend_service.spend_sign
            try:
                with self.sessions.begin() as s:
                    return 200, spend_service.spend_sign(s, self.spends[entry], signed, actor=who)["new_signers"]
            except CustodyError as e:
                return 400, str(e)
        elif entry == "hwi":
            answer = self.call("POST", f"/api/spends/{self.spends[entry]}/devices/{serial}/sign", who)
        elif entry == "reserves-file":
            answer = self.call("POST", f"/api/reserves/{self.runs[entry]}/signatures", who,
                               files={"file": ("signed.psbt", base64.b64decode(signed))})
        else:
            answer = self.call("POST", f"/api/reserves/{self.runs[entry]}/devices/{serial}/sign", who)
        body = answer.json()
        return answer.status_code, body["detail"] if answer.status_code != 200 else body["new_signers"]


@pytest.fixture(scope="module")
def world(backend, fleet, node, rpc, wallet):
    sessions = open_database(backend)
    tokens = {}
    with sessions.begin() as s:
        for name, role in [("root", "admin"), ("olga", "officer"), ("omar", "officer"), ("sina", "signatory"),
                           ("sam", "signatory"), ("sue", "signatory")]:
            user, _ = accounts.create_user(s, name, role, PASSWORD)
            tokens[name] = accounts.create_token(s, user, "test")[0]
            if role == "officer":
                credentials.enroll_key(s, user, ed25519_key(name).verify_key.encode().hex(), label="key file",
                                       actor=name)
        for name in "ABC":
            devices.issue(s, model=MODEL, serial=fleet[name]["serial"], to=HOLDER[name], actor="root")
    for name in "ABC":
        with sessions.begin() as s:
            devices.connect(s, devices.get(s, fleet[name]["serial"]), "regtest", actor="root")
        rules = {"approvers": {}, "rules": [{"wallet": "vault", "max_amount": 5 * 100_000_000}]}
        install_policy(fleet[name]["state"], rules)
    serials = [fleet[n]["serial"] for n in "ABC"]
    with sessions.begin() as s:
        cid = ceremony.start(s, "vault", 2, serials, actor="root").id
    for serial in serials:
        with sessions.begin() as s:
            ceremony.collect_key(s, ceremony.get(s, cid), serial, "regtest", actor="root")
    with sessions.begin() as s:
        ceremony.register(s, ceremony.get(s, cid), "regtest", actor="root")
    for name in "ABC":
        with sessions.begin() as s:
            ceremony.confirm(s, ceremony.get(s, cid), fleet[name]["serial"], shown_first_address(fleet[name]["state"]),
                             by=HOLDER[name])
    with sessions.begin() as s:
        policy = registry.get_policy(s, "vault")
        assert policy.status == "active"
        spends.set_approval_rule(s, policy, required_approvals=1)
        addresses = [registry.receive_address(s, policy) for _ in SPEND_ENTRIES]
    [coin] = mine_coins(rpc, wallet, 1)            # one 2 BTC coin per spend, so none waits for another's
    outputs = [(address_to_scriptpubkey(a).data, 2 * 100_000_000) for a in addresses]
    rpc.sendrawtransaction(wallet.sign([coin], outputs + [(wallet.wpkh, coin.value - 8 * 100_000_000 - 2_000)]))
    rpc.generatetoaddress(1, PAYEE.address())
    service.sync(sessions, rpc)
    app = create_app(sessions, node_factory(node.url, cookie_file=node.cookie_file), sync_interval=0)
    with TestClient(app) as client:
        world = World(client, sessions, tokens, fleet)
        for entry in SPEND_ENTRIES:
            made = world.call("POST", "/api/spends", "olga", json={
                "policy": "vault", "to": [{"address": PAYEE.address(), "amount": "1"}], "fee_rate": 2})
            assert made.status_code == 201, made.text
            world.spends[entry] = made.json()["id"]
            approve(world, world.spends[entry], "omar")
        for entry in RESERVE_ENTRIES:
            run = world.call("POST", "/api/reserves", "olga", json={
                "audit": f"2026-{entry}", "nonce": f"nonce-of-{entry}-0001", "custodian": "Acme", "policies": ["vault"]})
            assert run.status_code == 201, run.text
            world.runs[entry] = run.json()["id"]
        with sessions() as s:           # each holder signs every PSBT on their own device, offline
            unsigned = {e: spends.get_spend(s, sid).psbt for e, sid in world.spends.items()}
            unsigned |= {e: reserves.get_run(s, rid).psbt for e, rid in world.runs.items()}
        for name in "AB":
            with DeviceSession(fleet[name]["fingerprint"], "regtest") as d:
                for entry, psbt in unsigned.items():
                    world.offline[(name, entry)] = d.sign_psbt(psbt)
        yield world


def approve(world: World, sid: int, officer: str) -> None:
    """The officer approves with their enrolled key file, and the spend goes to its signers."""
    key = ed25519_key(officer)
    message = world.call("POST", f"/api/spends/{sid}/approval-request", officer).json()["message"].encode()
    proof = {"kind": "ed25519", "public_key": key.verify_key.encode().hex(), "signature": key.sign(message).signature.hex()}
    approved = world.call("POST", f"/api/spends/{sid}/approve", officer, json={"proof": proof})
    assert approved.status_code == 200, approved.text
    if approved.json()["state"] != "signing":
        assert world.call("POST", f"/api/spends/{sid}/psbt", officer).status_code == 200


def _refused_everywhere(world: World, name: str, reason: str) -> None:
    """Device `name`'s signature is refused through every entry, by serial and reason; nothing changes."""
    before = world.snapshot()
    expected = f"signature by device {world.serial(name)} refused: {reason}"
    for entry in SPEND_ENTRIES + RESERVE_ENTRIES:
        status, detail = world.enter(entry, name)
        assert (entry, status) == (entry, 400), (entry, detail)
        assert detail == expected, (entry, detail)
        assert world.snapshot() == before, entry


def test_a_suspended_devices_signatures_are_refused_at_every_entry(world):
    with world.sessions.begin() as s:
        devices.set_status(s, devices.get(s, world.serial("A")), "suspended", actor="root", reason="lost in transit")
    _refused_everywhere(world, "A", "the device is suspended")
    with world.sessions.begin() as s:
        devices.set_status(s, devices.get(s, world.serial("A")), "active", actor="root", reason="found")


def test_signatures_below_the_minimum_firmware_are_refused_at_every_entry(world):
    image = firmware.build_image(SELF_TEST_MAGIC + b"reference signer 1.1.0\n", model=MODEL, version="1.1.0",
                                 epoch=2, signers=protocol.test_release_keys(3)[:2])
    with world.sessions.begin() as s:
        devices.trust_model(s, MODEL, keys=sorted(protocol.test_release_public_keys(3)), threshold=2,
                            production=False, actor="root")
        release = devices.add_release(s, image, actor="root").id
        devices.set_min_version(s, MODEL, "1.1.0", actor="root")
        running = devices.get(s, world.serial("A")).firmware_version
    assert running != "1.1.0"
    _refused_everywhere(world, "A", f"it runs firmware {running}, upgrade required (below 1.1.0): it cannot sign "
                                    "until upgraded")
    with world.sessions.begin() as s:
        devices.upgrade(s, devices.get(s, world.serial("A")), release, "regtest", actor="root")


def test_an_active_current_devices_signatures_are_taken_at_every_entry(world):
    """A, resumed and upgraded, signs through every entry; the log attributes each signature to it."""
    fingerprint, serial = world.fleet["A"]["fingerprint"], world.serial("A")
    for entry in SPEND_ENTRIES + RESERVE_ENTRIES:
        status, signers = world.enter(entry, "A")
        assert (entry, status, signers) == (entry, 200, [fingerprint])
    with world.sessions() as s:
        logged = [json.loads(e.data) for e in s.scalars(select(EventLogEntry).where(
            EventLogEntry.kind.in_(("psbt.signed", "reserves.signed"))).order_by(EventLogEntry.id))]
        assert [d["devices"] for d in logged] == [{fingerprint: [serial]}] * 6
        assert all(spends.summary(s, spends.get_spend(s, sid))["signed_by"] == [fingerprint]
                   for sid in world.spends.values())


def test_a_revoked_devices_signatures_are_refused_at_every_entry(world):
    """The finding: a PSBT signed by a revoked device's key, uploaded as a file (or scanned, or signed on
    the device), is refused; B's signatures were made before it was revoked."""
    with world.sessions.begin() as s:
        devices.set_status(s, devices.get(s, world.serial("B")), "revoked", actor="root", reason="holder left")
    _refused_everywhere(world, "B", "the device is revoked")
    with world.sessions() as s:         # and nothing of B's reached the broadcastable state
        assert {spends.get_spend(s, sid).state for sid in world.spends.values()} == {"signing"}


def test_a_key_without_a_device_on_record_signs(db_url):
    """An imported policy may hold keys on hardware this coordinator does not inventory (a co-signer's):
    their signatures are taken, attributed to no device. A key bound to a device follows the device, and
    a device found by the key's master fingerprint alone (an imported key of an inventoried device) too."""
    sessions = open_database(db_url)
    keys = hd_keys(3, seed_base=7100)
    fingerprints = [k[1:9] for k in keys]
    with sessions.begin() as s:
        policy = registry.create_policy(s, "imported", build_policy("wsh-sortedmulti", 2, keys))
        bound = devices.issue(s, model=MODEL, serial="BOUND-1", to="bea", actor="root")
        by_fingerprint = devices.issue(s, model=MODEL, serial="FP-2", to="fred", actor="root")
        s.scalar(select(Key).where(Key.fingerprint == fingerprints[0])).device_id = bound.id
        by_fingerprint.fingerprint = fingerprints[1]            # as `devices.connect` records it
        assert devices.attribute_signers(s, fingerprints, [policy.id]) == {
            fingerprints[0]: ["BOUND-1"], fingerprints[1]: ["FP-2"], fingerprints[2]: []}
        devices.set_status(s, bound, "revoked", actor="root")
        devices.set_status(s, by_fingerprint, "suspended", actor="root")
        policy_id = policy.id
    with sessions() as s:
        assert devices.attribute_signers(s, fingerprints[2:], [policy_id]) == {fingerprints[2]: []}
        with pytest.raises(CustodyError, match="^signature by device BOUND-1 refused: the device is revoked$"):
            devices.attribute_signers(s, fingerprints[::2], [policy_id])
        with pytest.raises(CustodyError, match="^signature by device FP-2 refused: the device is suspended$"):
            devices.attribute_signers(s, fingerprints[1:], [policy_id])
