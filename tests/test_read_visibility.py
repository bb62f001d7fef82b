"""What each role reads (issue 16, finding 8): every GET route of the permission table, as every role,
searched for what that role must not see. Written from this file's own expectations, not from the
coordinator's table:

- xpubs (descriptors, keys, exports, PSBT_GLOBAL_XPUB, proof-of-reserves packages): admins, officers and
  auditors see every policy's; a signatory only those of policies they hold a key of (sina holds a key
  of "held", bound to her as a ceremony binds it; sam holds one of "other" through the fingerprint of
  the device issued to him) and the keys of a ceremony their device takes part in; viewers none.
- coin and address labels, and a coin search that would match them: admins, officers, auditors.
- spend memos (fields and timeline): everyone but viewers.

An xpub counts as seen if its chain code appears in any form: the base58 string (any version bytes),
hex, raw bytes (a binary PSBT), or inside base64 (a PSBT as text). Then the positive side: the roles
that may see each of them do, on the routes that carry them."""
from __future__ import annotations

import base64
import binascii
import hashlib
import re

import pytest
from embit import base58, bip32
from embit.networks import NETWORKS
from embit.psbt import PSBT
from fastapi.testclient import TestClient
from sqlalchemy import select

from coordinator import accounts
from coordinator.app import create_app, node_factory
from coordinator.auth import ROUTE_TABLE
from custody.bitcoin import bip322
from custody.bitcoin.policies import build_policy
from custody.devices import ceremony, inventory as devices
from custody.devices.models import CeremonyMember
from custody.ledger import coins as ledger, registry, service
from custody.ledger.models import Key, SigningDevice
from custody.reserves import service as reserve_service
from custody.spending import spends
from custody.store.db import open_database
from custody_signer.protocol import MODEL, possession_message
from regtest.testwallet import TestWallet

from . import officers
from .conftest import fund_policy, mine_coins
from .test_reserves import sign as sign_proof

PASSWORD = "correct horse battery staple"
PAYEE = TestWallet("visibility payee")
SEEDS = {"held": 8100, "other": 8200, "ceremony": 8300}
USERS = {"root": "admin", "olga": "officer", "omar": "officer", "sina": "signatory", "sam": "signatory",
         "aude": "auditor", "vic": "viewer"}
READERS = ["root", "olga", "sina", "sam", "aude", "vic"]          # every role; two signatories

# -- this test's own expectations ---------------------------------------------------------------------------
SEES_XPUBS = {"root": {"held", "other", "ceremony"}, "olga": {"held", "other", "ceremony"},
              "aude": {"held", "other", "ceremony"}, "sina": {"held", "ceremony"}, "sam": {"other"}, "vic": set()}
SEES_LABELS = {"root", "olga", "aude"}
SEES_MEMOS = {"root", "olga", "aude", "sina", "sam"}
LABELS = {"LBL-held-coin-7f3a", "LBL-other-addr-91c2"}
MEMOS = {"MEMO-held-5b1e", "MEMO-other-c4d2"}


def root(n: int) -> bip32.HDKey:
    return bip32.HDKey.from_seed(hashlib.sha256(f"test device {n}".encode()).digest(),
                                 version=NETWORKS["regtest"]["xprv"])


def account(n: int) -> bip32.HDKey:
    return root(n).derive("m/48h/1h/0h/2h")


def key_text(n: int) -> str:
    return f"[{root(n).my_fingerprint.hex()}/48h/1h/0h/2h]{account(n).to_public().to_base58()}"


def group_keys(group: str) -> list[int]:
    return [SEEDS[group] + i for i in range(3 if group != "ceremony" else 2)]


def chain_codes(group: str) -> set[bytes]:
    return {account(n).chain_code for n in group_keys(group)}


def tpubs(group: str) -> set[str]:
    return {account(n).to_public().to_base58() for n in group_keys(group)}


# -- finding an xpub in any encoding ---------------------------------------------------------------------
B58 = re.compile(r"[1-9A-HJ-NP-Za-km-z]{100,120}")
B64 = re.compile(r"[A-Za-z0-9+/]{60,}={0,2}")


