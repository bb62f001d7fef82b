"""The device lifecycle end to end, on the embedded node with simulated reference signers driven through
HWI: issuing devices, the key ceremony (proof of possession, registration with proofs, each holder
confirming the address their device shows), a spend signed on the devices under their own policy, a
firmware upgrade campaign with a minimum version, and a rotation that migrates every coin to the
successor policy before the old one retires and the leaving device is revoked. The attacks a
coordinator must refuse on its own are checked at each step."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from embit.psbt import PSBT
from embit.script import address_to_scriptpubkey
from sqlalchemy import func, select

from custody.devices import ceremony, inventory as devices
from custody.rotation import rotations as rotation
from custody.spending import device_signing
from custody.devices.hwi import DeviceSession, DeviceUnavailable
from custody.devices.models import DeviceRegistration
from custody.errors import CustodyError
from custody.eventlog.models import EventLogEntry
from custody.ledger import coins as ledger, registry
from custody.ledger.sync import Syncer
from custody.spending import spends
from custody.store.db import open_database
from custody_signer import firmware, protocol
from custody_signer.device import SELF_TEST_MAGIC
from custody_signer.protocol import MODEL, possession_message
from custody_signer.simulator import shown_first_address
from regtest.testwallet import TestWallet

from . import officers
from .conftest import mine_coins
from .signers import simulated_signers

PAYEE = TestWallet("lifecycle payee")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def backend(request, tmp_path_factory):
    """The whole story once per database (a fresh fleet each time)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('db') / 'custody.db'}"
    import psycopg
    server = request.getfixturevalue("postgres_server")
    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute("CREATE DATABASE custody_device_lifecycle")
    return f"{server}/custody_device_lifecycle"


@pytest.fixture(scope="module")
def fleet(backend, tmp_path_factory):
    """Four simulated signers, each its own process on its own socket, found by HWI."""
    with simulated_signers(tmp_path_factory.mktemp("fleet"), "ABCD") as found:
        yield found


@pytest.fixture(scope="module")
def world(backend, rpc, wallet, fleet):
    coins = mine_coins(rpc, wallet, 4)
    sessions = open_database(backend)
    return {"sessions": sessions, "coins": coins, "syncer": Syncer(sessions, rpc), "url": backend}


def install_device_policy(state: Path, rules: list[dict]) -> None:
    """The holder approves a signing policy on the device itself (not through the coordinator)."""
    path = state / "policy-request.json"
    path.write_text(json.dumps({"approvers": officers.device_approvers("olga", "omar"), "rules": rules}))
    subprocess.run([sys.executable, "-m", "custody_signer.cli", "hsm-policy", "--state", str(state), str(path)],
                   check=True, capture_output=True)


def events(sessions) -> int:
    with sessions() as s:
        return s.scalar(select(func.count()).select_from(EventLogEntry))


def onboard(sessions, name, serials, network="regtest"):
    with sessions.begin() as s:
        cid = ceremony.start(s, name, 2, serials, actor="ada").id
    for serial in serials:
        with sessions.begin() as s:
            ceremony.collect_key(s, ceremony.get(s, cid), serial, network, actor="ada")
    with sessions.begin() as s:
        ceremony.register(s, ceremony.get(s, cid), network, actor="ada")
    return cid


HOLDERS = dict(zip("ABCD", ("alice", "bob", "carol", "dave")))


def confirm_all(sessions, cid, fleet, serials):
    by_serial = {f["serial"]: (name, f) for name, f in fleet.items()}
    for serial in serials:
        name, device = by_serial[serial]
        seen = shown_first_address(device["state"])
        with sessions.begin() as s:
            ceremony.confirm(s, ceremony.get(s, cid), serial, seen, by=HOLDERS[name])


def request(sessions, rpc, policy_name, destinations, **kw) -> int:
    """A request with its transaction made (its coins reserved)."""
    with sessions.begin() as s:
        return spends.request_spend(s, registry.get_policy(s, policy_name), "ray", destinations, fee_rate=2.0,
                                    client=rpc, **kw).id


