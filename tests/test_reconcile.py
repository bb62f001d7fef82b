"""Reconciliation on the embedded node: one scenario per discrepancy category of the reference note, each
triggered by what a pool, the fleet or the chain would really do, and an honest account that raises none."""
from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from fractions import Fraction
from types import SimpleNamespace

import pytest
from embit import bip32
from embit.networks import NETWORKS
from embit.script import p2pkh, Script, Witness
from embit.transaction import SIGHASH, Transaction, TransactionInput, TransactionOutput

from custody.bitcoin.policies import build_policy
from custody.chain.node_client import NodeAuthError, NodeUnreachable, RPCError
from custody.ledger import registry
from custody.ledger.sync import Syncer
from custody.mining import expected, reconcile, statements, telemetry
from custody.mining.models import Discrepancy, MiningDevice, Pool, PoolAccount, TelemetrySample
from custody.store.db import open_database
from regtest.descriptors import add_checksum
from regtest.testwallet import TestWallet

from .conftest import hd_keys, mine_coins

FLEET_SEED = 95
MINER = TestWallet("reconcile miner").address()
OUTSIDER = TestWallet("outsider")
TODAY = datetime.now(timezone.utc).date()
D0, D1, D2 = ((TODAY - timedelta(days=n)).isoformat() for n in (2, 1, 0))
TOLERANCES = reconcile.Tolerances(telemetry_max_gap=timedelta(minutes=30))
RATE = Decimal("0.00000001")                 # difficulty accepted per 10 minutes per rig (regtest D is ~5e-10)


def fleet_key(index: int):
    root = bip32.HDKey.from_seed(hashlib.sha256(f"test device {FLEET_SEED}".encode()).digest(),
                                 version=NETWORKS["regtest"]["xprv"])
    return root.derive(f"m/48h/1h/0h/2h/0/{index}").key


def samples(session, worker: str, device, *, skip=(), rate=RATE):
    start = datetime.combine(TODAY, datetime.min.time(), tzinfo=timezone.utc)
    for n in range(0, 24 * 6 + 1):
        if n in skip:
            continue
        session.add(TelemetrySample(device_id=device.id if device else None, worker=worker,
                                    time=start + timedelta(minutes=10 * n), difficulty_accepted=rate * n,
                                    source="file"))


def csv(rows: list[tuple]) -> str:
    head = "kind,day,key,amount_sats,fee_sats,txid,address,hashrate,fpps_rate_percent,is_generation_txn,status\n"
    return head + "".join(",".join("" if v is None else str(v) for v in row) + "\n" for row in rows)