def _decodings(body: bytes) -> list[bytes]:
    """The body, and every long base64 run in it decoded (a PSBT as text, in JSON or alone)."""
    text = body.decode("latin-1")
    out = [body]
    for run in B64.findall(text):
        try:
            out.append(base64.b64decode(run + "=" * (-len(run) % 4)))
        except (binascii.Error, ValueError):
            pass
    return out


def seen_chain_codes(body: bytes) -> set[bytes]:
    """Chain codes of every xpub-like thing in the body: base58 extended keys (whatever their version
    bytes) in the text or in decoded base64."""
    found = set()
    for blob in _decodings(body):
        for token in B58.findall(blob.decode("latin-1")):
            try:
                raw = base58.decode_check(token)
            except Exception:
                continue
            if len(raw) == 78:
                found.add(raw[13:45])
    return found


def leaks_xpubs_of(body: bytes, group: str) -> bool:
    codes = chain_codes(group)
    if codes & seen_chain_codes(body):
        return True
    lowered = body.decode("latin-1").lower()
    return any(code in blob for blob in _decodings(body) for code in codes) or \
        any(code.hex() in lowered for code in codes)


def shows_all_xpubs_of(body: bytes, group: str) -> bool:
    codes = chain_codes(group)
    return codes <= seen_chain_codes(body) or all(any(code in blob for blob in _decodings(body)) for code in codes)


# -- the world ---------------------------------------------------------------------------------------------
class World:
    def __init__(self, client, sessions, tokens, ids):
        self.client, self.sessions, self.tokens, self.ids = client, sessions, tokens, ids

    def get(self, path: str, user: str):
        return self.client.get(path, headers={"authorization": f"Bearer {self.tokens[user]}"},
                               follow_redirects=False)


@pytest.fixture(scope="module")
def world(node, rpc, wallet, other_address, tmp_path_factory):
    sessions = open_database(f"sqlite:///{tmp_path_factory.mktemp('visibility') / 'custody.db'}")
    tokens, ids = {}, {}
    coins = mine_coins(rpc, wallet, 2)
    with sessions.begin() as s:
        for name, role in USERS.items():
            user, _ = accounts.create_user(s, name, role, PASSWORD)
            tokens[name] = accounts.create_token(s, user, "test")[0]
        specs = {}
        for group in ("held", "other"):
            specs[group] = build_policy("wsh-sortedmulti", 2, [key_text(n) for n in group_keys(group)])
            policy = registry.create_policy(s, group, specs[group])
            registry.set_status(s, policy, "active")
            spends.set_approval_rule(s, policy, required_approvals=1)
        # sina holds a key of "held": bound to her signatory, as a ceremony binds a device's key
        held_key = s.scalar(select(Key).where(Key.xpub == account(SEEDS["held"]).to_public().to_base58()))
        held_key.signatory_id = devices.signatory(s, "sina").id
        # sam holds a key of "other": the device issued to him has that key's fingerprint
        sams = devices.issue(s, model=MODEL, serial="DEV-SAM", to="sam", actor="root")
        sams.fingerprint = root(SEEDS["other"] + 1).my_fingerprint.hex()
        # a ceremony in progress, with sina's device and someone else's, both keys handed in with proofs
        devices.issue(s, model=MODEL, serial="DEV-SINA", to="sina", actor="root")
        devices.issue(s, model=MODEL, serial="DEV-XAVIER", to="xavier", actor="root")
        cid = ceremony.start(s, "pending", 2, ["DEV-SINA", "DEV-XAVIER"], actor="root").id
        for serial, n in (("DEV-SINA", SEEDS["ceremony"]), ("DEV-XAVIER", SEEDS["ceremony"] + 1)):
            member = s.scalar(select(CeremonyMember).join(SigningDevice, SigningDevice.id == CeremonyMember.device_id)
                              .where(SigningDevice.serial == serial))
            proof = bip322.sign_p2wpkh(account(n).key, possession_message(member.challenge))
            ceremony.accept_key(s, ceremony.get(s, cid), serial, key_text(n), proof, "regtest", actor="root")
        ids["ceremony"] = cid
    for group, coin in zip(("held", "other"), coins):
        fund_policy(rpc, wallet, coin, specs[group], other_address)
    service.sync(sessions, rpc)
    with sessions.begin() as s:
        held_coin = ledger.utxo_page(s, policy=registry.get_policy(s, "held"), limit=1)["rows"][0]
        other_coin = ledger.utxo_page(s, policy=registry.get_policy(s, "other"), limit=1)["rows"][0]
        service.label_set(s, "output", held_coin["outpoint"], "LBL-held-coin-7f3a")
        service.label_set(s, "addr", other_coin["address"], "LBL-other-addr-91c2")
        for group, memo in (("held", "MEMO-held-5b1e"), ("other", "MEMO-other-c4d2")):
            spend = spends.request_spend(s, registry.get_policy(s, group), "olga", [(PAYEE.address(), 10_000_000)],
                                         fee_rate=2.0, memo=memo, client=rpc)
            officers.approve(s, spend, "omar")         # one approval: to the signers
            ids[f"spend-{group}"] = spend.id
        ids["enrollment"] = accounts.invite_user(s, "newcomer", "viewer", actor="root")[1]   # a link not yet used
        from custody.governance import proposals as governance  # a proposal waiting: a stricter rule for "held"
        ids["proposal"] = governance.propose(s, "approval_rule", "held", governance.rule_change(approvals=2),
                                             "root").id
    for run, policies in (("run-held", ["held"]), ("run-both", ["held", "other"])):
        with sessions.begin() as s:
            made = reserve_service.create(s, rpc, nonce=f"visibility-nonce-{run}", audit="2026-Q4", custodian="Acme",
                                          policies=policies, height=None, kind="bip322", actor="olga")
            signers = [root(n) for group in policies for n in group_keys(group)[:2]]
            reserve_service.sign(s, made["id"], sign_proof(reserve_service.psbt(s, made["id"]), signers), actor="sina")
            reserve_service.finalize(s, made["id"], actor="olga")
            reserve_service.self_check(s, rpc, made["id"], actor="olga")
            ids[run] = made["id"]
    app = create_app(sessions, node_factory(node.url, cookie_file=node.cookie_file), sync_interval=0)
    with TestClient(app) as client:
        yield World(client, sessions, tokens, ids)


