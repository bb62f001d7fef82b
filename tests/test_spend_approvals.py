"""Approvals are signatures by the officers' own keys, and the devices check them (issue 17, item 1).

Over the API: an officer enrols a key file's public key, fetches the message of a spend (its policy,
unsigned transaction, outputs and fee) and approves by signing it. The coordinator refuses, by name, an
approval by a key that is not the officer's, a signature over another spend, a revoked key, a
non-officer's key, and the requester's own. Then the point of it all: the coordinator cannot make an
approval. With the database tampered (an approval row and its proof invented, copied from another
officer, or the transaction changed after approval), the devices, reached through HWI, refuse to sign
and say whose approval failed. Finally the CLI approves with a key file.

Two simulated reference signers on the embedded node; their own policy asks for two approvals by the
officers olga and omar (ed25519 key files).
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from embit.psbt import PSBT
from embit.script import address_to_scriptpubkey
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from coordinator import accounts
from coordinator.app import create_app, node_factory
from custody.devices import inventory as devices
from custody.ledger import registry, service
from custody.people.credential_models import ApproverCredential
from custody.spending import spends
from custody.spending.models import Approval, Spend
from custody.store.db import open_database
from custody_signer.device import MODEL
from regtest.testwallet import TestWallet

from . import officers
from .passkeys import SoftPasskey
from .conftest import mine_coins
from .signers import install_policy, run_ceremony, simulated_signers

PASSWORD = "correct horse battery staple"
PAYEE = TestWallet("approvals payee")
HOLDERS = ("sina", "sam")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    with simulated_signers(tmp_path_factory.mktemp("approval-fleet"), HOLDERS) as found:
        yield found


class Api:
    def __init__(self, client, sessions, tokens, fleet):
        self.client, self.sessions, self.tokens, self.fleet = client, sessions, tokens, fleet

    def call(self, method: str, path: str, name: str, **kw):
        return self.client.request(method, path, headers={"authorization": f"Bearer {self.tokens[name]}"}, **kw)

    def request(self, amount: int = 10_000_000) -> int:
        made = self.call("POST", "/api/spends", "ray", json={"policy": "vault", "fee_rate": 2,
                                                             "to": [{"address": PAYEE.address(), "amount": amount}]})
        assert made.status_code == 201, made.text
        return made.json()["id"]

    def message(self, sid: int, name: str) -> bytes:
        answer = self.call("POST", f"/api/spends/{sid}/approval-request", name)
        assert answer.status_code == 200, answer.text
        return answer.json()["message"].encode()

    def approve(self, sid: int, name: str, *, key: str | None = None, message: bytes | None = None):
        """`name` approves with the key file of `key` (default: their own)."""
        key = key or name
        signature = officers.approval_key(key).sign(message or self.message(sid, name)).hex()
        return self.call("POST", f"/api/spends/{sid}/approve", name, json={"proof": {
            "kind": "ed25519", "public_key": officers.public_hex(key), "signature": signature}})

    def sign_on(self, sid: int, holder: str):
        return self.call("POST", f"/api/spends/{sid}/devices/{self.fleet[holder]['serial']}/sign", holder)


@pytest.fixture(scope="module")
def api(fleet, node, rpc, wallet, tmp_path_factory):
    sessions = open_database(f"sqlite:///{tmp_path_factory.mktemp('approvals-db') / 'custody.db'}")
    tokens = {}
    with sessions.begin() as s:
        for name, role in [("root", "admin"), ("ray", "officer"), ("olga", "officer"), ("omar", "officer"),
                           ("otto", "officer"), ("sina", "signatory"), ("sam", "signatory")]:
            user, _ = accounts.create_user(s, name, role, PASSWORD)
            tokens[name] = accounts.create_token(s, user, "test")[0]
        for holder in HOLDERS:
            devices.connect(s, devices.issue(s, model=MODEL, serial=fleet[holder]["serial"], to=holder, actor="root"),
                            "regtest", actor="root")
    for holder in HOLDERS:
        install_policy(fleet[holder]["state"], {"approvers": officers.device_approvers("olga", "omar"),
                                                "rules": [{"wallet": "vault", "min_approvers": 2}]})
    run_ceremony(sessions, "vault", 2, fleet, {h: h for h in HOLDERS})
    with sessions.begin() as s:
        policy = registry.get_policy(s, "vault")
        spends.set_approval_rule(s, policy, required_approvals=2)
        address = registry.receive_address(s, policy)
    coins = mine_coins(rpc, wallet, 4)
    for coin in coins:
        rpc.sendrawtransaction(wallet.sign([coin], [(address_to_scriptpubkey(address).data, 100_000_000),
                                                    (wallet.wpkh, coin.value - 100_000_000 - 2_000)]))
    rpc.generatetoaddress(1, PAYEE.address())
    service.sync(sessions, rpc)
    app = create_app(sessions, node_factory(node.url, cookie_file=node.cookie_file), sync_interval=0)
    with TestClient(app) as client:
        api = Api(client, sessions, tokens, fleet)
        for name in ("olga", "omar", "otto"):
            enrolled = api.call("POST", "/api/me/approval-credentials", name,
                                json={"public_key": officers.public_hex(name), "label": "key file"})
            assert enrolled.status_code == 201, enrolled.text
        yield api


@pytest.fixture(autouse=True)
def give_back_coins(api):
    """Requests reserve their coins: each test's unfinished ones are cancelled after it."""
    yield
    with api.sessions.begin() as s:
        for spend in s.scalars(select(Spend).where(Spend.state.in_(("requested", "approved", "signing", "signed")))):
            spends.cancel(s, spend, actor="test")


