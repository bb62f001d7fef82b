"""What the console pages are built from: the paged coin query (filter, sort, search, every state
decided in SQL as the ledger decides it), the value distribution, fee previews, and the SVG charts."""
from __future__ import annotations

import random

import pytest
from sqlalchemy import insert, select

from coordinator.console import charts
from custody.bitcoin.policies import build_policy
from custody.errors import CustodyError
from custody.ledger import coins as ledger, registry, service
from custody.ledger.models import Address, Block, Utxo
from custody.store.db import open_database

from .conftest import hd_keys

TIP = 500


@pytest.fixture
def ledger_db(db_url):
    """Two policies and 600 coins in every state, written straight into the ledger tables."""
    sessions = open_database(db_url)
    rng = random.Random(7)
    with sessions.begin() as s:
        for name, seed in (("vault", 8100), ("hot", 8110)):
            policy = registry.create_policy(s, name, build_policy("wsh-sortedmulti", 2, hd_keys(3, seed_base=seed)),
                                            gap_limit=30)
            registry.set_status(s, policy, "active")
        s.add(Block(height=TIP, hash="00" * 32, time=1_700_000_000))
        addresses = list(s.scalars(select(Address).where(Address.branch == 0)))
        rows = []
        for n in range(600):
            address = addresses[n % len(addresses)]
            kind = n % 7
            height = None if kind == 0 else rng.randrange(1, TIP + 1)
            rows.append({"policy_id": address.policy_id, "address_id": address.id, "txid": f"{n:064x}", "vout": n % 3,
                         "value": rng.choice([546, 10_000, 250_000, 3_000_000, 70_000_000, 2_100_000_000]) + n,
                         "height": height if kind != 3 else TIP - 10,  # kind 3: a young coinbase
                         "coinbase": kind in (3, 4), "spent_txid": "ff" * 32 if kind == 5 else None,
                         "frozen": kind == 6, "freeze_reason": "court order" if kind == 6 else None,
                         "reserved_by": "spend:1" if kind == 2 else None})
        s.execute(insert(Utxo), rows)
        ledger.set_label(s, "output", f"{7:064x}:1", "Cold storage batch A")
        ledger.set_label(s, "addr", addresses[3].address, "Exchange withdrawals")
    return sessions


def _everything(s) -> list[dict]:
    out = []
    for policy in registry.list_policies(s):
        out += [{**row, "policy": policy.name} for row in ledger.list_utxos(s, policy, include_spent=True)]
    return out


def test_each_state_filter_matches_the_ledgers_own_state(ledger_db):
    with ledger_db() as s:
        everything = _everything(s)
        assert {r["state"] for r in everything} == set(ledger.STATES)
        for state in ledger.STATES:
            page = ledger.utxo_page(s, states=[state], limit=1000)
            expected = {r["outpoint"] for r in everything if r["state"] == state}
            assert page["total"] == len(expected) and {r["outpoint"] for r in page["rows"]} == expected, state
            assert all(r["state"] == state for r in page["rows"])
        unspent = ledger.utxo_page(s, limit=1000)
        assert unspent["total"] == sum(1 for r in everything if r["state"] != "spent")
        for balance in ledger.balances(s):          # summed by the database, as the ledger states them
            for state in ("confirmed", "unconfirmed", "immature", "frozen", "reserved"):
                assert getattr(balance, state) == sum(r["value"] for r in everything
                                                      if r["policy"] == balance.policy and r["state"] == state)


@pytest.mark.parametrize("sort", ["value", "height", "outpoint"])
def test_pages_join_into_one_sorted_list(ledger_db, sort):
    with ledger_db() as s:
        policy = registry.get_policy(s, "vault")
        whole = [r for r in _everything(s) if r["policy"] == "vault" and r["state"] != "spent"]
        for descending in (False, True):
            pages, offset = [], 0
            while True:
                page = service.utxo_page(s, policy="vault", sort=sort, descending=descending, offset=offset, limit=37)
                pages += page["rows"]
                offset += 37
                if offset >= page["total"]:
                    break
            assert len(pages) == len(whole) and {r["outpoint"] for r in pages} == {r["outpoint"] for r in whole}
            keys = {"value": lambda r: r["value"], "outpoint": lambda r: (r["outpoint"].split(":")[0], int(r["outpoint"].split(":")[1])),
                    "height": lambda r: (r["height"] is None, r["height"] or 0)}[sort]
            assert [keys(r) for r in pages] == sorted((keys(r) for r in pages), reverse=descending)
        assert policy.name == "vault"