@pytest.fixture(scope="module")
def world(rpc, wallet, tmp_path_factory):
    sessions = open_database(f"sqlite:///{tmp_path_factory.mktemp('reconcile')}/db.sqlite")
    fleet_spec = build_policy("wpkh", 1, hd_keys(1, seed_base=FLEET_SEED))
    with sessions.begin() as s:
        for name, spec in (("fleet", fleet_spec), ("custody", build_policy("wsh-sortedmulti", 2, hd_keys(3, seed_base=85)))):
            registry.set_status(s, registry.create_policy(s, name, spec, gap_limit=20), "active", actor="admin")
    addr = [fleet_spec.embit(0).derive(i).address(NETWORKS["regtest"]) for i in range(10)]
    spk = [fleet_spec.embit(0).derive(i).script_pubkey().data for i in range(10)]
    funding = mine_coins(rpc, wallet, 1)[0]
    Syncer(sessions, rpc).sync_once()            # the ledger follows the chain from here
    pays = [(spk[0], 250_000), (spk[1], 77_000), (spk[2], 500), (spk[4], 90_000), (spk[5], 120_000)]
    txid = rpc.sendrawtransaction(wallet.sign([funding], pays + [(wallet.wpkh, funding.value - 537_500 - 20_000)]))
    rpc.generatetoaddress(1, MINER)
    # someone with the fleet's hot key spends receive 4 to an outside address (not through a sweep)
    tx = Transaction(version=2, vin=[TransactionInput(bytes.fromhex(txid), 3)],
                     vout=[TransactionOutput(89_000, Script(OUTSIDER.wpkh))])
    key = fleet_key(4)
    digest = tx.sighash_segwit(0, p2pkh(key.get_public_key()), 90_000, SIGHASH.ALL)
    tx.vin[0].witness = Witness([key.sign(digest).serialize() + b"\x01", key.get_public_key().sec()])
    stolen = rpc.sendrawtransaction(tx.serialize().hex())
    rpc.generatetoaddress(150, MINER)            # the pool payouts are now long overdue for a sweep
    coinbase_block = rpc.generatetoaddress(1, addr[3])[0]        # a coinbase payout, still immature
    coinbase = rpc.getblock(coinbase_block, 2)["tx"][0]
    rpc.generatetoaddress(1, MINER)
    Syncer(sessions, rpc).sync_once()
    with sessions.begin() as s:
        fleet = registry.get_policy(s, "fleet")
        pool = Pool(name="Foundry", kind="foundry")
        tides = Pool(name="Ocean", kind="ocean")
        s.add_all([pool, tides])
        s.flush()
        account = PoolAccount(pool_id=pool.id, name="main", scheme="FPPS", pool_fee_bps=200, fee_method="foundry",
                              payout_threshold=100_000, schedule="daily", payout_addresses=json.dumps(addr[:6]),
                              fleet_policy_id=fleet.id)
        lucky = PoolAccount(pool_id=tides.id, name="tides", scheme="TIDES", pool_fee_bps=200, fee_method="average",
                            payout_threshold=0, schedule="per-block", payout_addresses="[]")
        s.add_all([account, lucky])
        s.flush()
        rigs = [MiningDevice(serial=f"S21-{n}", model="S21", account_id=account.id, worker=f"rig{n}") for n in (1, 2)]
        rig3 = MiningDevice(serial="S21-3", model="S21", account_id=lucky.id, worker="rig3")
        s.add_all(rigs + [rig3])
        s.flush()
        samples(s, "main.rig1", rigs[0])
        samples(s, "main.rig2", rigs[1], skip=range(37, 54))          # 06:10-08:50 silent: a gap
        samples(s, "main.ghost", None, rate=RATE)                     # a worker no device answers to
        samples(s, "tides.rig3", rig3)
    return {"sessions": sessions, "addr": addr, "funding": txid, "coinbase": coinbase, "stolen": stolen}


def expectation(rpc, work, scheme="fpps", method="foundry"):
    return expected.expected_for_day(rpc, D2, scheme=scheme, pool_fee_bps=200, fee_method=method, work=work)


def findings(sessions, category: str) -> list[Discrepancy]:
    with sessions() as s:
        return [d for d in reconcile.open_findings(s) if d.category == category]


