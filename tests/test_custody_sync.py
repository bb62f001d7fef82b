"""The ledger kept in step with a real node, on SQLite and on PostgreSQL: funding by mining and by
spends, gap extension, reorgs that remove or replace a funding transaction, mempool, coinbase
maturity, freezing and labels."""
from __future__ import annotations

import pytest
from sqlalchemy import func, select

from custody.bitcoin.policies import build_policy
from custody.chain.node_client import NodeClient
from custody.errors import CustodyError
from custody.ledger import coins as ledger, registry
from custody.ledger.models import Address, Block, Utxo
from custody.ledger.sync import Syncer
from custody.store.db import open_database
from regtest.testwallet import TestWallet, Utxo as Coin

from .conftest import hd_keys, mine_coins, sign_multisig_spend
from .support import start_node

OTHER = TestWallet("someone else")


_seeds = iter(range(100, 250, 3))


@pytest.fixture(scope="module")
def coins(rpc, wallet):
    """Fifty-BTC coins mined before the first halving (regtest halves every 150 blocks)."""
    return mine_coins(rpc, wallet, 30)


@pytest.fixture
def ledger_db(db_url, rpc):
    """A ledger with one 2-of-3 policy whose keys no other test uses (they share one chain)."""
    sessions = open_database(db_url)
    with sessions.begin() as s:
        registry.create_policy(s, "treasury", build_policy("wsh-sortedmulti", 2, hd_keys(3, seed_base=next(_seeds))))
    return sessions, Syncer(sessions, rpc)


def address(sessions, index: int, branch: int = 0) -> str:
    with sessions() as s:
        policy = registry.get_policy(s, "treasury")
        row = s.scalar(select(Address).where(Address.policy_id == policy.id, Address.branch == branch,
                                             Address.index == index))
        return row.address


def balance(sessions) -> dict:
    with sessions() as s:
        return ledger.balances(s)[0].to_json()


def pay(rpc, wallet, coin: Coin, to: str, amount: int) -> str:
    spk = bytes.fromhex(rpc.validateaddress(to)["scriptPubKey"])
    return rpc.sendrawtransaction(wallet.sign([coin], [(spk, amount), (wallet.wpkh, coin.value - amount - 2_000)]))


