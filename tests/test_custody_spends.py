"""The spend lifecycle on a real node and database: request, approvals (default deny, limits,
allow-list, delay), PSBT with reserved coins, signatures from independent signers, broadcast,
confirmation, and the ledger following it."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from datetime import timedelta

import pytest
from embit import bip32
from embit.networks import NETWORKS
from embit.psbt import PSBT
from embit.script import Script

from custody.bitcoin.policies import build_policy
from custody.chain.node_client import NodeClient
from custody.errors import CustodyError
from custody.eventlog.models import EventLogEntry
from custody.ledger import coins as ledger, registry
from custody.ledger.models import Utxo
from custody.ledger.sync import Syncer
from custody.spending import spends
from custody.store.db import open_database
from custody_signer import protocol as approvals_protocol
from regtest.launcher import start_node
from regtest.testwallet import TestWallet
from sqlalchemy import func, select

from . import officers
from .conftest import fund_policy, hd_keys, mine_coins

OTHER = TestWallet("payee")
_seeds = iter(range(1000, 1300, 3))


NODE = {}       # the node the vault fixture uses: requests make their transactions on it


def device(n: int) -> bip32.HDKey:
    return bip32.HDKey.from_seed(hashlib.sha256(f"test device {n}".encode()).digest(),
                                 version=NETWORKS["regtest"]["xprv"])


@pytest.fixture(scope="module")
def coins(rpc, wallet):
    return mine_coins(rpc, wallet, 70)


@pytest.fixture
def vault(db_url, rpc, wallet, coins, other_address):
    """An active 2-of-3 policy holding three coins (1, 2 and 3 BTC), synced, with a 2-officer rule."""
    NODE["rpc"] = rpc
    seed = next(_seeds)
    sessions = open_database(db_url)
    spec = build_policy("wsh-sortedmulti", 2, hd_keys(3, seed_base=seed))
    with sessions.begin() as s:
        policy = registry.create_policy(s, "vault", spec)
        registry.set_status(s, policy, "active")
        spends.set_approval_rule(s, policy, required_approvals=2)
    fund_policy(rpc, wallet, coins.pop(), spec, other_address)
    syncer = Syncer(sessions, rpc)
    syncer.sync_once()
    return sessions, syncer, seed


def request(sessions, amount=50_000_000, requester="ray", **kw):
    """A request with its unsigned transaction made (its coins reserved), as the service makes one."""
    with sessions.begin() as s:
        return spends.request_spend(s, registry.get_policy(s, "vault"), requester, [(OTHER.address(), amount)],
                                    fee_rate=kw.pop("fee_rate", 3.0), client=kw.pop("client", NODE["rpc"]), **kw).id


def decide(sessions, spend_id, officer, approve=True):
    """`officer` approves with a signature by their own key over the transaction, or rejects."""
    with sessions.begin() as s:
        spend = spends.get_spend(s, spend_id)
        return (officers.approve(s, spend, officer) if approve else spends.decide(s, spend, officer, False)).state


def sign_as(sessions, spend_id, n) -> list[str]:
    with sessions() as s:
        psbt = PSBT.from_string(spends.get_spend(s, spend_id).psbt)
    psbt.sign_with(device(n))
    with sessions.begin() as s:
        return spends.add_signatures(s, spends.get_spend(s, spend_id), psbt.serialize())


def test_full_lifecycle(rpc, vault, other_address):
    sessions, syncer, seed = vault
    spend_id = request(sessions, memo="supplier invoice 42")
    with sessions() as s:
        assert ledger.balances(s)[0].reserved > 0           # its coins are reserved with the request
    assert decide(sessions, spend_id, "olga") == "requested"
    assert decide(sessions, spend_id, "omar") == "signing"   # no delay: straight to the signers
    with sessions() as s:
        spend = spends.get_spend(s, spend_id)
        assert spend.fee > 0
        # both officers' approvals travel in the PSBT for the devices to verify
        carried = approvals_protocol.approvals_in(PSBT.from_string(spend.psbt).unknown)
        assert sorted(a.key.hex() for a in carried) == sorted(officers.public_hex(n) for n in ("olga", "omar"))
    assert sign_as(sessions, spend_id, seed + 2) == [device(seed + 2).my_fingerprint.hex()]
    assert sign_as(sessions, spend_id, seed + 2) == []           # the same upload again changes nothing
    sign_as(sessions, spend_id, seed)
    with sessions() as s:
        assert spends.get_spend(s, spend_id).state == "signed"
    txid = spends.broadcast(sessions, spend_id, rpc)
    assert txid in rpc.getrawmempool()
    rpc.generatetoaddress(1, other_address)
    with sessions.begin() as s:
        spend = spends.track(s, spends.get_spend(s, spend_id), rpc)
        assert spend.state == "confirmed"
        summary = spends.summary(s, spend)
        assert [a["officer"] for a in summary["approvals"]] == ["olga", "omar"] and len(summary["signed_by"]) == 2
    syncer.sync_once()
    with sessions() as s:
        b = ledger.balances(s)[0]
        assert b.reserved == 0 and b.total == 600_000_000 - 50_000_000 - summary["fee"]
        from custody.eventlog import log as eventlog
        from custody.eventlog.models import EventLogEntry
        assert eventlog.verify(s, {eventlog.coordinator_key().public_hex}).ok
        events = [(e.kind, e.actor) for e in s.scalars(select(EventLogEntry).where(
            EventLogEntry.subject == f"spend:{spend_id}").order_by(EventLogEntry.seq))]
        assert [k for k, _ in events] == ["spend.requested", "psbt.created", "spend.approved", "spend.approved",
                                          "spend.signing", "psbt.signed", "psbt.signed", "spend.broadcasting",
                                          "spend.broadcast", "spend.confirmed"]
        assert events[0][1] == "ray" and events[2][1] == "olga" and events[3][1] == "omar"


def test_requester_cannot_approve_and_officers_decide_once(vault):
    sessions, _, _ = vault
    spend_id = request(sessions)
    with pytest.raises(CustodyError, match="requester cannot approve"):
        decide(sessions, spend_id, "ray")
    decide(sessions, spend_id, "olga")
    with pytest.raises(CustodyError, match="already decided"):
        decide(sessions, spend_id, "olga")
    assert decide(sessions, spend_id, "omar", approve=False) == "rejected"


def test_default_deny_without_a_rule(db_url, rpc):
    sessions = open_database(db_url)
    with sessions.begin() as s:
        policy = registry.create_policy(s, "norule", build_policy("wsh-sortedmulti", 2, hd_keys(3, seed_base=next(_seeds))))
        registry.set_status(s, policy, "active")
        spend = spends.request_spend(s, policy, "ray", [(OTHER.address(), 1000)], fee_rate=2)
        with pytest.raises(CustodyError, match="default deny"):
            spends.decide(s, spend, "olga", True)


@pytest.mark.parametrize("rule, amount, message", [
    ({"per_request_limit": 10_000_000}, 50_000_000, "per-request limit"),
    ({"daily_limit": 60_000_000}, 50_000_000, "daily limit"),
    ({"allow_list": [TestWallet("elsewhere").address()]}, 50_000_000, "allow-list"),
])
def test_rule_limits(vault, rule, amount, message):
    sessions, _, _ = vault
    with sessions.begin() as s:
        spends.set_approval_rule(s, registry.get_policy(s, "vault"), required_approvals=2, **rule)
    if "daily_limit" in rule:   # a first approved spend uses most of the day's allowance
        first = request(sessions, amount)
        decide(sessions, first, "olga")
        assert decide(sessions, first, "omar") == "signing"
    spend_id = request(sessions, amount)
    decide(sessions, spend_id, "olga")
    with pytest.raises(CustodyError, match=message):
        decide(sessions, spend_id, "omar")
    with sessions() as s:
        assert spends.get_spend(s, spend_id).state == "requested"   # the refused decision left nothing


def _backdate(sessions, spend_id, hours, *, approvals=False):
    from custody.spending.models import Approval, Spend
    from sqlalchemy import update
    moment = spends._now() - timedelta(hours=hours)
    with sessions.begin() as s:
        s.execute(update(Spend).where(Spend.id == spend_id).values(created_at=moment))
        if approvals:
            s.execute(update(Approval).where(Approval.spend_id == spend_id).values(at=moment))


def test_the_daily_limit_counts_approvals_of_old_requests(vault):
    """A request that waited more than a day is still money leaving today: with 0.6 BTC a day, a
    0.5 BTC request from yesterday approved now leaves no room for another 0.5 BTC."""
    sessions, _, _ = vault
    with sessions.begin() as s:
        spends.set_approval_rule(s, registry.get_policy(s, "vault"), required_approvals=2, daily_limit=60_000_000)
    old = request(sessions, 50_000_000)
    _backdate(sessions, old, 25)
    decide(sessions, old, "olga")
    assert decide(sessions, old, "omar") == "signing"
    today = request(sessions, 50_000_000)
    decide(sessions, today, "olga")
    with pytest.raises(CustodyError, match="daily limit"):
        decide(sessions, today, "omar")


def test_the_daily_limit_counts_an_approved_spend_not_yet_sent_however_old(vault):
    sessions, _, _ = vault
    with sessions.begin() as s:
        spends.set_approval_rule(s, registry.get_policy(s, "vault"), required_approvals=2, daily_limit=60_000_000)
    waiting = request(sessions, 50_000_000)
    decide(sessions, waiting, "olga")
    assert decide(sessions, waiting, "omar") == "signing"
    _backdate(sessions, waiting, 30, approvals=True)      # approved 30 h ago, still not signed: it may go any time
    now = request(sessions, 50_000_000)
    decide(sessions, now, "olga")
    with pytest.raises(CustodyError, match="daily limit"):
        decide(sessions, now, "omar")


def test_large_spend_waits_for_its_delay(vault, rpc):
    sessions, _, _ = vault
    with sessions.begin() as s:
        spends.set_approval_rule(s, registry.get_policy(s, "vault"), required_approvals=2,
                                 delay_threshold=40_000_000, delay_seconds=3600)
    spend_id = request(sessions, 50_000_000)
    decide(sessions, spend_id, "olga")
    decide(sessions, spend_id, "omar")
    with sessions.begin() as s, pytest.raises(CustodyError, match="signable after"):
        spends.open_signing(s, spends.get_spend(s, spend_id))
    with sessions.begin() as s:   # an hour later
        spend = spends.get_spend(s, spend_id)
        spend.signable_after = spend.signable_after - timedelta(hours=2)
    with sessions.begin() as s:
        assert spends.open_signing(s, spends.get_spend(s, spend_id)).state == "signing"


def test_reserved_and_frozen_coins_are_never_chosen(vault, rpc):
    sessions, _, _ = vault
    with sessions() as s:
        utxos = ledger.list_utxos(s, registry.get_policy(s, "vault"))
    biggest = max(utxos, key=lambda u: u["value"])["outpoint"]
    with sessions.begin() as s:
        ledger.freeze(s, biggest, "legal hold")
    first = request(sessions, 250_000_000)       # needs both remaining coins (1 + 2 BTC), reserved by the request
    with sessions() as s:
        spend = spends.get_spend(s, first)
        used = {f"{i.txid.hex()}:{i.vout}" for i in PSBT.from_string(spend.psbt).tx.vin}
    assert biggest not in used
    with pytest.raises(CustodyError, match="no spendable coins"):   # all reserved or frozen
        request(sessions, 10_000_000)
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(spends.Spend)) == 1   # the refused request left nothing
    with sessions.begin() as s:
        spends.cancel(s, spends.get_spend(s, first))          # releases its coins
    second = request(sessions, 10_000_000)
    decide(sessions, second, "olga")
    assert decide(sessions, second, "omar") == "signing"


def test_tampered_upload_leaves_the_stored_psbt(vault, rpc):
    sessions, _, seed = vault
    spend_id = request(sessions)
    decide(sessions, spend_id, "olga")
    decide(sessions, spend_id, "omar")
    with sessions.begin() as s:
        stored = spends.open_signing(s, spends.get_spend(s, spend_id)).psbt
    psbt = PSBT.from_string(stored)
    psbt.outputs[0].script_pubkey = Script(TestWallet("thief").wpkh)
    psbt.sign_with(device(seed))
    with sessions.begin() as s, pytest.raises(CustodyError, match="different transaction"):
        spends.add_signatures(s, spends.get_spend(s, spend_id), psbt.to_string())
    with sessions() as s:
        assert spends.get_spend(s, spend_id).psbt == stored


@pytest.mark.parametrize("destination, fee_rate, message", [
    ("bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4", 2.0, "not a regtest address"),
    ("nonsense", 2.0, "not a valid address"),
    (None, 0.5, "outside"),
    (None, 5_000.0, "outside"),
])
def test_bad_requests_are_refused(vault, destination, fee_rate, message):
    sessions, _, _ = vault
    with sessions.begin() as s, pytest.raises(CustodyError, match=message):
        spends.request_spend(s, registry.get_policy(s, "vault"), "ray", [(destination or OTHER.address(), 1000)],
                             fee_rate=fee_rate)


def test_amounts_parse_exactly():
    assert spends.parse_amount("0.1") == 10_000_000
    assert spends.parse_amount("1.23456789btc") == 123_456_789
    assert spends.parse_amount("5000sat") == 5000
    for bad in ("0.000000001", "-1", "abc", "0"):
        with pytest.raises(CustodyError):
            spends.parse_amount(bad)


def _signed(sessions, rpc, seed, amount=50_000_000) -> int:
    spend_id = request(sessions, amount, fee_rate=1.0)
    decide(sessions, spend_id, "olga")
    decide(sessions, spend_id, "omar")
    with sessions.begin() as s:
        spends.open_signing(s, spends.get_spend(s, spend_id))
    sign_as(sessions, spend_id, seed)
    sign_as(sessions, spend_id, seed + 1)
    return spend_id


def _approved_and_broadcast(sessions, rpc, seed, amount=50_000_000) -> int:
    spend_id = _signed(sessions, rpc, seed, amount)
    spends.broadcast(sessions, spend_id, rpc)
    return spend_id


@pytest.mark.parametrize("cancel", [False, True])
def test_rbf_bump_and_cancel(vault, rpc, other_address, cancel):
    sessions, syncer, seed = vault
    spend_id = _approved_and_broadcast(sessions, rpc, seed)
    with sessions() as s:
        first_txid, first_fee = spends.get_spend(s, spend_id).txid, spends.get_spend(s, spend_id).fee
    with sessions.begin() as s, pytest.raises(CustodyError, match="must be above"):
        spends.bump_fee(s, spends.get_spend(s, spend_id), rpc, 0.5)
    with sessions.begin() as s:
        spend = spends.bump_fee(s, spends.get_spend(s, spend_id), rpc, 5.0, cancel=cancel)
        # another transaction: the officers approve it again before anyone signs it
        assert spend.state == "requested" and spend.fee > first_fee
        assert spends.summary(s, spend)["signed_by"] == [] and spends.summary(s, spend)["approvals"] == []
    decide(sessions, spend_id, "olga")
    assert decide(sessions, spend_id, "omar") == "signing"
    sign_as(sessions, spend_id, seed + 1)
    sign_as(sessions, spend_id, seed + 2)
    new_txid = spends.broadcast(sessions, spend_id, rpc)
    mempool = rpc.getrawmempool()
    assert new_txid in mempool and first_txid not in mempool
    rpc.generatetoaddress(1, other_address)
    with sessions.begin() as s:
        spend = spends.track(s, spends.get_spend(s, spend_id), rpc)
        assert spend.state == "confirmed" and spends.summary(s, spend)["replaced_txids"] == [first_txid]
    syncer.sync_once()
    with sessions() as s:
        total = ledger.balances(s)[0].total
    assert total == 600_000_000 - spend.fee - (0 if cancel else 50_000_000)


def test_a_double_spend_conflicts_only_once_mined(vault, rpc, wallet, other_address):
    """Someone else's double-spend of the same coins (here: a bump signed outside this spend's
    record): while it is only in the mempool the spend stays broadcast with its coins reserved (it may
    still be mined instead); once the rival is in a block of the best chain the spend is conflicted and
    its coins are released."""
    sessions, syncer, seed = vault
    spend_id = _approved_and_broadcast(sessions, rpc, seed)
    with sessions() as s:
        stored = PSBT.from_string(spends.get_spend(s, spend_id).psbt)
    from custody.bitcoin.signatures import finalize
    from custody.bitcoin.psbt_builder import Coin, build_spend
    with sessions() as s:
        policy = registry.get_policy(s, "vault")
        spec = registry.spec_of(policy)
    coins = [Coin(sc.txid.hex(), sc.vout, sc.witness_utxo.value, 0, 0, sc.witness_utxo.script_pubkey.data)
             for sc in stored.inputs]
    # rebuild the same inputs to another destination at a higher fee, sign it with two devices
    derivations = [next(iter(sc.bip32_derivations.values())).derivation for sc in stored.inputs]
    coins = [Coin(c.txid, c.vout, c.value, d[-2], d[-1], c.script_pubkey) for c, d in zip(coins, derivations)]
    rival = build_spend(spec, coins, [(OTHER.wpkh, 1)], fee_rate=20, change=None,
                        previous_txs={sc.txid.hex(): sc.non_witness_utxo.serialize() for sc in stored.inputs},
                        locktime=rpc.getblockcount(), select=False, sweep=True).psbt
    rival.sign_with(device(seed + 2))
    rival.sign_with(device(seed + 1))
    rpc.sendrawtransaction(finalize(rival, 2).hex())
    with sessions.begin() as s:
        assert spends.track(s, spends.get_spend(s, spend_id), rpc).state == "broadcast"
        assert s.scalar(select(func.count()).select_from(Utxo).where(Utxo.reserved_by == f"spend:{spend_id}")) \
            == len(stored.inputs)
    rpc.generatetoaddress(1, other_address)
    syncer.sync_once()
    with sessions.begin() as s:
        assert spends.track(s, spends.get_spend(s, spend_id), rpc).state == "conflicted"
        assert s.scalar(select(func.count()).select_from(Utxo).where(Utxo.reserved_by == f"spend:{spend_id}")) == 0
        kinds = [e.kind for e in s.scalars(select(EventLogEntry).where(EventLogEntry.subject == f"spend:{spend_id}"))]
        assert kinds[-1] == "spend.conflicted"


def test_cpfp_child_pays_for_a_stuck_parent(vault, rpc, other_address):
    sessions, syncer, seed = vault
    spend_id = _approved_and_broadcast(sessions, rpc, seed)        # at 1 sat/vB
    with sessions.begin() as s:
        child = spends.cpfp(s, spends.get_spend(s, spend_id), rpc, 20.0, "dana")
        child_id = child.id
        assert child.state == "signing" and child.amount == 0
    sign_as(sessions, child_id, seed)
    sign_as(sessions, child_id, seed + 2)
    child_txid = spends.broadcast(sessions, child_id, rpc)
    with sessions() as s:
        parent_txid = spends.get_spend(s, spend_id).txid
    package = rpc.getmempoolentry(child_txid)
    rate = (package["fees"]["ancestor"] * 100_000_000) / package["ancestorsize"]
    assert package["ancestorcount"] == 2 and 19.5 <= rate <= 21
    block = rpc.getblock(rpc.generatetoaddress(1, other_address)[0])
    assert parent_txid in block["tx"] and child_txid in block["tx"]
    with sessions.begin() as s, pytest.raises(CustodyError, match="no unconfirmed change|confirmed"):
        spends.track(s, spends.get_spend(s, spend_id), rpc)
        spends.cpfp(s, spends.get_spend(s, spend_id), rpc, 30.0, "dana")


def test_sweep_of_chosen_coins(vault, rpc, other_address):
    sessions, syncer, seed = vault
    with sessions() as s:
        coins = [u["outpoint"] for u in ledger.list_utxos(s, registry.get_policy(s, "vault"))][:2]
    with sessions.begin() as s:
        spend = spends.request_spend(s, registry.get_policy(s, "vault"), "ray", [(OTHER.address(), 0)],
                                     fee_rate=2.0, coins=coins, sweep=True, client=rpc)
        spend_id, swept = spend.id, spend.amount
    decide(sessions, spend_id, "olga")
    decide(sessions, spend_id, "omar")
    with sessions.begin() as s:
        spend = spends.open_signing(s, spends.get_spend(s, spend_id))
        tx = PSBT.from_string(spend.psbt).tx
        assert len(tx.vin) == 2 and len(tx.vout) == 1 and tx.vout[0].value == swept - spend.fee


# -- money moves exactly once: kills, drops and reorganisations (issue 15) ----------------------------------
def _cli(node, db_url, *args, kill_at=None):
    env = {**os.environ, "CUSTODY_DB": db_url, "CUSTODY_NODE": node.url, "CUSTODY_NODE_COOKIE": str(node.cookie_file)}
    env.pop("CUSTODY_KILL_AT", None)
    if kill_at:
        env["CUSTODY_KILL_AT"] = kill_at
    return subprocess.run([sys.executable, "-m", "coordinator.cli.main", "--json", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def _payments_to_payee(rpc, block_hash) -> int:
    return sum(1 for tx in rpc.getblock(block_hash, 2)["tx"] for out in tx["vout"]
               if out["scriptPubKey"].get("address") == OTHER.address())


@pytest.mark.parametrize("marker, recovery", [("broadcast.committed", "track"), ("broadcast.committed", "broadcast"),
                                              ("broadcast.sent", "track"), ("broadcast.sent", "broadcast")])
def test_a_broadcast_killed_at_a_marker_pays_exactly_once(vault, node, db_url, rpc, other_address, marker, recovery):
    """`custody spend broadcast` SIGKILLed after the txid is committed (nothing sent yet) or after the
    node accepted the transaction (nothing recorded yet): the spend is 'broadcasting' with its txid, it
    cannot be cancelled, and the watcher's tracking or a second broadcast finishes it: one payment."""
    sessions, syncer, seed = vault
    spend_id = _signed(sessions, rpc, seed)
    killed = _cli(node, db_url, "spend", "broadcast", str(spend_id), kill_at=marker)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    with sessions() as s:
        spend = spends.get_spend(s, spend_id)
        assert spend.state == "broadcasting" and spend.txid
        txid = spend.txid
    assert (txid in rpc.getrawmempool()) == (marker == "broadcast.sent")
    with sessions.begin() as s, pytest.raises(CustodyError, match="can no longer be cancelled"):
        spends.cancel(s, spends.get_spend(s, spend_id))
    if recovery == "track":
        with sessions.begin() as s:
            assert spends.track(s, spends.get_spend(s, spend_id), rpc).state == "broadcast"
    else:
        again = _cli(node, db_url, "spend", "broadcast", str(spend_id))
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["state"] == "broadcast" and json.loads(again.stdout)["txid"] == txid
    assert rpc.getrawmempool().count(txid) == 1
    block = rpc.generatetoaddress(1, other_address)[0]
    with sessions.begin() as s:
        assert spends.track(s, spends.get_spend(s, spend_id), rpc).state == "confirmed"
    assert txid in rpc.getblock(block)["tx"] and _payments_to_payee(rpc, block) == 1
    with sessions() as s:
        kinds = [e.kind for e in s.scalars(select(EventLogEntry).where(EventLogEntry.subject == f"spend:{spend_id}"))]
    assert kinds.count("spend.broadcasting") == 1 and kinds.count("spend.broadcast") == 1