def test_every_category_is_detected(rpc, world):
    sessions, addr = world["sessions"], world["addr"]
    start = datetime.combine(TODAY, datetime.min.time(), tzinfo=timezone.utc)
    with sessions() as s:                                 # what the fleet's counters say it did today
        fleet_work = telemetry.accepted_work(s, s.query(PoolAccount).filter_by(name="main").one(), start,
                                             start + timedelta(days=1)).difficulty
    fleet_expected = expectation(rpc, fleet_work)
    pool_work = Fraction(fleet_work) * Fraction(94, 100)  # the pool credits 94 % of what the fleet did
    exact = pool_work * 2 ** 32 / 86_400
    pool_hashrate = f"{Decimal(exact.numerator) / Decimal(exact.denominator):.8f}"      # H/s as the pool writes it
    pool_expected = expected.expected_for_day(rpc, D2, scheme="fpps", pool_fee_bps=200, fee_method="foundry",
                                              hashrate=Decimal(pool_hashrate))
    paid = pool_expected.expected * 97 // 100             # and pays 97 % of what it credited
    ours = pool_expected.fee_ratio * 100
    cb = world["coinbase"]
    cb_value = int(Decimal(str(cb["vout"][0]["value"])) * 100_000_000)
    rows = [
        ("earning", D0, D0, 300_000, None, None, None, None, None, None, None),
        ("balance", D0, D0, 300_000, None, None, None, None, None, None, None),
        ("earning", D1, D1, 10_000, None, None, None, None, None, None, None),
        ("balance", D1, D1, 310_500, None, None, None, None, None, None, None),      # 500 sat appear from nowhere
        ("earning", D2, D2, paid, None, None, None, pool_hashrate,
         f"{Decimal(ours.numerator) / ours.denominator + 2:.6f}", None, None),
        ("payout", D2, "p-ok", 250_000, 0, world["funding"], addr[0], None, None, None, "paid"),
        ("payout", D2, "p-twice", 250_000, 0, world["funding"], addr[0], None, None, None, "paid"),
        ("payout", D2, "p-short", 120_001, 0, world["funding"], addr[5], None, None, None, "paid"),
        ("payout", D2, "p-ghost", 60_000, 0, "ab" * 32, addr[5], None, None, None, "paid"),
        ("payout", D2, "p-thief", 70_000, 0, "cd" * 32, OUTSIDER.address(), None, None, None, "paid"),
        ("payout", D2, "p-coinbase", cb_value, 0, cb["txid"], addr[3], None, None, "true", "paid"),
        ("payout", D2, "p-orphan", 3_125_000, 0, "ef" * 32, addr[3], None, None, "true", "paid"),
    ]
    with sessions.begin() as s:
        account = s.query(PoolAccount).filter_by(name="main").one()
        statements.import_statement(s, account, "csv", csv(rows), actor="ops")
        restated = [list(r) for r in rows]
        restated[0][3] = 300_100                           # the pool changes D0's earning afterwards
        statements.import_statement(s, account, "csv", csv([tuple(r) for r in restated]), actor="ops")
        report = reconcile.reconcile(s, rpc, account, D0, D2, tolerances=TOLERANCES, sweep_fee_rate=10.0)
        reconcile.reconcile(s, rpc, account, D0, D2, tolerances=TOLERANCES, sweep_fee_rate=40.0)
        lucky = s.query(PoolAccount).filter_by(name="tides").one()
        luck_expected = expectation(rpc, RATE * 144, scheme="tides", method="average").expected
        statements.import_statement(s, lucky, "csv", csv([("earning", D2, D2, luck_expected // 2, None, None, None,
                                                           None, None, None, None)]), actor="ops")
        reconcile.reconcile(s, rpc, lucky, D2, D2, tolerances=TOLERANCES)
    today = next(r for r in report.days if r.day == D2)
    assert today.paid == paid and today.expected_fleet == fleet_expected.expected
    assert today.expected_pool == pool_expected.expected
    expected_categories = set(reconcile.SEVERITY)
    with sessions() as s:
        seen = {d.category for d in reconcile.open_findings(s)}
    assert seen == expected_categories, expected_categories - seen
    assert findings(sessions, "UNDERPAID_VS_EXPECTED")[0].severity == "alert"
    assert findings(sessions, "HASHRATE_LEAK")[0].severity == "alert"
    assert findings(sessions, "NON_WHITELISTED_DESTINATION")[0].severity == "critical"
    assert "p-thief" in findings(sessions, "NON_WHITELISTED_DESTINATION")[0].ref
    assert "p-twice" in findings(sessions, "DUPLICATE_PAYOUT")[0].ref
    assert findings(sessions, "AMOUNT_MISMATCH")[0].amount == 1
    assert findings(sessions, "BALANCE_DRIFT")[0].amount == 500
    assert findings(sessions, "MISSING_PAYOUT")[0].day == D1
    assert findings(sessions, "UNATTRIBUTED_RECEIPT")[0].amount == 77_000
    assert findings(sessions, "SWEEP_DEST_NOT_CUSTODY")[0].ref.startswith(world["stolen"])
    assert findings(sessions, "TELEMETRY_GAP")[0].ref.endswith(("S21-2", "")) or "S21-2" in findings(
        sessions, "TELEMETRY_GAP")[0].ref
    assert "main.ghost" in findings(sessions, "UNKNOWN_WORKER")[0].ref