def test_search_finds_labels_addresses_and_outpoints(ledger_db):
    with ledger_db() as s:
        by_label = ledger.utxo_page(s, search="cold storage", states=list(ledger.STATES))
        assert [r["outpoint"] for r in by_label["rows"]] == [f"{7:064x}:1"]
        assert by_label["rows"][0]["label"] == "Cold storage batch A"
        by_address_label = ledger.utxo_page(s, search="exchange", limit=1000)
        assert by_address_label["total"] > 0 and all(r["label"] == "Exchange withdrawals" for r in by_address_label["rows"])
        some = by_address_label["rows"][0]
        assert ledger.utxo_page(s, search=some["address"][:20], limit=1000)["total"] >= 1
        assert ledger.utxo_page(s, search=some["outpoint"][:62])["rows"][0]["outpoint"].startswith(some["outpoint"][:62])
        assert ledger.utxo_page(s, search="%_%")["total"] == 0          # wildcards are text, not patterns


def test_bad_page_requests_are_refused(ledger_db):
    with ledger_db() as s:
        for kwargs, message in [({"sort": "colour"}, "sort by"), ({"limit": 0}, "limit"), ({"offset": -1}, "offset"),
                                ({"states": ["lost"]}, "state must be")]:
            with pytest.raises(CustodyError, match=message):
                ledger.utxo_page(s, **kwargs)


def test_value_distribution_counts_every_unspent_coin(ledger_db):
    with ledger_db() as s:
        buckets = ledger.value_distribution(s)
        unspent = [r for r in _everything(s) if r["state"] != "spent"]
        assert sum(b["count"] for b in buckets) == len(unspent)
        assert sum(b["value"] for b in buckets) == sum(r["value"] for r in unspent)
        for b in buckets:
            assert b["to"] == b["from"] * 10 - 1
        svg = charts.value_histogram(buckets)
        assert svg.startswith("<svg") and svg.count("<rect") == len(buckets) and "coins" in svg


def test_balance_chart_and_amount_formatting():
    assert charts.btc(150_000_000) == "1.50" and charts.btc(1) == "0.00000001" and charts.btc(-2_500_000_000) == "-25.00"
    assert charts.btc(2_100_000_000_000_000) == "21,000,000.00"
    svg = charts.balance_line([{"height": 101, "balance": 100_000_000}, {"height": 150, "balance": 300_000_000},
                               {"height": 200, "balance": 50_000_000}])
    assert svg.count("<circle") == 3 and "block 101" in svg and "block 200" in svg and "3.00" in svg
    assert "no data yet" in charts.balance_line([]) and "no data yet" in charts.value_histogram([])
    assert "&lt;script&gt;" in charts.balance_line([], title="<script>")      # titles are escaped


def test_a_rare_state_is_found_from_its_own_index(ledger_db, db_url):
    """With statistics (the service refreshes them at start and every ten minutes), SQLite answers a
    filter on frozen coins from their small partial index instead of scanning every unspent coin."""
    if not db_url.startswith("sqlite"):
        pytest.skip("PostgreSQL keeps its own statistics (autovacuum)")
    from sqlalchemy import text
    from custody.store.db import refresh_statistics
    from custody.ledger.coins import _ORDER, _state_condition
    refresh_statistics(ledger_db.kw["bind"])
    with ledger_db() as s:
        query = select(Utxo.id).where(_state_condition("frozen", TIP)).order_by(*_ORDER["height"]).limit(50)
        sql = str(query.compile(s.bind, compile_kwargs={"literal_binds": True}))
        plan = " ".join(row[-1] for row in s.execute(text("EXPLAIN QUERY PLAN " + sql)))
        assert "ix_utxos_frozen" in plan, plan