def test_a_second_broadcast_of_a_broadcast_spend_is_logged_once(vault, rpc):
    sessions, syncer, seed = vault
    spend_id = _signed(sessions, rpc, seed)
    first = spends.broadcast(sessions, spend_id, rpc)
    assert spends.broadcast(sessions, spend_id, rpc) == first
    with sessions() as s:
        kinds = [e.kind for e in s.scalars(select(EventLogEntry).where(EventLogEntry.subject == f"spend:{spend_id}"))]
    assert kinds.count("spend.broadcasting") == 1 and kinds.count("spend.broadcast") == 1


def test_a_spend_dropped_from_the_mempool_keeps_its_coins_and_is_sent_again(vault, node, rpc, other_address, tmp_path):
    """The node restarts without its mempool: the spend's transaction is gone but still valid. It is not
    'replaced': its coins stay reserved, tracking sends it again, and it confirms."""
    sessions, syncer, seed = vault
    spend_id = _approved_and_broadcast(sessions, rpc, seed)
    with sessions() as s:
        txid = spends.get_spend(s, spend_id).txid
    (node.datadir / "regtest" / "mempool.dat").unlink(missing_ok=True)
    node.stop()
    (node.datadir / "regtest" / "mempool.dat").unlink(missing_ok=True)   # restarted without its mempool
    restarted = start_node(node.datadir, port=node.port)
    node.process = restarted.process
    assert txid not in rpc.getrawmempool()
    with sessions.begin() as s:
        spend = spends.track(s, spends.get_spend(s, spend_id), rpc)
        assert spend.state == "broadcast"
        assert s.scalar(select(func.count()).select_from(Utxo).where(Utxo.reserved_by == f"spend:{spend_id}")) > 0
    assert txid in rpc.getrawmempool()
    rpc.generatetoaddress(1, other_address)
    with sessions.begin() as s:
        assert spends.track(s, spends.get_spend(s, spend_id), rpc).state == "confirmed"