def approve(sessions, rpc, sid, names=("olga", "omar")) -> str:
    """Each officer approves with their own key (the transaction made first for a request that has none, as
    a rotation's); the last approval hands the spend to the signers with the approvals in its PSBT."""
    with sessions.begin() as s:
        spends.prepare_psbt(s, spends.get_spend(s, sid), rpc)
    for officer in names:
        with sessions.begin() as s:
            state = officers.approve(s, spends.get_spend(s, sid), officer).state
    return state


def approve_and_build(sessions, rpc, policy_name, destinations, **kw) -> int:
    sid = request(sessions, rpc, policy_name, destinations, **kw)
    assert approve(sessions, rpc, sid) == "signing"
    return sid


def sign_on(sessions, sid, serial):
    with sessions.begin() as s:
        return device_signing.sign_on_device(s, spends.get_spend(s, sid), devices.get(s, serial), actor="ray")


def broadcast_and_confirm(sessions, rpc, world, sid):
    spends.broadcast(sessions, sid, rpc, actor="ray")
    rpc.generatetoaddress(1, PAYEE.address())
    with sessions.begin() as s:
        spends.track(s, spends.get_spend(s, sid), rpc)
    world["syncer"].sync_once()
    with sessions() as s:
        return spends.get_spend(s, sid).state


# -- the ceremony ------------------------------------------------------------------------------------------
def test_devices_are_issued_and_connected_through_hwi(world, fleet):
    sessions = world["sessions"]
    with sessions.begin() as s:
        for name, holder in zip("ABC", ("alice", "bob", "carol")):
            devices.issue(s, model=MODEL, serial=fleet[name]["serial"], to=holder, actor="ada")
    with sessions.begin() as s:
        with pytest.raises(CustodyError, match="already in the inventory"):
            devices.issue(s, model=MODEL, serial=fleet["A"]["serial"], to="mallory", actor="ada")
    for name in "ABC":
        with sessions.begin() as s:
            devices.connect(s, devices.get(s, fleet[name]["serial"]), "regtest", actor="ada")
    with sessions() as s:
        inventory = {d["serial"]: d for d in devices.inventory(s)}
    a = inventory[fleet["A"]["serial"]]
    assert (a["model"], a["fingerprint"], a["firmware_version"], a["status"], a["signatory"]) == \
        (MODEL, fleet["A"]["fingerprint"], "1.0.0", "issued", "alice")


def test_ceremony_refuses_a_swapped_xpub(world, fleet):
    """An xpub handed in for device A that A did not prove it holds (B's key, or A's key with a proof made
    for another challenge) is refused, and nothing is stored."""
    sessions = world["sessions"]
    serials = [fleet[n]["serial"] for n in "ABC"]
    with sessions.begin() as s:
        cid = ceremony.start(s, "swap-attempt", 2, serials, actor="ada").id
    with DeviceSession(fleet["B"]["fingerprint"], "regtest") as b:
        b_key = f"[{fleet['B']['fingerprint']}/48h/1h/0h/2h]{b.xpub('m/48h/1h/0h/2h')}"
        b_proof = b.sign_message(possession_message("not the challenge"), "m/48h/1h/0h/2h")
    before = events(sessions)
    with sessions.begin() as s:
        with pytest.raises(CustodyError, match="origin fingerprint .* is not device"):
            ceremony.accept_key(s, ceremony.get(s, cid), fleet["A"]["serial"], b_key, b_proof, "regtest", actor="ada")
    with sessions.begin() as s:
        with pytest.raises(CustodyError, match="proof of possession does not verify"):
            ceremony.accept_key(s, ceremony.get(s, cid), fleet["B"]["serial"], b_key, b_proof, "regtest", actor="ada")
    assert events(sessions) == before


