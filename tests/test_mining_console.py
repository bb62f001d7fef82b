"""The mining treasury in the coordinator, on the embedded node: admins configure pools, accounts and the
fleet; officers import statements and telemetry, reconcile, resolve findings and sweep into custody;
auditors read everything but resolve and sweep nothing (403); bad input is refused with a reason and
writes nothing; the Mining page shows the overview, the expected-versus-paid chart, the discrepancy
drill-down with its resolve form, and the sweeps; the metrics."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from embit.networks import NETWORKS
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from coordinator import accounts
from coordinator.app import create_app, node_factory
from custody.bitcoin.policies import build_policy
from custody.ledger import registry
from custody.ledger.sync import Syncer
from custody.mining import service as ms
from custody.mining.models import Discrepancy, Pool, PoolAccount, StatementLine, Sweep
from custody.store.db import open_database
from regtest.testwallet import TestWallet

from .conftest import hd_keys, mine_coins
from .test_api import _metrics, Service
from .test_console_pages import Console, PASSWORD

FLEET_SEED, CUSTODY_SEED = 9300, 9310
MINER = TestWallet("mining console miner").address()
OUTSIDER = TestWallet("mining console outsider").address()
START = datetime.combine(datetime.now(timezone.utc).date(), datetime.min.time(), tzinfo=timezone.utc)
TODAY = START.date().isoformat()
RATE = Decimal("0.00000001")                 # difficulty accepted per 10 minutes (regtest's D is ~5e-10)


@pytest.fixture(scope="module")
def chain(rpc, wallet):
    """The fleet wallet paid twice by the pool today (250,000 and 120,000 sat), confirmed."""
    fleet = build_policy("wpkh", 1, hd_keys(1, seed_base=FLEET_SEED))
    custody = build_policy("wsh-sortedmulti", 2, hd_keys(3, seed_base=CUSTODY_SEED))
    [coin] = mine_coins(rpc, wallet, 1)
    spk = [fleet.embit(0).derive(i).script_pubkey().data for i in range(2)]
    txid = rpc.sendrawtransaction(wallet.sign([coin], [(spk[0], 250_000), (spk[1], 120_000),
                                                       (wallet.wpkh, coin.value - 380_000)]))
    rpc.generatetoaddress(1, MINER)
    return {"fleet": fleet, "custody": custody, "txid": txid,
            "addr": [fleet.embit(0).derive(i).address(NETWORKS["regtest"]) for i in range(3)]}


def telemetry_csv() -> str:
    """rig1's counter every 10 minutes over the whole day (Braiins OS samples as CSV)."""
    rows = [f"{(START + timedelta(minutes=10 * n)).isoformat()},main.rig1,{RATE * n}" for n in range(24 * 6 + 1)]
    return "timestamp,worker,difficulty_accepted\n" + "\n".join(rows) + "\n"


def statement_csv(chain) -> str:
    """The pool credits far less than the fleet's work is worth, reports the 250,000 sat payout, and one to an
    address that is not whitelisted; the 120,000 sat receipt is on no statement."""
    return ("kind,day,key,amount_sats,fee_sats,txid,address,status\n"
            f"earning,{TODAY},{TODAY},1000,,,,\n"
            f"payout,{TODAY},p-1,250000,0,{chain['txid']},{chain['addr'][0]},paid\n"
            f"payout,{TODAY},p-thief,70000,0,{'cd' * 32},{OUTSIDER},paid\n")


def policies(sessions, rpc, chain) -> None:
    with sessions.begin() as s:
        for name in ("fleet", "custody"):
            registry.set_status(s, registry.create_policy(s, name, chain[name], gap_limit=20), "active", actor="root")
    Syncer(sessions, rpc).sync_once()


def configure(sessions, chain) -> None:
    """The pool, the account with its terms and whitelist, and the rig (as an admin configures them)."""
    with sessions.begin() as s:
        ms.pool_create(s, "Foundry", "foundry", actor="root")
        ms.account_create(s, "Foundry", "main", scheme="FPPS", pool_fee_bps=200, fee_method="foundry",
                          payout_threshold=100_000, schedule="daily", payout_addresses=chain["addr"][:2],
                          fleet_policy="fleet", network="regtest", actor="root")
        ms.device_add(s, "S21-1", model="S21", account="main", worker="rig1", actor="root")