def test_running_again_adds_nothing_new(rpc, world):
    with world["sessions"].begin() as s:
        account = s.query(PoolAccount).filter_by(name="main").one()
        before = len(reconcile.open_findings(s))
        report = reconcile.reconcile(s, rpc, account, D0, D2, tolerances=TOLERANCES, sweep_fee_rate=10.0)
        assert report.new == 0 and len(reconcile.open_findings(s)) == before


def test_an_honest_account_raises_nothing(rpc, world):
    sessions = world["sessions"]
    start = datetime.combine(TODAY, datetime.min.time(), tzinfo=timezone.utc)
    with sessions.begin() as s:
        pool = s.query(Pool).filter_by(name="Foundry").one()
        honest = PoolAccount(pool_id=pool.id, name="honest", scheme="FPPS", pool_fee_bps=200, fee_method="foundry",
                             payout_threshold=10 ** 15, schedule="daily", payout_addresses="[]")
        s.add(honest)
        s.flush()
        rig = MiningDevice(serial="S21-4", model="S21", account_id=honest.id, worker="rig4")
        s.add(rig)
        s.flush()
        samples(s, "honest.rig4", rig)
    with sessions.begin() as s:
        honest = s.query(PoolAccount).filter_by(name="honest").one()
        work = telemetry.accepted_work(s, honest, start, start + timedelta(days=1)).difficulty
        exact = Fraction(work) * 2 ** 32 / 86_400
        hashrate = Decimal(exact.numerator) / Decimal(exact.denominator)
        owed = expected.expected_for_day(rpc, D2, scheme="fpps", pool_fee_bps=200, fee_method="foundry",
                                         hashrate=hashrate)
        ratio = owed.fee_ratio * 100
        statements.import_statement(s, honest, "csv", csv([("earning", D2, D2, owed.expected, None, None, None,
                                                            f"{hashrate:.8f}", f"{Decimal(ratio.numerator) / ratio.denominator:.6f}",
                                                            None, None)]), actor="ops")
        report = reconcile.reconcile(s, rpc, honest, D2, D2, tolerances=TOLERANCES)
        assert report.findings == [] and report.days[0].pay_ratio > Fraction(999, 1000)


# -- an orphaned coinbase, whatever the node's getrawtransaction answers -----------------------------------------------
STALE_BLOCK = "5e" * 32
COINBASE_TXID = "c0" * 32
PAYEE = TestWallet("reconcile coinbase payee")
PAYOUT_ADDRESS = PAYEE.address()