def _longer_branch(rpc, tmp_path, blocks: int, raw_txs=()) -> None:
    """A second node copies the chain up to the tip's parent, mines `blocks` blocks there (the first
    with `raw_txs`), and the branch is handed to `rpc`'s node: a reorganisation of the tip."""
    other = start_node(tmp_path / "branch")
    try:
        rpc_b = NodeClient(other.url, cookie_file=other.cookie_file)
        for height in range(1, rpc.getblockcount()):
            rpc_b.submitblock(rpc.getblock(rpc.getblockhash(height), 0))
        for raw in raw_txs:
            rpc_b.sendrawtransaction(raw)
        for block_hash in rpc_b.generatetoaddress(blocks, TestWallet("branch miner").address()):
            assert rpc.submitblock(rpc_b.getblock(block_hash, 0)) in (None, "inconclusive")
    finally:
        other.stop()


def test_a_reorganisation_unconfirms_then_reconfirms_a_spend(vault, rpc, node, other_address, tmp_path):
    sessions, syncer, seed = vault
    spend_id = _approved_and_broadcast(sessions, rpc, seed)
    rpc.generatetoaddress(1, other_address)
    syncer.sync_once()
    with sessions.begin() as s:
        spend = spends.track(s, spends.get_spend(s, spend_id), rpc)
        assert spend.state == "confirmed" and spend.confirmed_height == rpc.getblockcount()
    _longer_branch(rpc, tmp_path, 2)                          # its block is gone; the node re-adds it to its mempool
    syncer.sync_once()
    inputs = len(PSBT.from_string(spends.get_spend(sessions(), spend_id).psbt).inputs)
    with sessions() as s:       # before anyone tracks it, its coins are not free for another spend
        assert s.scalar(select(func.count()).select_from(Utxo).where(Utxo.reserved_by == f"spend:{spend_id}")) == inputs
    with sessions.begin() as s:
        spend = spends.track(s, spends.get_spend(s, spend_id), rpc)
        assert spend.state == "broadcast" and spend.confirmed_height is None
        assert s.scalar(select(func.count()).select_from(Utxo).where(Utxo.reserved_by == f"spend:{spend_id}")) == inputs
    rpc.generatetoaddress(1, other_address)
    with sessions.begin() as s:
        spend = spends.track(s, spends.get_spend(s, spend_id), rpc)
        assert spend.state == "confirmed" and spend.confirmed_height == rpc.getblockcount()
        kinds = [e.kind for e in s.scalars(select(EventLogEntry).where(EventLogEntry.subject == f"spend:{spend_id}"))]
    assert kinds[-3:] == ["spend.confirmed", "spend.unconfirmed", "spend.confirmed"]
    # the console's timeline says what happened
    from fastapi.testclient import TestClient
    from coordinator.app import create_app, node_factory
    from coordinator import accounts
    with sessions.begin() as s:
        token, _ = accounts.create_token(s, accounts.create_user(s, "vera", "viewer", "correct horse battery")[0], "t")
    app = create_app(sessions, node_factory(node.url, cookie_file=node.cookie_file), sync_interval=0)
    with TestClient(app) as client:
        page = client.get(f"/spends/{spend_id}/timeline", headers={"authorization": f"Bearer {token}"})
    assert page.status_code == 200 and "left the best chain (reorganisation)" in page.text