def reconciled(sessions, rpc, chain) -> None:
    """Configured, statement and telemetry imported, today reconciled."""
    configure(sessions, chain)
    with sessions.begin() as s:
        ms.telemetry_import(s, telemetry_csv(), "braiins", actor="olga")
        ms.statement_import(s, "main", "csv", statement_csv(chain), actor="olga")
        ms.reconcile(s, rpc, "Foundry/main", TODAY, TODAY, actor="olga", sweep_fee_rate=2.0)


def finding(svc, category: str) -> dict:
    return next(d for d in svc.call("GET", "/api/mining/discrepancies?state=all", "aude").json()
                if d["category"] == category)


@pytest.fixture
def app(db_url, node, rpc, chain):
    sessions = open_database(db_url)
    tokens, secrets_ = {}, {}
    with sessions.begin() as s:
        for name, role in [("root", "admin"), ("olga", "officer"), ("sina", "signatory"), ("aude", "auditor"),
                           ("vic", "viewer")]:
            user, secrets_[name] = accounts.create_user(s, name, role, PASSWORD)
            tokens[name] = accounts.create_token(s, user, "test")[0]
    policies(sessions, rpc, chain)
    application = create_app(sessions, node_factory(node.url, cookie_file=node.cookie_file), sync_interval=0)
    with TestClient(application) as client:
        yield Service(client, sessions, tokens, secrets_), Console(client, secrets_)


def count(svc, model) -> int:
    with svc.sessions() as s:
        return s.scalar(select(func.count()).select_from(model))