def test_ceremony_activates_the_policy_once_every_holder_confirms(world, fleet):
    sessions = world["sessions"]
    serials = [fleet[n]["serial"] for n in "ABC"]
    cid = onboard(sessions, "vault", serials)
    with sessions() as s:
        state = ceremony.status(s, ceremony.get(s, cid))
        assert state["state"] == "confirming"
        assert registry.get_policy(s, "vault").status == "draft"
    # every device derived and showed the coordinator's first address, and proved its registration
    for name in "ABC":
        assert shown_first_address(fleet[name]["state"]) == state["first_address"]
    with sessions.begin() as s:
        with pytest.raises(CustodyError, match="is not the policy's first address"):
            ceremony.confirm(s, ceremony.get(s, cid), serials[0], PAYEE.address(), by="alice")
        with pytest.raises(CustodyError, match="only alice, who holds device"):
            ceremony.confirm(s, ceremony.get(s, cid), serials[0], state["first_address"], by="bob")
    confirm_all(sessions, cid, fleet, serials[:2])
    with sessions() as s:
        assert registry.get_policy(s, "vault").status == "draft"       # not until the last holder confirms
    confirm_all(sessions, cid, fleet, serials[2:])
    with sessions() as s:
        assert registry.get_policy(s, "vault").status == "active"
        assert {d["status"] for d in devices.inventory(s) if d["serial"] in serials} == {"active"}
        registrations = s.scalars(select(DeviceRegistration)).all()
        assert len(registrations) == 3 and {r.state for r in registrations} == {"confirmed"}
        assert all(r.proof for r in registrations)
        spends.set_approval_rule(s, registry.get_policy(s, "vault"), required_approvals=2,
                                 per_request_limit=5 * 100_000_000)
        s.commit()


# -- spending on the devices ---------------------------------------------------------------------------------
def test_a_spend_is_signed_on_two_devices_under_their_policy(world, fleet, rpc, wallet):
    sessions = world["sessions"]
    with sessions() as s:
        policy = registry.get_policy(s, "vault")
        address = registry.receive_address(s, policy)
    coin = world["coins"].pop()
    rpc.sendrawtransaction(wallet.sign([coin], [(address_to_scriptpubkey(address).data, 10 * 100_000_000),
                                                (wallet.wpkh, coin.value - 10 * 100_000_000 - 2_000)]))
    rpc.generatetoaddress(1, PAYEE.address())
    world["syncer"].sync_once()
    for name in "ABC":
        install_device_policy(fleet[name]["state"], [{"wallet": "vault", "max_amount": 2 * 100_000_000,
                                                      "min_approvers": 1}])
    sid = request(sessions, rpc, "vault", [(PAYEE.address(), 100_000_000)])
    with sessions.begin() as s:                     # not approved: the coordinator sends it to no device
        with pytest.raises(CustodyError, match="is requested"):
            device_signing.sign_on_device(s, spends.get_spend(s, sid), devices.get(s, fleet["A"]["serial"]),
                                          actor="ray")
    assert approve(sessions, rpc, sid) == "signing"
    with sessions() as s:
        approved = spends.get_spend(s, sid).psbt
    with sessions.begin() as s:                     # a coordinator that leaves the approvals out: the device refuses
        psbt = PSBT.from_string(approved)
        psbt.unknown.clear()
        spends.get_spend(s, sid).psbt = psbt.to_string()
    with sessions.begin() as s:
        with pytest.raises(DeviceUnavailable, match="0 valid approver signature.*1 needed"):
            device_signing.sign_on_device(s, spends.get_spend(s, sid), devices.get(s, fleet["A"]["serial"]),
                                          actor="ray")
    with sessions.begin() as s:
        spends.get_spend(s, sid).psbt = approved
    assert sign_on(sessions, sid, fleet["A"]["serial"]) == [fleet["A"]["fingerprint"]]
    assert sign_on(sessions, sid, fleet["B"]["serial"]) == [fleet["B"]["fingerprint"]]
    assert broadcast_and_confirm(sessions, rpc, world, sid) == "confirmed"


def test_over_the_limits_refused_by_the_device_and_by_the_coordinator(world, fleet, rpc):
    sessions = world["sessions"]
    sid = approve_and_build(sessions, rpc, "vault", [(PAYEE.address(), 3 * 100_000_000)])   # coordinator: <= 5 BTC
    with sessions() as s:
        psbt_before = spends.get_spend(s, sid).psbt
    with sessions.begin() as s:
        with pytest.raises(DeviceUnavailable, match="over its maximum"):
            device_signing.sign_on_device(s, spends.get_spend(s, sid), devices.get(s, fleet["A"]["serial"]),
                                          actor="ray")
    with sessions() as s:
        assert spends.get_spend(s, sid).psbt == psbt_before
    with sessions.begin() as s:
        spends.cancel(s, spends.get_spend(s, sid), actor="ray")
    with sessions.begin() as s:                    # coordinator: over its own per-request limit
        big = spends.request_spend(s, registry.get_policy(s, "vault"), "ray", [(PAYEE.address(), 6 * 100_000_000)],
                                   fee_rate=2.0, client=rpc).id
    with sessions.begin() as s:
        officers.approve(s, spends.get_spend(s, big), "olga")
    with sessions.begin() as s:
        with pytest.raises(CustodyError, match="per-request limit"):
            officers.approve(s, spends.get_spend(s, big), "omar")
    with sessions.begin() as s:                    # its coins back for the tests that follow
        spends.cancel(s, spends.get_spend(s, big), actor="ray")