def _values(world: World) -> dict[str, list[str]]:
    i = world.ids
    return {"name": ["held", "other"], "spend_id": [str(i["spend-held"]), str(i["spend-other"])],
            "run_id": [str(i["run-held"]), str(i["run-both"])], "ceremony_id": [str(i["ceremony"])],
            "serial": ["DEV-SINA", "DEV-SAM"], "account_id": ["1"], "discrepancy_id": ["1"],
            "proposal_id": [str(i["proposal"])], "token": [i["enrollment"]]}


QUERIES = {"/api/policies/{name}/export": [f"format={f}" for f in ("core", "bsms", "coldcard", "sparrow", "specter",
                                                                    "caravan")],
           "/api/spends/{spend_id}/psbt": ["", "encoding=base64"], "/api/reserves/{run_id}/psbt": ["", "encoding=base64"],
           "/api/utxos": ["limit=1000", "q=LBL", "q=7f3a", "q=91c2"], "/utxos": ["", "q=LBL", "q=7f3a", "q=91c2"],
           "/api/policies/{name}/addresses": ["", "branch=1"]}
NO_DATA_HERE = {"/api/mining/accounts/{account_id}", "/api/mining/discrepancies/{discrepancy_id}"}


def concrete_paths(world: World, path: str) -> list[str]:
    values = _values(world)
    paths = [path]
    for param in re.findall(r"{(\w+)}", path):
        assert param in values, f"GET {path}: add values for {{{param}}} to this test"
        paths = [p.replace("{" + param + "}", v) for p in paths for v in values[param]]
    queries = QUERIES.get(path, [""])
    return [p + (f"?{q}" if q else "") for p in paths for q in queries]