# -- the API ---------------------------------------------------------------------------------------------------
def test_the_treasury_over_the_api(app, chain):
    svc, _ = app
    assert svc.call("POST", "/api/mining/pools", "root", json={"name": "Foundry", "kind": "foundry"}).status_code == 201
    terms = {"pool": "Foundry", "name": "main", "scheme": "FPPS", "pool_fee_bps": 200, "payout_threshold": 100_000,
             "payout_addresses": chain["addr"][:2], "fleet_policy": "fleet"}
    account = svc.call("POST", "/api/mining/accounts", "root", json=terms)
    assert account.status_code == 201, account.text
    aid = account.json()["id"]
    assert account.json()["account"] == "Foundry/main" and account.json()["schedule"] == "daily"
    rig = svc.call("POST", "/api/mining/devices", "olga", json={"serial": "S21-1", "model": "S21", "account": "main",
                                                               "worker": "rig1"})
    assert rig.status_code == 201 and rig.json()["account"] == "Foundry/main"

    imported = svc.call("POST", f"/api/mining/accounts/{aid}/statements", "olga",
                        json={"source": "csv", "payload": statement_csv(chain)})
    assert imported.status_code == 201 and imported.json()["added"] == 3
    again = svc.call("POST", f"/api/mining/accounts/{aid}/statements", "olga",
                     json={"source": "csv", "payload": statement_csv(chain)})
    assert again.json()["added"] == 0 and again.json()["unchanged"] == 3
    samples = svc.call("POST", "/api/mining/telemetry/import", "olga", json={"format": "braiins", "text": telemetry_csv()})
    assert samples.status_code == 201 and samples.json()["stored"] == 145 and samples.json()["unknown_workers"] == []
    assert svc.call("POST", "/api/mining/telemetry/import", "aude",
                    json={"format": "braiins", "text": telemetry_csv()}).status_code == 403
    assert svc.call("POST", f"/api/mining/accounts/{aid}/reconcile", "aude",
                    json={"first_day": TODAY, "last_day": TODAY}).status_code == 403

    report = svc.call("POST", f"/api/mining/accounts/{aid}/reconcile", "olga",
                      json={"first_day": TODAY, "last_day": TODAY, "sweep_fee_rate": 2})
    assert report.status_code == 200, report.text
    [day] = report.json()["days"]
    assert day["paid"] == 1000 and day["expected_fleet"] > 1000 and day["expected_pool"] is None
    categories = {f["category"]: f for f in report.json()["findings"]}
    assert {"UNDERPAID_VS_EXPECTED", "NON_WHITELISTED_DESTINATION", "UNATTRIBUTED_RECEIPT"} <= set(categories)
    assert all(f["id"] for f in report.json()["findings"])

    shown = svc.call("GET", f"/api/mining/accounts/{aid}", "aude").json()
    assert len(shown["lines"]) == 3 and shown["device_list"][0]["last_seen"] and shown["open_findings"]["critical"] == 1
    critical = svc.call("GET", "/api/mining/discrepancies?severity=critical", "aude").json()
    assert [d["category"] for d in critical] == ["NON_WHITELISTED_DESTINATION"]
    thief = svc.call("GET", f"/api/mining/discrepancies/{critical[0]['id']}", "aude").json()
    assert [ln["key"] for ln in thief["lines"]] == ["p-thief"] and thief["lines"][0]["address"] == OUTSIDER
    receipt = finding(svc, "UNATTRIBUTED_RECEIPT")
    assert svc.call("GET", f"/api/mining/discrepancies/{receipt['id']}", "aude").json()["txid"] == chain["txid"]

    # the auditor reads but resolves and sweeps nothing
    path = f"/api/mining/discrepancies/{thief['id']}/resolve"
    assert svc.call("POST", path, "aude", json={"note": "looks fine"}).status_code == 403
    assert svc.call("POST", "/api/mining/sweeps", "aude", json={"fleet": "fleet", "custody": "custody"}).status_code == 403
    assert svc.call("POST", path, "root", json={"note": "admins configure"}).status_code == 403
    before = svc.log_entries()
    done = svc.call("POST", path, "olga", json={"note": "the pool confirmed a typo; funds recovered"})
    assert done.status_code == 200 and done.json()["state"] == "resolved" and done.json()["resolved_by"] == "olga"
    assert done.json()["note"] == "the pool confirmed a typo; funds recovered" and svc.log_entries() == before + 1
    twice = svc.call("POST", path, "olga", json={"note": "again"})
    assert twice.status_code == 400 and "was resolved by olga" in twice.json()["detail"]
    assert svc.call("GET", "/api/mining/discrepancies?severity=critical", "aude").json() == []
    assert svc.call("GET", "/api/mining/discrepancies?state=resolved", "aude").json()[0]["id"] == thief["id"]

    swept = svc.call("POST", "/api/mining/sweeps", "olga", json={"fleet": "fleet", "custody": "custody", "fee_rate": 2})
    assert swept.status_code == 201, swept.text
    [made] = swept.json()["sweeps"]
    assert made["inputs"] == 2 and made["amount"] + made["fee"] == 370_000 and made["custody"] == "custody"
    history = svc.call("GET", "/api/mining/sweeps", "aude").json()
    assert history == [made] and made["state"] == "signing" and made["spend_id"]
    assert svc.call("GET", f"/api/spends/{made['spend_id']}", "aude").json()["state"] == "signing"

    [row] = svc.call("GET", "/api/mining/overview", "aude").json()
    assert row["paid_today"] == 1000 and row["expected_today"] == day["expected_fleet"] and row["days_expected"] == 1
    assert row["fleet_balance"]["total"] == 370_000 and row["open_findings"]["critical"] == 0
    [pool] = svc.call("GET", "/api/mining/chart", "aude").json()
    assert pool == {"pool": "Foundry", "points": [{"day": TODAY, "paid": 1000, "expected": day["expected_fleet"]}]}
    assert svc.call("GET", "/api/mining/overview", "vic").status_code == 403

    metrics = _metrics(svc)
    assert metrics[("custody_mining_open_discrepancies", (("category", "UNDERPAID_VS_EXPECTED"),
                                                          ("severity", "alert")))] == 1
    assert ("custody_mining_open_discrepancies", (("category", "NON_WHITELISTED_DESTINATION"),
                                                  ("severity", "critical"))) not in metrics       # resolved
    assert metrics[("custody_mining_paid_sats", (("account", "Foundry/main"),))] == 1000
    assert metrics[("custody_mining_expected_sats", (("account", "Foundry/main"),))] == day["expected_fleet"]
    assert metrics[("custody_mining_fleet_unswept_sats", (("policy", "fleet"),))] == 370_000   # reserved, not yet out