def test_a_reorganisation_that_double_spends_a_confirmed_spend_makes_it_conflicted(vault, rpc, other_address,
                                                                                   tmp_path):
    """The branch that wins spends the same coins elsewhere: the spend was 'confirmed'; after the
    reorganisation it is 'conflicted', its coins released, and the ledger shows no payment."""
    sessions, syncer, seed = vault
    spend_id = _approved_and_broadcast(sessions, rpc, seed)
    with sessions() as s:
        stored = PSBT.from_string(spends.get_spend(s, spend_id).psbt)
        spec = registry.spec_of(registry.get_policy(s, "vault"))
    from custody.bitcoin.psbt_builder import Coin, build_spend
    from custody.bitcoin.signatures import finalize
    derivations = [next(iter(sc.bip32_derivations.values())).derivation for sc in stored.inputs]
    coins = [Coin(sc.txid.hex(), sc.vout, sc.witness_utxo.value, d[-2], d[-1], sc.witness_utxo.script_pubkey.data)
             for sc, d in zip(stored.inputs, derivations)]
    rival = build_spend(spec, coins, [(TestWallet("thief").wpkh, 1)], fee_rate=20, change=None,
                        previous_txs={sc.txid.hex(): sc.non_witness_utxo.serialize() for sc in stored.inputs},
                        locktime=rpc.getblockcount(), select=False, sweep=True).psbt
    rival.sign_with(device(seed + 2))
    rival.sign_with(device(seed + 1))
    rpc.generatetoaddress(1, other_address)
    syncer.sync_once()
    with sessions.begin() as s:
        assert spends.track(s, spends.get_spend(s, spend_id), rpc).state == "confirmed"
    _longer_branch(rpc, tmp_path, 2, [finalize(rival, 2).hex()])
    syncer.sync_once()
    with sessions.begin() as s:
        spend = spends.track(s, spends.get_spend(s, spend_id), rpc)
        assert spend.state == "conflicted" and spend.confirmed_height is None
        assert s.scalar(select(func.count()).select_from(Utxo).where(Utxo.reserved_by == f"spend:{spend_id}")) == 0
        kinds = [e.kind for e in s.scalars(select(EventLogEntry).where(EventLogEntry.subject == f"spend:{spend_id}"))]
    assert kinds[-1] == "spend.conflicted"