def approvals_of(api: Api, sid: int) -> list[str]:
    return [a["officer"] for a in api.call("GET", f"/api/spends/{sid}", "ray").json()["approvals"]]


def test_the_approval_message_states_the_transaction(api):
    sid = api.request(12_345_678)
    message = api.message(sid, "olga").decode()
    with api.sessions() as s:
        spend = s.get(Spend, sid)
        txid = PSBT.from_string(spend.psbt).tx.txid().hex()
        fee = spend.fee
    lines = message.splitlines()
    assert lines[0] == "custody approval v2" and lines[2] == f"txid {txid}" and lines[-1] == f"fee {fee}"
    assert f"pay {PAYEE.address()} 12345678" in lines and any(line.startswith("change ") for line in lines)


@pytest.mark.parametrize("attack, refusal", [
    ("another officer's key", "not one of olga's enrolled approval keys"),
    ("a signature over another spend", "olga's signature does not verify for this transaction"),
    ("a key nobody enrolled", "not one of olga's enrolled approval keys"),
])
def test_the_coordinator_refuses_an_approval_that_is_not_the_officers(api, attack, refusal):
    sid, other = api.request(), api.request()
    if attack == "another officer's key":
        answer = api.approve(sid, "olga", key="omar")
    elif attack == "a signature over another spend":
        answer = api.approve(sid, "olga", message=api.message(other, "olga"))
    else:
        answer = api.approve(sid, "olga", key="mallory")
    assert answer.status_code == 400 and refusal in answer.json()["detail"], answer.text
    assert approvals_of(api, sid) == []


def test_the_requester_a_signatory_and_a_revoked_key_cannot_approve(api):
    sid = api.request()
    own = api.call("POST", f"/api/spends/{sid}/approve", "ray", json={"proof": {"kind": "ed25519"}})
    assert own.status_code == 400 and "requester cannot approve" in own.json()["detail"]
    signatory = api.call("POST", f"/api/spends/{sid}/approve", "sina", json={"proof": {"kind": "ed25519"}})
    assert signatory.status_code == 403
    enrol = api.call("POST", "/api/me/approval-credentials", "sina", json={"public_key": officers.public_hex("sina")})
    assert enrol.status_code == 403                             # signatories hold no approval key
    [otto] = api.call("GET", "/api/me/approval-credentials", "otto").json()
    assert api.call("DELETE", f"/api/me/approval-credentials/{otto['id']}", "otto").status_code == 204
    revoked = api.approve(sid, "otto")
    assert revoked.status_code == 400 and "not one of otto's enrolled approval keys" in revoked.json()["detail"]
    assert approvals_of(api, sid) == []
    again = api.call("POST", "/api/me/approval-credentials", "otto", json={"public_key": officers.public_hex("otto")})
    assert again.status_code == 400 and "already enrolled" in again.json()["detail"]   # one key, one officer, once


def test_approved_by_both_the_devices_sign_and_name_who_approved(api, rpc):
    sid = api.request()
    assert api.approve(sid, "olga").json()["state"] == "requested"
    assert api.approve(sid, "omar").json()["state"] == "signing"
    for holder in HOLDERS:
        signed = api.sign_on(sid, holder)
        assert signed.status_code == 200, signed.text
    assert api.call("POST", f"/api/spends/{sid}/broadcast", "olga").status_code == 200
    for holder in HOLDERS:
        log = [json.loads(line) for line in (api.fleet[holder]["state"] / "hsm_log.jsonl").read_text().splitlines()]
        assert log[-1]["event"] == "sign" and log[-1]["approved_by"] == ["olga", "omar"]