def forbidden(user: str, body: bytes) -> list[str]:
    problems = []
    for group in ("held", "other", "ceremony"):
        if group not in SEES_XPUBS[user] and leaks_xpubs_of(body, group):
            problems.append(f"xpubs of {group}")
    text = body.decode("utf-8", "replace")
    if user not in SEES_LABELS:
        problems += [f"label {label}" for label in LABELS if label in text]
    if user not in SEES_MEMOS:
        problems += [f"memo {memo}" for memo in MEMOS if memo in text]
    return problems


def test_no_get_route_shows_a_role_what_it_must_not_see(world):
    gets = sorted({path for method, path, _ in ROUTE_TABLE if method == "GET"})
    assert len(gets) >= 50
    answered, leaks = {path: 0 for path in gets}, []
    for path in gets:
        for concrete in concrete_paths(world, path):
            for user in READERS:
                response = world.get(concrete, user)
                assert response.status_code < 500, (concrete, user, response.text[:500])
                answered[path] += response.status_code == 200
                problems = forbidden(user, response.content)
                if problems:
                    leaks.append((concrete, user, response.status_code, problems))
    assert leaks == [], "\n".join(map(str, leaks))
    assert [p for p, n in answered.items() if n == 0 and p not in NO_DATA_HERE] == []


# -- the positive side: who may, does ---------------------------------------------------------------------------
def test_policies_show_their_xpubs_to_whoever_may_see_them(world):
    for user in READERS:
        for group in ("held", "other"):
            shown = world.get(f"/api/policies/{group}", user)
            assert shown.status_code == 200 and shown.json()["balance"] == 600_000_000
            body = shown.json()
            if group in SEES_XPUBS[user]:
                assert shows_all_xpubs_of(shown.content, group), (user, group)
                assert body["descriptor"].startswith("wsh(sortedmulti(2,") and "withheld" not in body
            else:
                assert "descriptor" not in body and {"descriptor", "xpubs"} <= set(body["withheld"]), (user, body)
                assert len(body["keys"]) == 3 and all(k.endswith("]") for k in body["keys"])   # origins only
                assert body["threshold"] == 2 and body["status"] == "active"                      # the rest stays
            page = world.get(f"/policies/{group}", user)
            assert page.status_code == 200
            if group in SEES_XPUBS[user]:
                assert tpubs(group) <= set(B58.findall(page.text)) and "/export?format=" in page.text
            else:
                assert "withheld" in page.text and "/export?format=" not in page.text


def test_exports_are_for_whoever_may_see_the_xpubs(world):
    for user in ("root", "olga", "sina", "sam", "aude"):
        for group in ("held", "other"):
            exported = world.get(f"/api/policies/{group}/export?format=bsms", user)
            if group in SEES_XPUBS[user]:
                assert exported.status_code == 200 and shows_all_xpubs_of(exported.content, group), (user, group)
            else:
                assert exported.status_code == 403, (user, group, exported.text)
                assert "hold a key of" in exported.json()["detail"]
    assert world.get("/api/policies/held/export", "vic").status_code == 403           # the role table


def test_key_lists_and_ceremonies_show_a_signatory_their_own(world):
    listed = {k["xpub"] for k in world.get("/api/keys", "sina").json()}
    assert tpubs("held") <= listed and not listed & tpubs("other")
    listed = {k["xpub"] for k in world.get("/api/keys", "sam").json()}
    assert tpubs("other") <= listed and not listed & (tpubs("held") | tpubs("ceremony"))
    assert tpubs("held") | tpubs("other") | tpubs("ceremony") <= {k["xpub"] for k in world.get("/api/keys", "aude").json()}
    for user in ("root", "sina"):
        assert shows_all_xpubs_of(world.get("/api/ceremonies", user).content, "ceremony")
        assert shows_all_xpubs_of(world.get("/devices", user).content, "ceremony")
    [c] = world.get("/api/ceremonies", "sam").json()
    assert [d["withheld"] for d in c["devices"]] == [["key"], ["key"]] and all("key" not in d for d in c["devices"])
    assert "withheld" in world.get("/devices", "sam").text