def test_a_forged_approver_signature_is_refused_by_the_coordinator(world, rpc):
    sessions = world["sessions"]
    sid = request(sessions, rpc, "vault", [(PAYEE.address(), 10_000_000)])
    with sessions.begin() as s:                    # mallory's signature presented under olga's key
        spend = spends.get_spend(s, sid)
        forged = {**officers.proof(s, spend, "mallory"), "public_key": officers.public_hex("olga")}
        with pytest.raises(CustodyError, match="does not verify"):
            spends.decide(s, spend, "olga", True, forged)
    with sessions() as s:
        assert spends.summary(s, spends.get_spend(s, sid))["approvals"] == []
    with sessions.begin() as s:
        spends.cancel(s, spends.get_spend(s, sid), actor="ray")


# -- firmware ------------------------------------------------------------------------------------------------
def image(version: str, *, epoch: int = 1, model: str = MODEL, signers: int = 2, payload: bytes | None = None):
    return firmware.build_image(payload or SELF_TEST_MAGIC + f"reference signer {version}\n".encode(), model=model,
                                version=version, epoch=epoch, signers=protocol.test_release_keys(3)[:signers])


def test_firmware_releases_are_verified_before_the_registry_takes_them(world):
    sessions = world["sessions"]
    with sessions.begin() as s:
        devices.trust_model(s, MODEL, keys=sorted(protocol.test_release_public_keys(3)), threshold=2,
                            production=False, actor="ada")
    good = image("1.1.0", epoch=2)
    tampered = good[:-5] + b"EVIL\n"
    attacks = {"does not match the signed hash": tampered,
               "1 valid release signature": image("1.1.1", signers=1),
               "no release keys are trusted for model 'other-hardware'": image("1.1.2", model="other-hardware")}
    for message, bad in attacks.items():
        with sessions.begin() as s:
            with pytest.raises(CustodyError, match=message):
                devices.add_release(s, bad, actor="ada")
    with sessions.begin() as s:
        assert devices.add_release(s, good, actor="ada").version == "1.1.0"
        devices.add_release(s, image("1.0.5"), actor="ada")
    with sessions() as s:
        assert [r["version"] for r in devices.releases(s)] == ["1.1.0", "1.0.5"]


def test_a_device_below_the_minimum_cannot_sign_until_upgraded(world, fleet, rpc):
    sessions = world["sessions"]
    with sessions.begin() as s:
        devices.set_min_version(s, MODEL, "1.1.0", actor="ada")
    with sessions() as s:
        standing = {d["serial"]: d["firmware"] for d in devices.inventory(s)}
    assert standing[fleet["A"]["serial"]] == "upgrade required (below 1.1.0)"
    sid = approve_and_build(sessions, rpc, "vault", [(PAYEE.address(), 20_000_000)])
    with sessions.begin() as s:
        with pytest.raises(CustodyError, match="cannot sign until upgraded"):
            device_signing.sign_on_device(s, spends.get_spend(s, sid), devices.get(s, fleet["A"]["serial"]),
                                          actor="ray")
    with sessions() as s:
        release = {r["version"]: r["id"] for r in devices.releases(s)}
    for name in "ABC":
        with sessions.begin() as s:
            result = devices.upgrade(s, devices.get(s, fleet[name]["serial"]), release["1.1.0"], "regtest", actor="ada")
        assert result["to"] == "1.1.0"
    with sessions.begin() as s:                     # a downgrade is refused by the coordinator
        with pytest.raises(CustodyError, match="not newer"):
            devices.upgrade(s, devices.get(s, fleet["A"]["serial"]), release["1.0.5"], "regtest", actor="ada")
    with DeviceSession(fleet["A"]["fingerprint"], "regtest") as d:   # ...and by the device
        with pytest.raises(DeviceUnavailable, match="not newer"):
            d.install_firmware(image("1.0.5"))
        assert d.info()["firmware"]["version"] == "1.1.0"
    sign_on(sessions, sid, fleet["A"]["serial"])
    sign_on(sessions, sid, fleet["C"]["serial"])
    assert broadcast_and_confirm(sessions, rpc, world, sid) == "confirmed"