def _tampered(api: Api, how: str) -> int:
    """A spend olga approved for real, and a second approval the coordinator's database was made to hold."""
    sid = api.request()
    assert api.approve(sid, "olga").status_code == 200
    with api.sessions.begin() as s:
        spend = s.get(Spend, sid)
        olga = s.scalar(select(Approval).where(Approval.spend_id == sid))
        omar_key = s.scalar(select(ApproverCredential).join(accounts.User).where(accounts.User.username == "omar"))
        if how == "invented":                 # a row with a made-up signature under omar's key
            proof = "00" * 64
        elif how == "copied":                 # olga's genuine signature presented as omar's
            proof = olga.proof
        else:                                 # omar's genuine approval of another spend of the same policy
            other = api.request()
            with api.sessions() as s2:
                message = spends.approval_message(s2, s2.get(Spend, other))
            proof = officers.approval_key("omar").sign(message).hex()
        s.add(Approval(spend_id=sid, officer="omar", decision="approve", credential_id=omar_key.id, proof=proof))
        spend.state = "approved"
    with api.sessions.begin() as s:
        spends.open_signing(s, s.get(Spend, sid))
    return sid


@pytest.mark.parametrize("how", ["invented", "copied", "another spend's"])
def test_a_tampered_database_cannot_approve_the_devices_refuse(api, how):
    sid = _tampered(api, how)
    before = (api.fleet["sina"]["state"] / "hsm_log.jsonl").read_text()
    refused = api.sign_on(sid, "sina")
    assert refused.status_code == 400, refused.text
    detail = refused.json()["detail"]
    assert "1 valid approver signature(s), 2 needed" in detail and "omar" in detail, detail
    with api.sessions() as s:
        assert s.get(Spend, sid).state == "signing"
        assert PSBT.from_string(s.get(Spend, sid).psbt).inputs[0].partial_sigs == {}
    log = (api.fleet["sina"]["state"] / "hsm_log.jsonl").read_text()
    assert log.startswith(before) and json.loads(log.splitlines()[-1])["event"] == "refuse"


def test_a_transaction_changed_after_its_approvals_is_refused_by_the_devices(api):
    """The database's PSBT is swapped after both approvals for one paying more: the approvals no longer fit."""
    sid = api.request(10_000_000)
    api.approve(sid, "olga")
    api.approve(sid, "omar")
    with api.sessions.begin() as s:
        spend = s.get(Spend, sid)
        psbt = PSBT.from_string(spend.psbt)
        before = psbt.tx.txid()
        paid = next(o for o in psbt.outputs if o.value == 10_000_000)
        change = next(o for o in psbt.outputs if o.value != 10_000_000)
        paid.value, change.value = paid.value + 5_000_000, change.value - 5_000_000
        assert psbt.tx.txid() != before
        s.execute(update(Spend).where(Spend.id == sid).values(psbt=psbt.to_string()))
    refused = api.sign_on(sid, "sam")
    assert refused.status_code == 400
    assert "0 valid approver signature(s), 2 needed" in refused.json()["detail"]
    assert "olga's signature does not verify for this transaction" in refused.json()["detail"]


def test_the_cli_approves_with_a_key_file(api, node, tmp_path):
    sid = api.request()
    db = str(api.sessions.kw["bind"].url)
    base = [sys.executable, "-m", "coordinator.cli.main", "--node", node.url, "--node-cookie", str(node.cookie_file),
            "--network", "regtest", "--db", db, "--json", "spend", "approve", str(sid)]
    wrong = subprocess.run(base + ["--officer", "olga", "--key", str(officers.key_file(tmp_path, "omar"))],
                           capture_output=True, text=True)
    assert wrong.returncode != 0 and len(wrong.stderr.strip().splitlines()) == 1
    assert "not one of olga's enrolled approval keys" in wrong.stderr
    done = subprocess.run(base + ["--officer", "olga", "--key", str(officers.key_file(tmp_path, "olga"))],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert approvals_of(api, sid) == ["olga"]
    with api.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Approval).where(Approval.spend_id == sid)) == 1


