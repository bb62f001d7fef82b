"""A device signs for its holder only (issue 16, finding 1): over the API, a signatory can have their own
device sign a spend or a proof of reserves, and cannot make another holder's device sign either (nor
confirm what another holder's device shows); officers and admins cannot trigger a holder's device at
all. A refusal is 403 with the reason, and changes nothing: no event, no signature, and the device is
never even reached (its own decision log and screen are as they were).

Three simulated reference signers, driven through HWI, on the embedded node; the console users are the
signatories the devices are issued to (the device of "Sina" is the user sina's: names compare in
canonical form)."""
from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
from embit.script import address_to_scriptpubkey
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from coordinator import accounts
from coordinator.app import create_app, node_factory
from custody.devices import ceremony, holders, inventory as devices
from custody.eventlog.models import EventLogEntry
from custody.ledger import registry, service
from custody.spending import spends
from custody.store.db import open_database
from custody_signer.device import MODEL, shown_first_address
from regtest.testwallet import TestWallet

from . import officers
from .conftest import mine_coins
from .signers import install_policy, simulated_signers

PASSWORD = "correct horse battery staple"
PAYEE = TestWallet("holder payee")
# device -> the signatory it is issued to, and the console user who is that signatory
ISSUED = {"A": "Sina", "B": "sam", "C": "sue"}
USER = {"A": "sina", "B": "sam", "C": "sue"}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    with simulated_signers(tmp_path_factory.mktemp("holder-fleet"), "ABC") as found:
        yield found


class Api:
    def __init__(self, client, sessions, tokens):
        self.client, self.sessions, self.tokens = client, sessions, tokens

    def call(self, method: str, path: str, name: str, **kw):
        return self.client.request(method, path, headers={"authorization": f"Bearer {self.tokens[name]}"}, **kw)

    def events(self) -> int:
        with self.sessions() as s:
            return s.scalar(select(func.count()).select_from(EventLogEntry))