def test_bad_input_is_refused_with_a_reason_and_nothing_written(app, rpc, chain):
    svc, _ = app
    configure(svc.sessions, chain)
    before, lines = svc.log_entries(), count(svc, StatementLine)
    with svc.sessions() as s:
        aid = ms.get_account(s, "main").id
    terms = {"pool": "Foundry", "name": "second", "scheme": "FPPS", "pool_fee_bps": 200, "fleet_policy": "fleet"}

    def refused(method, path, body, status, reason):
        response = svc.call(method, path, "olga", json=body)
        assert response.status_code == status, (path, response.text)
        assert reason in json.dumps(response.json()["detail"]), (reason, response.json())

    refused("POST", "/api/mining/pools", {"name": "Foundry", "kind": "foundry"}, 400, "exists already")
    refused("POST", "/api/mining/pools", {"name": "X", "kind": "slushpool"}, 422, "kind")
    refused("POST", "/api/mining/accounts", {**terms, "pool": "nosuch"}, 404, "no mining pool named 'nosuch'")
    refused("POST", "/api/mining/accounts", {**terms, "payout_addresses": [OUTSIDER]}, 400,
            "is not an address of the fleet wallet 'fleet'")
    refused("POST", "/api/mining/accounts", {**terms, "payout_addresses": ["bc1qnotanaddress"]}, 400,
            "is not a valid address")
    refused("POST", "/api/mining/accounts", {**terms, "fleet_policy": "custody"}, 400, "a fleet payout wallet is a")
    refused("POST", "/api/mining/accounts", {**terms, "name": "main"}, 400, "has an account 'main' already")
    refused("POST", "/api/mining/accounts", {**terms, "pool_fee_bps": 20_000}, 422, "pool_fee_bps")
    refused("POST", "/api/mining/devices", {"serial": "S21-1", "model": "S21", "account": "main", "worker": "rig9"},
            400, "registered already")
    refused("POST", "/api/mining/devices", {"serial": "S21-2", "model": "S21", "account": "main", "worker": "rig1"},
            400, "is device S21-1 already")
    refused("POST", "/api/mining/devices", {"serial": "S21-2", "model": "S21", "account": "main", "worker": "rig2",
                                            "api_host": "10.0.0.2"}, 400, "both the API host and port")
    bad_csv = statement_csv(chain).replace(",1000,", ",12.5,")
    refused("POST", f"/api/mining/accounts/{aid}/statements", {"source": "csv", "payload": bad_csv}, 400, "line 2")
    refused("POST", f"/api/mining/accounts/{aid}/statements", {"source": "braiins", "payload": "{}"}, 400,
            "does not belong to it")
    refused("POST", "/api/mining/accounts/999/statements", {"source": "csv", "payload": bad_csv}, 404,
            "no mining account #999")
    refused("POST", "/api/mining/telemetry/import", {"format": "braiins", "text": "timestamp,worker\nnope,rig\n"}, 400,
            "nothing stored")
    refused("POST", "/api/mining/telemetry/import", {"format": "braiins", "text": "/etc/hostname"}, 400,
            "refused")                                        # text, never a file on the server
    tomorrow = (START + timedelta(days=1)).date().isoformat()
    refused("POST", f"/api/mining/accounts/{aid}/reconcile", {"first_day": TODAY, "last_day": tomorrow}, 400,
            "has not begun yet")
    refused("POST", f"/api/mining/accounts/{aid}/reconcile", {"first_day": TODAY, "last_day": "2020-01-01"}, 400,
            "before the first day")
    refused("POST", f"/api/mining/accounts/{aid}/reconcile", {"first_day": "2025-02-30", "last_day": TODAY}, 400,
            "is not a day")
    refused("POST", "/api/mining/discrepancies/999/resolve", {"note": "x"}, 404, "no discrepancy #999")
    refused("POST", "/api/mining/sweeps", {"fleet": "fleet", "custody": "fleet"}, 400, "not an active custody policy")
    refused("POST", "/api/mining/sweeps", {"fleet": "custody", "custody": "custody", "fee_rate": 2}, 400,
            "not a fleet payout wallet")
    refused("GET", "/api/mining/discrepancies?category=NOPE", None, 400, "category 'NOPE' is not one of")
    assert svc.log_entries() == before and count(svc, StatementLine) == lines
    assert count(svc, Pool) == 1 and count(svc, PoolAccount) == 1 and count(svc, Sweep) == 0
    assert count(svc, Discrepancy) == 0