# -- passkeys through the API (the browser's side made by tests/passkeys.py) -------------------------------
def enrol_passkey(api: Api, name: str, passkey: SoftPasskey) -> dict:
    options = api.call("POST", "/api/me/passkeys/options", name)
    assert options.status_code == 200, options.text
    assert [p["alg"] for p in options.json()["publicKey"]["pubKeyCredParams"]] == [-7]     # ES256 only
    enrolled = api.call("POST", "/api/me/passkeys", name, json={"credential": passkey.create(options.json()),
                                                                "label": "laptop"})
    assert enrolled.status_code == 201, enrolled.text
    return enrolled.json()


def passkey_approve(api: Api, sid: int, name: str, passkey: SoftPasskey, **how):
    request = api.call("POST", f"/api/spends/{sid}/approval-request", name).json()
    return api.call("POST", f"/api/spends/{sid}/approve", name,
                    json={"proof": {"kind": "webauthn", "credential": passkey.get(request["options"], **how)}})


def test_a_passkey_approval_is_checked_as_webauthn_and_kept_for_the_devices(api):
    passkey = SoftPasskey()
    enrolled = enrol_passkey(api, "otto", passkey)
    assert enrolled["kind"] == "webauthn" and enrolled["rp_id"] == "localhost"
    approvers = api.call("GET", "/api/approvers", "sina").json()["approvers"]
    assert approvers["otto-passkey"] == {"type": "webauthn", "key": enrolled["public_key"], "rp_id": "localhost"}

    sid, other = api.request(), api.request()
    elsewhere = passkey_approve(api, sid, "otto", passkey, origin="https://evil.example")
    assert elsewhere.status_code == 400 and "origin" in elsewhere.json()["detail"].lower()
    # an assertion over another spend's challenge
    request = api.call("POST", f"/api/spends/{other}/approval-request", "otto").json()
    wrong = api.call("POST", f"/api/spends/{sid}/approve", "otto",
                     json={"proof": {"kind": "webauthn", "credential": passkey.get(request["options"])}})
    assert wrong.status_code == 400 and "challenge" in wrong.json()["detail"].lower()
    # a passkey whose counter goes backwards (a clone) is refused
    passkey.counter = 10
    assert passkey_approve(api, sid, "otto", passkey).status_code == 200
    with api.sessions() as s:
        approval = s.scalar(select(Approval).where(Approval.spend_id == sid))
        assert approval.officer == "otto" and approval.proof
    cloned = passkey_approve(api, other, "otto", passkey, counter=5)
    assert cloned.status_code == 400 and "counter went backwards" in cloned.json()["detail"]
    # a passkey is an approval key of its officer only: omar cannot present otto's
    options = api.call("POST", f"/api/spends/{other}/approval-request", "otto").json()["options"]
    stolen = api.call("POST", f"/api/spends/{other}/approve", "omar",
                      json={"proof": {"kind": "webauthn", "credential": passkey.get(options)}})
    assert stolen.status_code == 400 and "not one of omar's enrolled passkeys" in stolen.json()["detail"]


def test_a_p256_key_file_made_enrolled_and_used_from_the_cli(api, node, tmp_path):
    """Automation's path: `custody approver keygen --kind p256`, `approver enroll`, `spend approve --key`."""
    db = str(api.sessions.kw["bind"].url)
    cli = [sys.executable, "-m", "coordinator.cli.main", "--node", node.url, "--node-cookie", str(node.cookie_file),
           "--network", "regtest", "--db", db, "--json"]
    key = tmp_path / "otto-p256.pem"
    made = subprocess.run(cli + ["approver", "keygen", str(key), "--kind", "p256"], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    public = json.loads(made.stdout)["public_key"]
    assert len(public) == 66 and oct(key.stat().st_mode & 0o777) == "0o600"
    again = subprocess.run(cli + ["approver", "keygen", str(key)], capture_output=True, text=True)
    assert again.returncode != 0 and "never overwritten" in again.stderr
    enrolled = subprocess.run(cli + ["approver", "enroll", public, "--officer", "otto"], capture_output=True, text=True)
    assert enrolled.returncode == 0 and json.loads(enrolled.stdout)["kind"] == "p256", enrolled.stderr
    listed = json.loads(subprocess.run(cli + ["approver", "list"], capture_output=True, text=True).stdout)
    assert {"type": "p256", "key": public} in listed["approvers"].values()
    sid = api.request()
    done = subprocess.run(cli + ["spend", "approve", str(sid), "--officer", "otto", "--key", str(key)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert approvals_of(api, sid) == ["otto"]