def test_mined_coins_are_immature_then_confirmed(rpc, ledger_db, other_address):
    sessions, syncer = ledger_db
    syncer.sync_once()
    rpc.generatetoaddress(1, address(sessions, 0))
    syncer.sync_once()
    assert balance(sessions)["immature"] == 50 * 100_000_000 >> (rpc.getblockcount() // 150)
    rpc.generatetoaddress(98, other_address)
    syncer.sync_once()
    assert balance(sessions)["confirmed"] == 0            # 99 confirmations
    rpc.generatetoaddress(1, other_address)
    syncer.sync_once()
    b = balance(sessions)
    assert b["confirmed"] > 0 and b["immature"] == 0


def test_payments_unconfirmed_then_confirmed_with_history(rpc, wallet, coins, ledger_db, other_address):
    sessions, syncer = ledger_db
    syncer.sync_once()
    coin = coins.pop()
    txid = pay(rpc, wallet, coin, address(sessions, 3), 150_000_000)
    syncer.sync_once()
    assert balance(sessions)["unconfirmed"] == 150_000_000
    block = rpc.generatetoaddress(1, other_address)[0]
    syncer.sync_once()
    assert balance(sessions)["confirmed"] == 150_000_000
    with sessions() as s:
        policy = registry.get_policy(s, "treasury")
        history = ledger.history(s, policy)
        assert history[0]["txid"] == txid and history[0]["net"] == 150_000_000 and history[0]["confirmations"] == 1
        assert ledger.balance_history(s, policy)[-1]["balance"] == 150_000_000
        assert s.scalar(select(Block.hash).where(Block.height == rpc.getblockcount())) == block


def test_gap_extends_as_addresses_get_used(rpc, wallet, coins, ledger_db, other_address):
    sessions, syncer = ledger_db
    syncer.sync_once()
    first, second = coins.pop(), coins.pop()
    pay(rpc, wallet, first, address(sessions, 19), 10_000_000)     # last address of the first gap window
    rpc.generatetoaddress(1, other_address)
    syncer.sync_once()
    pay(rpc, wallet, second, address(sessions, 35), 20_000_000)     # only derived because 19 got used
    rpc.generatetoaddress(1, other_address)
    syncer.sync_once()
    assert balance(sessions)["confirmed"] == 30_000_000
    with sessions() as s:
        assert s.scalar(select(func.max(Address.index)).where(Address.branch == 0)) == 55


def test_spends_and_change_are_followed(rpc, wallet, coins, db_url, other_address):
    """A real 2-of-3 spend of a policy coin (signed with two of the test devices), paying out and
    returning change: the history shows both transactions, the coin is spent, the change arrives."""
    seed = next(_seeds)
    sessions = open_database(db_url)
    with sessions.begin() as s:
        registry.create_policy(s, "spender", build_policy("wsh-sortedmulti", 2, hd_keys(3, seed_base=seed)))
    syncer = Syncer(sessions, rpc)
    syncer.sync_once()
    with sessions() as s:
        policy = registry.get_policy(s, "spender")
        rows = {(a.branch, a.index): a.script_pubkey for a in s.scalars(select(Address).where(Address.policy_id == policy.id))}
    coin = coins.pop()
    deposit = rpc.sendrawtransaction(wallet.sign([coin], [(rows[(0, 4)], 80_000_000),
                                                         (wallet.wpkh, coin.value - 80_002_000)]))
    rpc.generatetoaddress(1, other_address)
    syncer.sync_once()
    spend = sign_multisig_spend([seed, seed + 1, seed + 2], [(deposit, 0, 80_000_000, 0, 4)],
                                [(OTHER.wpkh, 30_000_000), (rows[(1, 0)], 49_990_000)])
    spend_txid = rpc.sendrawtransaction(spend)
    syncer.sync_once()
    b = balance_of(sessions, "spender")
    assert b["unconfirmed"] == 49_990_000 and b["confirmed"] == 0          # the spent coin no longer counts
    rpc.generatetoaddress(1, other_address)
    syncer.sync_once()
    assert balance_of(sessions, "spender")["confirmed"] == 49_990_000
    with sessions() as s:
        policy = registry.get_policy(s, "spender")
        history = ledger.history(s, policy)
        assert [(h["txid"], h["received"], h["spent"]) for h in history] == [
            (spend_txid, 49_990_000, 80_000_000), (deposit, 80_000_000, 0)]
        spent = ledger.list_utxos(s, policy, include_spent=True)
        assert {u["state"] for u in spent} == {"spent", "confirmed"}
        assert [h["balance"] for h in ledger.balance_history(s, policy)] == [80_000_000, 49_990_000]


def balance_of(sessions, name: str) -> dict:
    with sessions() as s:
        return ledger.balances(s, registry.get_policy(s, name))[0].to_json()


def test_freeze_and_labels(rpc, wallet, coins, ledger_db, other_address):
    sessions, syncer = ledger_db
    syncer.sync_once()
    coin = coins.pop()
    txid = pay(rpc, wallet, coin, address(sessions, 0), 70_000_000)
    rpc.generatetoaddress(1, other_address)
    syncer.sync_once()
    outpoint = f"{txid}:0"
    with sessions.begin() as s:
        ledger.freeze(s, outpoint, "suspected dust attack")
    assert balance(sessions)["frozen"] == 70_000_000 and balance(sessions)["confirmed"] == 0
    with sessions.begin() as s, pytest.raises(CustodyError, match="not an outpoint"):
        ledger.freeze(s, "not-an-outpoint", "x")
    with sessions.begin() as s:
        ledger.unfreeze(s, outpoint)
    assert balance(sessions)["confirmed"] == 70_000_000
    jsonl = ('{"type":"tx","ref":"%s","label":"Invoice 42"}\n'
             '{"type":"output","ref":"%s","label":"cold reserve","spendable":false}\n'
             '{"type":"addr","ref":"%s","label":"Treasury #0"}\n') % (txid, outpoint, address(sessions, 0))
    with sessions.begin() as s:
        assert ledger.import_labels(s, jsonl) == 3
    with sessions() as s:
        exported = [line for line in ledger.export_labels(s).splitlines()]
        assert len(exported) == 3 and '"spendable": false' in exported[1]
        assert ledger.list_utxos(s, registry.get_policy(s, "treasury"))[0]["label"] == "cold reserve"
    with sessions.begin() as s, pytest.raises(CustodyError, match="line 2"):
        ledger.import_labels(s, '{"type":"tx","ref":"a","label":"ok"}\n{"type":"bogus","ref":"b"}\n')
    with sessions() as s:   # the bad file changed nothing
        assert len(ledger.export_labels(s).splitlines()) == 3


@pytest.mark.parametrize("replace_funding", [False, True])
def test_reorg_removes_or_replaces_a_funding_transaction(rpc, wallet, coins, ledger_db, tmp_path, replace_funding):
    sessions, syncer = ledger_db
    node_b = start_node(tmp_path / "b")
    rpc_b = NodeClient(node_b.url, cookie_file=node_b.cookie_file)
    try:
        coin = coins.pop()
        syncer.sync_once()
        for height in range(1, rpc.getblockcount() + 1):
            rpc_b.submitblock(rpc.getblock(rpc.getblockhash(height), 0))
        txid = pay(rpc, wallet, coin, address(sessions, 5), 40_000_000)
        rpc.generatetoaddress(1, wallet.address())
        syncer.sync_once()
        assert balance(sessions)["confirmed"] == 40_000_000
        if replace_funding:   # the branch that wins spends the same coin elsewhere
            rpc_b.sendrawtransaction(wallet.sign([coin], [(OTHER.wpkh, coin.value - 5_000)]))
        for block in rpc_b.generatetoaddress(2, TestWallet("miner b").address()):
            rpc.submitblock(rpc_b.getblock(block, 0))
        report = syncer.sync_once()
        assert report.blocks_rolled_back == 1 and report.blocks_applied == 2
        b = balance(sessions)
        if replace_funding:
            assert b["total"] == 0 and txid not in rpc.getrawmempool()
            with sessions() as s:
                assert s.scalar(select(func.count()).select_from(Utxo)) == 0
        else:
            assert b["confirmed"] == 0 and b["unconfirmed"] == 40_000_000   # back in the mempool
            rpc.generatetoaddress(1, wallet.address())
            syncer.sync_once()
            assert balance(sessions)["confirmed"] == 40_000_000
    finally:
        node_b.stop()


def test_a_policy_imported_later_is_discovered_with_scantxoutset(rpc, wallet, coins, db_url, other_address):
    keys = hd_keys(3, seed_base=next(_seeds))
    spec = build_policy("wsh-sortedmulti", 2, keys)
    target = spec.embit(0).derive(7).script_pubkey().data   # paid before the ledger knew the policy
    coin = coins.pop()
    rpc.sendrawtransaction(wallet.sign([coin], [(target, 12_345_678), (wallet.wpkh, coin.value - 12_347_678)]))
    rpc.generatetoaddress(1, other_address)
    sessions = open_database(db_url)
    with sessions.begin() as s:
        registry.create_policy(s, "late", spec)
    report = Syncer(sessions, rpc).sync_once()
    assert report.policies_discovered == 1
    with sessions() as s:
        assert ledger.balances(s)[0].confirmed == 12_345_678


def test_ten_thousand_derived_addresses(rpc, wallet, coins, db_url, other_address):
    sessions = open_database(db_url)
    spec = build_policy("wsh-sortedmulti", 2, hd_keys(3, seed_base=next(_seeds)))
    with sessions.begin() as s:
        registry.create_policy(s, "wide", spec, gap_limit=5_000)
        assert s.scalar(select(func.count()).select_from(Address)) == 10_000
    last = spec.embit(1).derive(4_999).script_pubkey().data
    coin = coins.pop()
    rpc.sendrawtransaction(wallet.sign([coin], [(last, 5_000_000), (wallet.wpkh, coin.value - 5_002_000)]))
    rpc.generatetoaddress(1, other_address)
    Syncer(sessions, rpc).sync_once()
    with sessions() as s:
        assert ledger.balances(s)[0].confirmed == 5_000_000
        assert s.scalar(select(func.count()).select_from(Address)) == 15_000   # change gap extended


def test_two_policies_paid_by_one_transaction_are_both_discovered(rpc, wallet, coins, db_url, other_address):
    first = build_policy("wsh-sortedmulti", 2, hd_keys(3, seed_base=next(_seeds)))
    second = build_policy("tr-sortedmulti_a", 2, hd_keys(3, seed_base=next(_seeds)))
    coin = coins.pop()
    outputs = [(first.embit(0).derive(0).script_pubkey().data, 1_000_000),
               (second.embit(0).derive(2).script_pubkey().data, 2_000_000)]
    rpc.sendrawtransaction(wallet.sign([coin], outputs + [(wallet.wpkh, coin.value - 3_002_000)]))
    rpc.generatetoaddress(1, other_address)
    sessions = open_database(db_url)
    with sessions.begin() as s:
        registry.create_policy(s, "first", first)
    Syncer(sessions, rpc).sync_once()
    with sessions.begin() as s:
        registry.create_policy(s, "second", second)
    Syncer(sessions, rpc).sync_once()
    with sessions() as s:
        assert [(b.policy, b.confirmed) for b in ledger.balances(s)] == [("first", 1_000_000), ("second", 2_000_000)]