# -- rotation ------------------------------------------------------------------------------------------------
def test_rotation_migrates_every_coin_then_retires_the_old_policy(world, fleet, rpc):
    sessions = world["sessions"]
    a, b, c, d = (fleet[n]["serial"] for n in "ABCD")
    with sessions.begin() as s:
        devices.issue(s, model=MODEL, serial=d, to="dave", actor="ada")
    with sessions.begin() as s:
        devices.connect(s, devices.get(s, d), "regtest", actor="ada")
        release = {r["version"]: r["id"] for r in devices.releases(s)}
    with sessions.begin() as s:
        devices.upgrade(s, devices.get(s, d), release["1.1.0"], "regtest", actor="ada")
    with sessions.begin() as s:
        rid = rotation.start(s, registry.get_policy(s, "vault"), "vault-2", {c: d}, actor="ada").id
        cid = rotation.get(s, rid).ceremony_id
    for serial in (a, b, d):
        with sessions.begin() as s:
            ceremony.collect_key(s, ceremony.get(s, cid), serial, "regtest", actor="ada")
    with sessions.begin() as s:
        ceremony.register(s, ceremony.get(s, cid), "regtest", actor="ada")
    with sessions.begin() as s:                     # no test spend before the successor is confirmed
        with pytest.raises(CustodyError, match="finish it first"):
            rotation.send_test(s, rotation.get(s, rid), 100_000, requester="ray", fee_rate=2.0)
    confirm_all(sessions, cid, fleet, [a, b, d])
    with sessions.begin() as s:
        test_id = rotation.send_test(s, rotation.get(s, rid), 100_000, requester="ray", fee_rate=2.0).id
    with sessions.begin() as s:                     # no migration before the test coin has arrived
        with pytest.raises(CustodyError, match="has not reached"):
            rotation.migrate(s, rotation.get(s, rid), requester="ray", fee_rate=2.0)
    assert approve(sessions, rpc, test_id) == "signing"
    sign_on(sessions, test_id, a)
    sign_on(sessions, test_id, b)
    assert broadcast_and_confirm(sessions, rpc, world, test_id) == "confirmed"

    with sessions() as s:
        held = sum(b.total for n in ("vault", "vault-2") for b in ledger.balances(s, registry.get_policy(s, n)))
    with sessions.begin() as s:
        mid = rotation.migrate(s, rotation.get(s, rid), requester="ray", fee_rate=2.0).id
    with sessions.begin() as s:
        assert registry.get_policy(s, "vault").status == "retiring"
        with pytest.raises(CustodyError, match="completes after the migration|only once it confirms"):
            rotation.complete(s, rotation.get(s, rid), actor="ada")
    # the sweep is over the 5 BTC limit: exempt as a migration
    assert approve(sessions, rpc, mid) == "signing"
    with sessions() as s:
        migration_to = json.loads(spends.get_spend(s, mid).destinations)[0]["address"]
    # the holders allow their devices to move everything to the successor, with both approvers
    for name in "AB":
        install_device_policy(fleet[name]["state"], [
            {"wallet": "vault", "max_amount": 2 * 100_000_000, "min_approvers": 1},
            {"wallet": "vault", "whitelist": [migration_to], "min_approvers": 2}])
    sign_on(sessions, mid, a)
    sign_on(sessions, mid, b)
    assert broadcast_and_confirm(sessions, rpc, world, mid) == "confirmed"
    with sessions.begin() as s:
        done = rotation.complete(s, rotation.get(s, rid), actor="ada")
    assert done["state"] == "complete" and done["retiring_devices"] == [c]
    with sessions() as s:
        assert registry.get_policy(s, "vault").status == "retired"
        assert devices.get(s, c).status == "revoked"
        old, new = (sum(b.total for b in ledger.balances(s, registry.get_policy(s, n))) for n in ("vault", "vault-2"))
        fee = spends.get_spend(s, mid).fee
    assert old == 0 and new == held - fee