def coinbase_json(confirmations: int, **extra) -> dict:
    """getrawtransaction(txid, true) of a coinbase, as Bitcoin Core 29.2 shapes it: with -txindex, a coinbase
    whose block was reorganised away still comes back from the stale block, with "confirmations": 0 and
    neither "time" nor "blocktime" (and "in_active_chain" only when a blockhash argument was given)."""
    tx = {"txid": COINBASE_TXID, "hash": "c1" * 32, "version": 2, "size": 170, "vsize": 143, "weight": 572,
          "locktime": 0,
          "vin": [{"coinbase": "016500", "txinwitness": ["00" * 32], "sequence": 4294967295}],
          "vout": [{"value": Decimal("50.00000000"), "n": 0,
                    "scriptPubKey": {"asm": f"0 {PAYEE.wpkh[2:].hex()}",
                                     "desc": add_checksum(f"addr({PAYOUT_ADDRESS})"), "hex": PAYEE.wpkh.hex(),
                                     "address": PAYOUT_ADDRESS, "type": "witness_v0_keyhash"}},
                   {"value": Decimal("0E-8"), "n": 1,
                    "scriptPubKey": {"asm": f"OP_RETURN aa21a9ed{'00' * 32}",
                                     "desc": add_checksum(f"raw(6a24aa21a9ed{'00' * 32})"),
                                     "hex": f"6a24aa21a9ed{'00' * 32}", "type": "nulldata"}}],
          "hex": "02000000...", "blockhash": STALE_BLOCK, "confirmations": confirmations}
    if confirmations > 0:
        tx.update(time=1_700_000_000, blocktime=1_700_000_000)
    return {**tx, **extra}


class OneAnswer:
    """A node client whose getrawtransaction gives one answer (or raises it)."""

    def __init__(self, answer):
        self.answer = answer

    def getrawtransaction(self, txid, verbose=False, blockhash=None):
        assert (txid, verbose) == (COINBASE_TXID, True)
        if isinstance(answer := self.answer, Exception):
            raise answer
        return answer


@pytest.mark.parametrize("answer", [
    RPCError(-5, "No such mempool or blockchain transaction. Use gettransaction for wallet transactions."),
    coinbase_json(0),                                            # Core 29.2 with -txindex
    coinbase_json(0, in_active_chain=False),                     # asked with the stale block's hash
], ids=["no-such", "confirmations-0", "not-in-active-chain"])
@pytest.mark.parametrize("generation", [True, False], ids=["coinbase", "payout"])
def test_a_transaction_off_the_best_chain_is_flagged_whatever_the_node_answers(answer, generation):
    line = SimpleNamespace(txid=COINBASE_TXID, amount=5_000_000_000, day=D2, address=PAYOUT_ADDRESS)
    details = {"is_generation_txn": True} if generation else {}
    used = set()
    [finding] = reconcile._check_tx(OneAnswer(answer), None, line, "1:payout:cb", {PAYOUT_ADDRESS}, details, used)
    assert finding.category == ("COINBASE_ORPHANED" if generation else "PAYOUT_NOT_ON_CHAIN")
    assert COINBASE_TXID in finding.detail and finding.amount == 5_000_000_000 and used == set()


def test_the_same_coinbase_on_the_best_chain_is_not_orphaned():
    line = SimpleNamespace(txid=COINBASE_TXID, amount=5_000_000_000, day=D2, address=PAYOUT_ADDRESS)
    used = set()
    found = reconcile._check_tx(OneAnswer(coinbase_json(3)), None, line, "1:payout:cb", {PAYOUT_ADDRESS},
                                {"is_generation_txn": True}, used)
    assert [f.category for f in found] == ["COINBASE_IMMATURE"] and used == {(COINBASE_TXID, 0)}
    assert reconcile._check_tx(OneAnswer(coinbase_json(100)), None, line, "1:payout:cb", {PAYOUT_ADDRESS},
                               {"is_generation_txn": True}, set()) == []


@pytest.mark.parametrize("failure", [NodeUnreachable("cannot reach the node at http://127.0.0.1:1"),
                                     NodeAuthError("the node refused the credentials"),
                                     RPCError(-28, "Loading block index...")])
def test_a_node_that_cannot_answer_flags_nothing(failure):
    """Only Core's "no such transaction" (-5) means not on chain: an outage raises, it is no finding."""
    line = SimpleNamespace(txid=COINBASE_TXID, amount=5_000_000_000, day=D2, address=PAYOUT_ADDRESS)
    with pytest.raises(type(failure)):
        reconcile._check_tx(OneAnswer(failure), None, line, "1:payout:cb", {PAYOUT_ADDRESS},
                            {"is_generation_txn": True}, set())