def device_files(state: Path) -> dict[str, bytes]:
    """What the device keeps: its decision log, its screen, its counters (a device never reached keeps
    them as they were)."""
    return {p.name: p.read_bytes() for p in sorted(state.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def api(fleet, node, rpc, wallet, tmp_path_factory):
    sessions = open_database(f"sqlite:///{tmp_path_factory.mktemp('holder-db') / 'custody.db'}")
    tokens = {}
    with sessions.begin() as s:
        for name, role in [("root", "admin"), ("olga", "officer"), ("omar", "officer"), ("sina", "signatory"),
                           ("sam", "signatory"), ("sue", "signatory"), ("aude", "auditor")]:
            user, _ = accounts.create_user(s, name, role, PASSWORD)
            tokens[name] = accounts.create_token(s, user, "test")[0]
        for name in "ABC":
            devices.issue(s, model=MODEL, serial=fleet[name]["serial"], to=ISSUED[name], actor="root")
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
    app = create_app(sessions, node_factory(node.url, cookie_file=node.cookie_file), sync_interval=0)
    with TestClient(app) as client:
        yield _ready(Api(client, sessions, tokens), fleet, cid, rpc, wallet)


def _ready(api: Api, fleet, cid: int, rpc, wallet) -> Api:
    """Each holder confirms their own device's address (over the API), then the policy is funded."""
    api.ceremony = cid
    for name in "ABC":
        shown = shown_first_address(fleet[name]["state"])
        confirmed = api.call("POST", f"/api/ceremonies/{cid}/devices/{fleet[name]['serial']}/confirm", USER[name],
                             json={"address": shown})
        assert confirmed.status_code == 200, confirmed.text
    with api.sessions.begin() as s:
        policy = registry.get_policy(s, "vault")
        assert policy.status == "active"
        spends.set_approval_rule(s, policy, required_approvals=1)
        address = registry.receive_address(s, policy)
    [coin] = mine_coins(rpc, wallet, 1)
    rpc.sendrawtransaction(wallet.sign([coin], [(address_to_scriptpubkey(address).data, 10 * 100_000_000),
                                                (wallet.wpkh, coin.value - 10 * 100_000_000 - 2_000)]))
    rpc.generatetoaddress(1, PAYEE.address())
    service.sync(api.sessions, rpc)
    return api


def signed_by(api: Api, sid: int) -> list[str]:
    return api.call("GET", f"/api/spends/{sid}", "aude").json()["signed_by"]


def test_only_the_holder_confirms_what_their_device_shows(api, fleet):
    """(Each holder confirmed their own in the fixture.) Another signatory is refused with 403 and a reason,
    before the ceremony is looked at."""
    serial = fleet["A"]["serial"]
    before = api.events()
    refused = api.call("POST", f"/api/ceremonies/{api.ceremony}/devices/{serial}/confirm", "sam",
                       json={"address": shown_first_address(fleet["A"]["state"])})
    assert refused.status_code == 403, refused.text
    assert f"device {serial} is issued to Sina" in refused.json()["detail"]
    assert api.events() == before


def test_a_signatory_cannot_make_other_holders_devices_sign_a_spend(api, fleet, rpc, other_address):
    """The attack of the finding: acting as sina, have sam's and sue's devices sign a 2-of-3 spend. Refused;
    sina's own device and then sam's (by sam) sign, and the spend confirms."""
    made = api.call("POST", "/api/spends", "olga", json={"policy": "vault", "to": [{"address": PAYEE.address(),
                                                                                   "amount": "1"}], "fee_rate": 2})
    assert made.status_code == 201, made.text
    sid = made.json()["id"]
    assert officers.approve_via_api(partial(api.call, name="omar"), sid, "omar").status_code == 200
    assert api.call("POST", f"/api/spends/{sid}/psbt", "omar").status_code == 200

    before, files = api.events(), {n: device_files(fleet[n]["state"]) for n in "ABC"}
    for other in "BC":
        serial = fleet[other]["serial"]
        refused = api.call("POST", f"/api/spends/{sid}/devices/{serial}/sign", "sina")
        assert refused.status_code == 403, refused.text
        detail = refused.json()["detail"]
        assert f"device {serial} is issued to {ISSUED[other]}" in detail and "only its holder" in detail, detail
    for who in ("olga", "root", "aude"):                   # nor any other role, on anyone's device
        refused = api.call("POST", f"/api/spends/{sid}/devices/{fleet['A']['serial']}/sign", who)
        assert refused.status_code == 403 and "role may not" in refused.json()["detail"]
    assert api.events() == before and signed_by(api, sid) == []
    assert {n: device_files(fleet[n]["state"]) for n in "ABC"} == files        # no device was reached
    assert api.call("POST", f"/api/spends/{sid}/devices/nosuch/sign", "sina").status_code == 404
    assert api.call("POST", f"/api/spends/999999/devices/{fleet['A']['serial']}/sign", "sina").status_code == 404

    own = api.call("POST", f"/api/spends/{sid}/devices/{fleet['A']['serial']}/sign", "sina")
    assert own.status_code == 200, own.text
    assert own.json()["new_signers"] == [fleet["A"]["fingerprint"]] and own.json()["state"] == "signing"
    assert device_files(fleet["B"]["state"]) == files["B"]
    second = api.call("POST", f"/api/spends/{sid}/devices/{fleet['B']['serial']}/sign", "sam")
    assert second.status_code == 200 and second.json()["state"] == "signed"
    assert sorted(signed_by(api, sid)) == sorted([fleet["A"]["fingerprint"], fleet["B"]["fingerprint"]])
    timeline = api.call("GET", f"/api/spends/{sid}", "aude").json()["timeline"]
    assert [e["actor"] for e in timeline if e["kind"] == "psbt.signed"] == [
        f"sina on device {fleet['A']['serial']}", f"sam on device {fleet['B']['serial']}"]
    assert api.call("POST", f"/api/spends/{sid}/broadcast", "omar").status_code == 200
    rpc.generatetoaddress(1, other_address)
    assert api.call("POST", f"/api/spends/{sid}/track", "omar").json()["state"] == "confirmed"
    service.sync(api.sessions, rpc)


def test_a_signatory_cannot_make_another_holders_device_sign_a_proof_of_reserves(api, fleet):
    run = api.call("POST", "/api/reserves", "olga", json={"audit": "2026-Q4", "nonce": "holder-test-nonce-0001",
                                                          "custodian": "Acme", "policies": ["vault"]})
    assert run.status_code == 201, run.text
    rid = run.json()["id"]
    before, files = api.events(), {n: device_files(fleet[n]["state"]) for n in "ABC"}
    refused = api.call("POST", f"/api/reserves/{rid}/devices/{fleet['B']['serial']}/sign", "sina")
    assert refused.status_code == 403, refused.text
    assert "is issued to sam" in refused.json()["detail"]
    assert api.call("POST", f"/api/reserves/{rid}/devices/{fleet['A']['serial']}/sign", "olga").status_code == 403
    assert api.events() == before and {n: device_files(fleet[n]["state"]) for n in "ABC"} == files
    assert not api.call("GET", f"/api/reserves/{rid}", "aude").json()["signers"]

    own = api.call("POST", f"/api/reserves/{rid}/devices/{fleet['A']['serial']}/sign", "sina")
    assert own.status_code == 200, own.text
    assert own.json()["new_signers"] == [fleet["A"]["fingerprint"]]
    assert device_files(fleet["B"]["state"]) == files["B"]


def test_holder_names_compare_canonically_and_ambiguity_is_refused(tmp_path):
    """"Sina" issued, sina logged in: the same person. But with signatories "Sina" and "SINA" both on
    record, neither device is sina's (a refusal, never a guess); a device issued to nobody signs for nobody."""
    sessions = open_database(f"sqlite:///{tmp_path}/c.db")
    with sessions.begin() as s:
        accounts.create_user(s, "sina", "signatory", PASSWORD)
        first = devices.issue(s, model=MODEL, serial="RS-1", to="  Sina ", actor="root")
        assert holders.require_holder(s, first, "sina").name == "Sina"
        with pytest.raises(holders.NotHolder, match="issued to Sina: only its holder"):
            holders.require_holder(s, first, "sam")
        second = devices.issue(s, model=MODEL, serial="RS-2", to="SINA", actor="root")
        for device in (first, second):
            with pytest.raises(holders.NotHolder, match="matches more than one account or signatory"):
                holders.require_holder(s, device, "sina")
        nobody = devices.issue(s, model=MODEL, serial="RS-3", to="x", actor="root")
        nobody.signatory_id = None
        with pytest.raises(holders.NotHolder, match="issued to nobody"):
            holders.require_holder(s, nobody, "sina")