def test_the_log_holds_every_lifecycle_step(world):
    with world["sessions"]() as s:
        kinds = set(s.scalars(select(EventLogEntry.kind)))
    assert {"device.issued", "device.connected", "ceremony.started", "ceremony.key", "device.registered",
            "device.confirmed", "ceremony.complete", "firmware.trust", "firmware.release", "firmware.minimum",
            "firmware.upgraded", "rotation.started", "rotation.test", "rotation.migration", "rotation.complete",
            "device.status", "approver.enrolled", "spend.approved", "spend.signing"} <= kinds


def test_the_cli_lists_devices_and_refuses_in_one_line(world, fleet):
    def custody(*argv):
        return subprocess.run([sys.executable, "-m", "coordinator.cli.main", "--db", world["url"], "--json", *argv],
                              capture_output=True, text=True, env=os.environ.copy())
    seen = json.loads(custody("device", "connected").stdout)
    assert {d["fingerprint"] for d in seen} == {f["fingerprint"] for f in fleet.values()}
    listed = {d["serial"]: d for d in json.loads(custody("device", "list").stdout)}
    assert listed[fleet["C"]["serial"]]["status"] == "revoked"
    assert listed[fleet["D"]["serial"]]["firmware_version"] == "1.1.0"
    with world["sessions"]() as s:
        old = {r["version"]: r["id"] for r in devices.releases(s)}["1.0.5"]
        before = events(world["sessions"])
    refused = custody("firmware", "upgrade", fleet["A"]["serial"], str(old))
    assert refused.returncode == 1
    assert refused.stderr.count("\n") == 1 and "not newer" in refused.stderr
    assert events(world["sessions"]) == before
    # a device HWI lists without our serial is connected by its fingerprint, but one physical device
    # cannot stand behind two inventory entries
    assert custody("device", "issue", "HW-777", "--model", MODEL, "--to", "erin").returncode == 0
    twice = custody("device", "connect", "HW-777", "--fingerprint", fleet["A"]["fingerprint"])
    assert twice.returncode == 1 and f"already in the inventory as {fleet['A']['serial']}" in twice.stderr


def test_the_console_and_api_show_the_inventory_by_role(world, fleet, node):
    from fastapi.testclient import TestClient

    from coordinator.app import create_app, node_factory
    from coordinator import accounts
    sessions = world["sessions"]
    tokens = {}
    with sessions.begin() as s:
        for name, role in (("root", "admin"), ("aud", "auditor"), ("view", "viewer"), ("carol", "signatory")):
            user, _secret = accounts.create_user(s, name, role, "a long enough password 1")
            tokens[role] = accounts.create_token(s, user, "t")[0]
    app = create_app(sessions, node_factory(node.url, cookie_file=node.cookie_file), sync_interval=0)
    with TestClient(app) as client:
        def get(path, role):
            return client.get(path, headers={"authorization": f"Bearer {tokens[role]}"})
        listed = {d["serial"]: d for d in get("/api/devices", "auditor").json()}
        a = listed[fleet["A"]["serial"]]
        assert {r["policy"]: r["state"] for r in a["registrations"]} == {"vault": "confirmed", "vault-2": "confirmed"}
        assert listed[fleet["C"]["serial"]]["status"] == "revoked"
        assert get("/api/devices", "viewer").status_code == 403
        assert [r["state"] for r in get("/api/rotations", "auditor").json()] == ["complete"]
        refused = client.post("/api/devices", json={"serial": "X-1", "model": MODEL, "signatory": "eve"},
                              headers={"authorization": f"Bearer {tokens['signatory']}"})
        assert refused.status_code == 403
        page = get("/devices", "admin")
        assert page.status_code == 200
        for expected in (fleet["D"]["serial"], "revoked", "vault-2", "1.1.0", "Rotations"):
            assert expected in page.text