def test_psbts_carry_only_the_xpubs_the_signatory_may_see_and_stay_signable(world):
    i = world.ids
    own = world.get(f"/api/spends/{i['spend-held']}/psbt?encoding=base64", "sina")
    assert own.status_code == 200 and len(PSBT.from_string(own.text).xpubs) == 3
    foreign = world.get(f"/api/spends/{i['spend-other']}/psbt", "sina")
    assert foreign.status_code == 200
    parsed = PSBT.parse(foreign.content)
    assert parsed.xpubs == {} and all(inp.bip32_derivations for inp in parsed.inputs)   # still signable
    full = PSBT.from_string(world.get(f"/api/spends/{i['spend-other']}/psbt?encoding=base64", "olga").text)
    assert len(full.xpubs) == 3 and full.tx.txid() == parsed.tx.txid()
    both = PSBT.from_string(world.get(f"/api/reserves/{i['run-both']}/psbt?encoding=base64", "sina").text)
    assert {k.to_base58() for k in both.xpubs} == tpubs("held")


def test_reserve_packages_go_to_whoever_may_see_every_policy_in_them(world):
    i = world.ids
    for user, run, status in [("aude", "run-both", 200), ("olga", "run-both", 200), ("root", "run-held", 200),
                              ("sina", "run-held", 200), ("sina", "run-both", 403), ("sam", "run-held", 403),
                              ("sam", "run-both", 403)]:
        package = world.get(f"/api/reserves/{i[run]}/package", user)
        assert package.status_code == status, (user, run, package.text[:300])
        if status == 200:
            assert shows_all_xpubs_of(package.content, "held")
        else:
            assert "hold a key of" in package.json()["detail"]


def test_labels_are_read_and_searched_only_by_the_roles_that_may(world):
    for user in READERS:
        page = world.get("/api/utxos?limit=1000", user).json()
        labels = {r.get("label") for r in page["rows"]} - {None}
        found = world.get("/api/utxos?q=7f3a", user).json()
        html = world.get("/utxos", user).text
        if user in SEES_LABELS:
            assert labels == LABELS and found["total"] == 1 and found["rows"][0]["label"] == "LBL-held-coin-7f3a"
            assert LABELS <= set(re.findall(r"LBL-[a-z]+-[a-z]+-[0-9a-f]{4}", html))
        else:
            assert labels == set() and page["withheld"] == ["label"], user
            assert found["total"] == 0 and found["rows"] == []          # the search does not look at labels
            assert page["total"] == 6 and "Label</th>" not in html     # the coins themselves are there


def test_memos_are_for_everyone_but_viewers(world):
    i = world.ids
    for user in READERS:
        listed = world.get("/api/spends", user).json()
        shown = world.get(f"/api/spends/{i['spend-held']}", user).json()
        requested = next(e for e in shown["timeline"] if e["kind"] == "spend.requested")
        pages = world.get("/spends", user).text + world.get(f"/spends/{i['spend-held']}", user).text + \
            world.get("/", user).text
        if user in SEES_MEMOS:
            assert {r["memo"] for r in listed} == MEMOS and shown["memo"] == "MEMO-held-5b1e"
            assert requested["data"]["memo"] == "MEMO-held-5b1e" and MEMOS <= set(re.findall(r"MEMO-[a-z]+-[0-9a-f]{4}", pages))
        else:
            assert all("memo" not in r and r["withheld"] == ["memo"] for r in listed)
            assert "memo" not in shown and "memo" not in requested["data"]
            assert shown["amount"] == 10_000_000 and shown["state"] == "signing"        # the spend itself is there
            assert "withheld" in pages


def test_the_spend_pages_qr_code_carries_what_the_download_does(world, monkeypatch):
    """The animated QR of a spend's page is its PSBT as well: the same xpubs withheld."""
    import coordinator.console.qr
    shown = []
    monkeypatch.setattr(coordinator.console.qr, "psbt_frames", lambda data: shown.append(data) or ["data:,"])
    i = world.ids
    for user, spend, group, visible in [("sina", "spend-held", "held", True), ("sina", "spend-other", "other", False),
                                        ("sam", "spend-held", "held", False), ("olga", "spend-other", "other", True)]:
        shown.clear()
        assert world.get(f"/spends/{i[spend]}", user).status_code == 200
        [data] = shown
        assert PSBT.parse(data).inputs and leaks_xpubs_of(data, group) is visible, (user, spend)