# -- the console -----------------------------------------------------------------------------------------------
def test_the_mining_page_chart_and_drill_down(app, rpc, chain):
    svc, console = app
    reconciled(svc.sessions, rpc, chain)
    with svc.sessions() as s:
        thief = ms.discrepancies(s, category="NON_WHITELISTED_DESTINATION")[0]["id"]
        receipt = ms.discrepancies(s, category="UNATTRIBUTED_RECEIPT")[0]["id"]

    console.login("olga")
    page = console.client.get("/mining")
    assert page.status_code == 200 and 'href="/mining"' in page.text
    overview = page.text[page.text.index('id="mining-overview"'):page.text.index("</table>", page.text.index('id="mining-overview"'))]
    assert "Foundry/main" in overview and "FPPS" in overview and "1 critical" in overview
    charts = page.text[page.text.index('id="mining-charts"'):]
    assert '<svg class="chart"' in charts and 'class="bar"' in charts and f"{TODAY}: paid 0.00001 BTC" in charts
    assert f"{TODAY}: expected" in charts
    assert f'id="discrepancy-{thief}"' in page.text and 'id="discrepancy-detail"' not in page.text
    assert "Sweep a fleet wallet into custody" in page.text

    detail = console.client.get(f"/mining?state=open&discrepancy={thief}")        # the row's link
    assert f'href="/mining?category=&amp;severity=&amp;account=&amp;state=open&amp;discrepancy={thief}' in page.text
    section = detail.text[detail.text.index('id="discrepancy-detail"'):]
    assert "NON_WHITELISTED_DESTINATION" in section and "p-thief" in section and OUTSIDER in section
    assert 'id="resolve-form"' in section and 'name="csrf_token"' in section
    other = console.client.get(f"/mining?discrepancy={receipt}")
    assert chain["txid"] in other.text[other.text.index('id="discrepancy-txid"'):]

    forged = console.client.post(f"/mining/discrepancies/{thief}/resolve", data={"note": "x", "csrf_token": "nope"},
                                 follow_redirects=False)
    assert forged.status_code == 403 and "CSRF" in forged.text
    empty = console.post(f"/mining/discrepancies/{thief}/resolve", {"note": "   "})
    assert empty.status_code == 400 and "a note saying why" in empty.text
    done = console.post(f"/mining/discrepancies/{thief}/resolve", {"note": "pool's mistake, refunded"})
    assert done.status_code == 303 and done.headers["location"].startswith(f"/mining?discrepancy={thief}")
    page = console.client.get(done.headers["location"])
    assert "resolved by olga" in page.text and "pool&#39;s mistake, refunded" in page.text
    assert 'id="resolve-form"' not in page.text

    swept = console.post("/mining/sweeps", {"fleet": "fleet", "custody": "custody", "fee_rate": "2",
                                            "max_fee_rate": "20", "max_inputs": "200"})
    assert swept.status_code == 303 and "1+sweep+spend" in swept.headers["location"]
    page = console.client.get("/mining")
    sweeps = page.text[page.text.index('id="sweeps"'):]
    assert 'href="/spends/1"' in sweeps and "signing" in sweeps and chain["addr"][0] not in sweeps

    console.login("aude")
    page = console.client.get(f"/mining?discrepancy={receipt}")
    assert page.status_code == 200 and 'href="/mining"' in page.text and 'id="discrepancy-detail"' in page.text
    assert 'id="resolve-form"' not in page.text and "Sweep a fleet wallet" not in page.text
    assert console.post(f"/mining/discrepancies/{receipt}/resolve", {"note": "fine"}).status_code == 403
    assert console.post("/mining/sweeps", {"fleet": "fleet", "custody": "custody"}).status_code == 403
    console.login("vic")
    assert 'href="/mining"' not in console.client.get("/").text and console.client.get("/mining").status_code == 403
