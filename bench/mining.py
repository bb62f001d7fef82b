"""Mining treasury at fleet scale: sweeping 10,000 matured payouts into custody, and reconciling a year
of daily pool statements for 20 accounts and 5,000 devices.

One chain on the embedded node serves both parts, and it is a real one (every block is validated by the
node; nothing is patched):
- the past year: a pool pays the fleet's wpkh payout wallet every day, one transaction per day paying
  every account's whitelisted address (accounts x days payouts). Its blocks are assembled here with past
  timestamps and sent with `submitblock`: 6 blocks a day, found within seconds of noon UTC, so that the
  median time past stays within the 12 hours `custody.mining.expected` allows for when it looks for a day's
  blocks (regtest halves the subsidy every 150 blocks: a year at 144 blocks a day would have none left);
- today: the rest of the `--payouts` arrive from funding transactions of `--per-tx` outputs, and 7 blocks
  confirm them.
A ledger (SQLite, in a temporary directory) syncs it.

Part 1, sweep: `sweeps.sweep` (plan, then per batch of `--max-inputs`: request, custody approval, PSBT
with every input's previous transaction) into a 2-of-3 wsh custody policy; the fleet's software key
signs each PSBT as its signer would (embit `PSBT.sign_with`, from and to base64); `spends.add_signatures`
verifies and merges; `spends.broadcast` finalizes, asks testmempoolaccept and sends; a block confirms.
Printed: transactions, inputs, vsize from the node against 68 vB per P2WPKH input (+ 10.5 vB overhead and
the 43 vB P2WSH output per transaction), fees, the time of every stage, and a ratio measured in the same
run against a bare embit wallet: it builds and signs byte-identical transactions from the same coins,
keys derived once per address, with no database, no PSBT, no previous transactions and no checks (the
bench asserts the transactions are identical).

Part 2, reconciliation: 20 accounts (FPPS at Foundry, Braiins, F2Pool and Luxor, TIDES at Ocean, PPS,
PPLNS), 5,000 devices (250 per account), and a year of daily statement lines per account (earning with
the pool's hashrate, the day's payout, the balance; payouts of the last 7 days carry txids, older ones
are matched by amount), inserted in bulk. Telemetry: each device reports its difficulty-accepted counter
once a day at midnight UTC (one sample per device and day, so a day's work is one difference), and the
reconciliation runs with a 25-hour telemetry gap tolerance to match. Honest lines are computed from the
node's own blocks; a handful of discrepancies are injected, one or two per category, and the bench
checks every one is found and nothing else. Then `reconcile.reconcile` runs for every account over the
whole year, each rule for real (expectations included: every day has blocks). Printed: total time, per
account-year, per statement line, per account-day, findings by category; `--profile` adds cProfile's
view of one account's reconciliation.

At the defaults this takes about 27 minutes on a 2-core machine, 21 of them in `reconcile.reconcile`
(per account and day: `telemetry.accepted_work` reloads every device, `expected.expected_for_day` re-reads
the chain twice); `--time-accounts 2` reconciles two accounts of the same data and extrapolates.

    .venv/bin/python bench/mining.py [--payouts 10000] [--per-tx 2000] [--max-inputs 500] [--fee-rate 2]
                                     [--accounts 20 --devices 5000 --days 365] [--time-accounts N] [--profile]
"""
from __future__ import annotations

import argparse
import cProfile
import hashlib
import io
import json
import os
import pstats
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal, ROUND_HALF_EVEN
from fractions import Fraction
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from embit import bip32  # noqa: E402
from embit.networks import NETWORKS  # noqa: E402
from embit.psbt import PSBT  # noqa: E402
from embit.script import Script, Witness, p2pkh  # noqa: E402
from embit.transaction import SIGHASH, Transaction, TransactionInput, TransactionOutput  # noqa: E402
from sqlalchemy import insert, select  # noqa: E402

from custody.bitcoin.policies import build_policy  # noqa: E402
from custody.bitcoin.psbt_builder import RBF_SEQUENCE  # noqa: E402
from custody.bitcoin.signatures import finalize  # noqa: E402
from custody.chain.node_client import NodeClient  # noqa: E402
from custody.ledger import registry
from custody.ledger.models import Address, Utxo as LedgerUtxo  # noqa: E402
from custody.ledger.sync import Syncer  # noqa: E402
from custody.mining import expected  # noqa: E402
from custody.mining import reconcile, sweeps
from custody.mining.models import MiningDevice, Pool, PoolAccount, StatementLine, TelemetrySample  # noqa: E402
from custody.spending import spends
from custody.store.db import open_database  # noqa: E402
from regtest.launcher import start_node  # noqa: E402
from regtest.mining import assemble  # noqa: E402
from regtest.serialize import Tx  # noqa: E402
from regtest.testwallet import TestWallet, Utxo  # noqa: E402
from tests.conftest import hd_keys  # noqa: E402

FLEET_SEED, CUSTODY_SEED = 97, 87
BLOCKS_PER_DAY = 6
PRE_BLOCKS = 110                    # before the year: coinbases for the pool, matured by its first payout
EXTRA_ADDRESSES = 100               # today's payouts go to fleet addresses no account whitelists
TXID_DAYS = 7                       # payouts of the last days carry txids; older ones are matched by amount
PAYOUT_FEE = 5_000                  # the pool's fee per daily payout transaction
UNIT = Decimal("0.00000001")        # a counter's last decimal
TOLERANCES = reconcile.Tolerances(telemetry_max_gap=timedelta(hours=25))   # one reading a day per device
POOLS = [   # pool name, kind, scheme, fee method, pool fee (bps)
    ("Foundry", "foundry", "FPPS", "foundry", 200), ("Braiins", "braiins", "FPPS", "average", 250),
    ("F2Pool", "f2pool", "FPPS", "average", 250), ("Luxor", "luxor", "FPPS", "average", 200),
    ("Ocean", "ocean", "TIDES", "average", 200), ("ViaBTC", "generic", "PPS", "none", 400),
    ("Antpool", "generic", "PPLNS", "average", 150)]


def fleet_root() -> bip32.HDKey:
    return bip32.HDKey.from_seed(hashlib.sha256(f"test device {FLEET_SEED}".encode()).digest(),
                                 version=NETWORKS["regtest"]["xprv"])


def noon(day: date) -> int:
    return int(datetime.combine(day, datetime.min.time(), tzinfo=timezone.utc).timestamp()) + 12 * 3600


def midnight(day: date) -> datetime:
    return datetime.combine(day, datetime.min.time(), tzinfo=timezone.utc)


# -- the chain ---------------------------------------------------------------------------------------------------
class Blocks:
    """Blocks with chosen (past) timestamps, assembled here and validated by the node via submitblock."""

    def __init__(self, rpc: NodeClient):
        self.rpc = rpc
        self.height = rpc.getblockcount()
        self.tip = rpc.getbestblockhash()
        self.times = []
        for h in range(max(0, self.height - 10), self.height + 1):
            self.times.append(rpc.getblockheader(rpc.getblockhash(h))["time"])

    def mine(self, when: int, spk: bytes, txs: list[str] = (), fees: int = 0):
        recent = sorted(self.times[-11:])
        mtp = recent[len(recent) // 2]
        block = assemble(bytes.fromhex(self.tip)[::-1], self.height + 1, mtp, spk,
                         [Tx.parse(bytes.fromhex(t)) for t in txs], fees, now=max(when, mtp + 1))
        result = self.rpc.submitblock(block.serialize().hex())
        if result is not None:
            raise SystemExit(f"the node refused block {self.height + 1}: {result}")
        self.tip, self.height = block.hash, self.height + 1
        self.times.append(block.header.time)
        return block


@dataclass
class Plan:
    """What the pool does over the year, decided before the chain is built (and injected faults)."""
    accounts: int
    days: list[date]
    amounts: dict[tuple[int, int], int] = field(default_factory=dict)      # (account, day index) -> sats
    skipped: set[tuple[int, int]] = field(default_factory=set)             # no payout at all (MISSING_PAYOUT)
    unattributed: dict[int, tuple[int, int]] = field(default_factory=dict)  # day index -> (account, sats)


@dataclass
class Chain:
    payouts: dict[tuple[int, int], tuple[str, int]]        # (account, day index) -> (txid, sats)
    receipts: int
    extra: int
    build_s: float


def build_chain(rpc: NodeClient, fleet_spec, plan: Plan, payouts: int, per_tx: int, rng: random.Random) -> Chain:
    t0 = time.perf_counter()
    pool, miner = TestWallet("bench pool"), TestWallet("bench miner")
    spks = [fleet_spec.embit(0).derive(i).script_pubkey().data for i in range(plan.accounts + EXTRA_ADDRESSES)]
    receipts = plan.accounts * len(plan.days) - len(plan.skipped) + len(plan.unattributed)
    extra = max(0, payouts - receipts)
    funding = -(-extra // per_tx)
    blocks = Blocks(rpc)
    coinbases = []
    before = plan.days[0] - timedelta(days=1)
    for k in range(max(PRE_BLOCKS, funding + 101)):
        block = blocks.mine(noon(before) + k, pool.wpkh if k <= funding else miner.wpkh)
        if k <= funding:
            coinbases.append(Utxo(block.txs[0].txid, 0, block.txs[0].vout[0].value, pool.wpkh))
    coin, made = coinbases[0], {}
    for d, day in enumerate(plan.days):
        outputs, who = [], []
        for a in range(plan.accounts):
            if (a, d) not in plan.skipped:
                outputs.append((spks[a], plan.amounts[a, d]))
                who.append(a)
        if d in plan.unattributed:
            a, value = plan.unattributed[d]
            outputs.append((spks[a], value))
            who.append(None)
        change = coin.value - sum(v for _, v in outputs) - PAYOUT_FEE
        raw = pool.sign([coin], outputs + [(pool.wpkh, change)])
        txid = Tx.parse(bytes.fromhex(raw)).txid
        for a in who:
            if a is not None:
                made[a, d] = (txid, plan.amounts[a, d])
        blocks.mine(noon(day), miner.wpkh, [raw], PAYOUT_FEE)
        for k in range(1, BLOCKS_PER_DAY):
            blocks.mine(noon(day) + k, miner.wpkh)
        coin = Utxo(txid, len(outputs), change, pool.wpkh)
    # today: the rest of the payouts, from transactions of per_tx outputs, then 7 confirmations
    for n, cb in enumerate(coinbases[1:]):
        outs = [(spks[plan.accounts + i % EXTRA_ADDRESSES], 20_000 + i % 997)
                for i in range(n * per_tx, min(extra, (n + 1) * per_tx))]
        rpc.sendrawtransaction(pool.sign([cb], outs + [(pool.wpkh, cb.value - sum(v for _, v in outs) - 100_000)]), 0)
    rpc.generatetoaddress(7, miner.address())
    return Chain(made, receipts, extra, time.perf_counter() - t0)


# -- part 1: the sweep --------------------------------------------------------------------------------------------
@dataclass
class Batch:
    spend_id: int
    inputs: int
    fee: int
    amount: int
    psbt_bytes: int = 0
    prev_bytes: int = 0            # previous transactions carried, in all
    sign_s: float = 0.0
    merge_s: float = 0.0
    finalize_s: float = 0.0
    broadcast_s: float = 0.0
    txid: str = ""
    vsize: int = 0
    coins: list = field(default_factory=list)        # (txid, vout, value, index) in input order
    locktime: int = 0
    destination: bytes = b""


def bare_wallet(batches: list[Batch], root: bip32.HDKey) -> tuple[float, list[str]]:
    """The baseline: embit builds and signs the same transactions from the same coins; nothing else."""
    start = time.perf_counter()
    keys: dict[int, tuple] = {}
    txids = []
    for b in batches:
        tx = Transaction(version=2, locktime=b.locktime,
                         vin=[TransactionInput(bytes.fromhex(t), v, sequence=RBF_SEQUENCE) for t, v, _, _ in b.coins],
                         vout=[TransactionOutput(b.amount, Script(b.destination))])
        for i, (_, _, value, index) in enumerate(b.coins):
            if index not in keys:
                key = root.derive(f"m/48h/1h/0h/2h/0/{index}").key
                keys[index] = (key, key.get_public_key())
            key, pub = keys[index]
            digest = tx.sighash_segwit(i, p2pkh(pub), value, SIGHASH.ALL)
            tx.vin[i].witness = Witness([key.sign(digest).serialize() + b"\x01", pub.sec()])
        tx.serialize()
        txids.append(tx.txid().hex())
    return time.perf_counter() - start, txids


def sweep_part(rpc: NodeClient, sessions, args) -> dict:
    root = fleet_root()
    t = time.perf_counter()
    with sessions.begin() as s:
        made = sweeps.sweep(s, rpc, "fleet", "custody", actor="bench sweeper", fee_rate=args.fee_rate,
                            max_inputs=args.max_inputs)
        batches = [Batch(m.spend_id, m.inputs, m.fee, m.amount) for m in made]
    build_s = time.perf_counter() - t
    with sessions() as s:                                    # what the baseline gets: the coins, by outpoint
        fleet = registry.get_policy(s, "fleet")
        ledger = {(txid, vout): (value, index) for txid, vout, value, index in s.execute(
            select(LedgerUtxo.txid, LedgerUtxo.vout, LedgerUtxo.value, Address.index)
            .join(Address, Address.id == LedgerUtxo.address_id).where(LedgerUtxo.policy_id == fleet.id))}
    for b in batches:
        with sessions() as s:
            text = spends.get_spend(s, b.spend_id).psbt
        t = time.perf_counter()                              # the fleet's signer: base64 in, base64 out
        psbt = PSBT.from_string(text)
        psbt.sign_with(root)
        upload = psbt.to_string()
        b.sign_s = time.perf_counter() - t
        b.psbt_bytes = len(text) * 3 // 4
        sizes = {}
        for vin, scope in zip(psbt.tx.vin, psbt.inputs):
            txid = vin.txid.hex()
            sizes[txid] = sizes.get(txid) or len(scope.non_witness_utxo.serialize())
            b.prev_bytes += sizes[txid]
        b.locktime, b.destination = psbt.tx.locktime, psbt.tx.vout[0].script_pubkey.data
        for vin in psbt.tx.vin:
            value, index = ledger[vin.txid.hex(), vin.vout]
            b.coins.append((vin.txid.hex(), vin.vout, value, index))
        del psbt, text
        t = time.perf_counter()
        with sessions.begin() as s:
            spend = spends.get_spend(s, b.spend_id)
            spends.add_signatures(s, spend, upload, actor="fleet signer")
            assert spend.state == "signed", spend.state
        b.merge_s = time.perf_counter() - t
    for b in batches:
        with sessions() as s:                                # finalize alone, for the split (not kept)
            t = time.perf_counter()
            finalize(PSBT.from_string(spends.get_spend(s, b.spend_id).psbt), 1)
            b.finalize_s = time.perf_counter() - t
        t = time.perf_counter()
        b.txid = spends.broadcast(sessions, b.spend_id, rpc, actor="bench sweeper")
        b.broadcast_s = time.perf_counter() - t
    t = time.perf_counter()
    rpc.generatetoaddress(1, TestWallet("bench miner").address())
    mine_s = time.perf_counter() - t
    t = time.perf_counter()
    with sessions.begin() as s:
        states = Counter(spends.track(s, spends.get_spend(s, b.spend_id), rpc).state for b in batches)
    track_s = time.perf_counter() - t
    for b in batches:
        b.vsize = rpc.getrawtransaction(b.txid, True)["vsize"]
    baseline_s, baseline_txids = bare_wallet(batches, root)
    assert baseline_txids == [b.txid for b in batches], "the baseline did not make the same transactions"
    return {"batches": batches, "build_s": build_s, "mine_s": mine_s, "track_s": track_s, "states": states,
            "baseline_s": baseline_s}


def print_sweep(result: dict, args, coins: int) -> None:
    batches: list[Batch] = result["batches"]
    n = sum(b.inputs for b in batches)
    vsize = sum(b.vsize for b in batches)
    fees = sum(b.fee for b in batches)
    theory = sum(10.5 + (2 if b.inputs >= 253 else 0) + 68 * b.inputs + 43 for b in batches)
    per_input = (vsize - sum(10.5 + (2 if b.inputs >= 253 else 0) + 43 for b in batches)) / n
    sign_s, merge_s = sum(b.sign_s for b in batches), sum(b.merge_s for b in batches)
    fin_s, bc_s = sum(b.finalize_s for b in batches), sum(b.broadcast_s for b in batches)
    build_s = result["build_s"]
    print(f"\n== sweep: {coins:,} matured fleet payouts into a 2-of-3 wsh custody policy, "
          f"max {args.max_inputs} inputs per transaction, {args.fee_rate:g} sat/vB")
    print(f"transactions: {len(batches)}   inputs: {n:,}   swept: {sum(b.amount for b in batches):,} sat   "
          f"confirmed: {dict(result['states'])}")
    print(f"vsize (node): {vsize:,} vB; theory {theory:,.1f} vB (68 vB per P2WPKH input + 10.5 vB overhead, "
          f"+2 vB for a 3-byte input count, + 43 vB P2WSH output per tx): measured/theory {vsize / theory:.4f}")
    print(f"vbytes per input: {per_input:.3f} measured (overhead and output taken off) vs 68 theoretical; "
          f"all-in {vsize / n:.3f} vB per input (overhead and custody output amortised)")
    print(f"fees: {fees:,} sat = {fees / vsize:.3f} sat/vB of the real size ({fees / n:.1f} sat per input; "
          f"the builder's estimate assumes 72-byte signatures)")
    prev = sum(b.prev_bytes for b in batches)
    print(f"PSBTs: {sum(b.psbt_bytes for b in batches) / 1e6:,.1f} MB in all, of which previous transactions "
          f"{prev / 1e6:,.1f} MB ({prev / n:,.0f} B per input)")
    rows = [("build: sweeps.sweep (plan, request, approve, PSBT, describe)", build_s),
            ("sign: embit PSBT.sign_with (from/to base64)", sign_s),
            ("merge: spends.add_signatures (verify, merge, store)", merge_s),
            ("broadcast: spends.broadcast (finalize, testmempoolaccept, send)", bc_s),
            ("  of which finalize (parse + finalize, measured apart)", fin_s),
            ("mine 1 block", result["mine_s"]), ("track to confirmation", result["track_s"])]
    for label, seconds in rows:
        print(f"  {label:66} {seconds:8.2f} s  {seconds / n * 1e3:8.3f} ms/input")
    ours = build_s + sign_s
    base = result["baseline_s"]
    print(f"baseline, bare embit wallet (same coins, keys derived once per address, no DB/PSBT/checks; "
          f"byte-identical transactions): {base:.2f} s = {base / n * 1e3:.3f} ms/input")
    print(f"ratio build+sign / baseline: {ours / base:.1f}x  ({ours / n * 1e3:.3f} vs {base / n * 1e3:.3f} ms/input); "
          f"whole coordinator path build+sign+merge+finalize: {(ours + merge_s + fin_s) / base:.1f}x")
    print(f"  {'batch':>5} {'inputs':>6} {'prev B/in':>9} {'PSBT MB':>8} {'sign s':>7} {'merge s':>7} "
          f"{'bcast s':>7} {'vsize':>7} {'vB/in':>7}")
    for i, b in enumerate(batches, 1):
        print(f"  {i:>5} {b.inputs:>6} {b.prev_bytes / b.inputs:>9,.0f} {b.psbt_bytes / 1e6:>8.1f} {b.sign_s:>7.2f} "
              f"{b.merge_s:>7.2f} {b.broadcast_s:>7.2f} {b.vsize:>7,} "
              f"{(b.vsize - 53.5 - (2 if b.inputs >= 253 else 0)) / b.inputs:>7.3f}")


# -- part 2: reconciliation ---------------------------------------------------------------------------------------
def make_plan(accounts: int, days: list[date], rng: random.Random) -> tuple[Plan, dict]:
    plan = Plan(accounts, days)
    for a in range(accounts):
        for d in range(len(days)):
            plan.amounts[a, d] = rng.randrange(30_000, 150_000)
    n = len(days)
    at = {name: min(n - 3, max(1, int(n * f))) for name, f in (
        ("underpaid", .27), ("fee", .30), ("restated", .14), ("drift", .41), ("thief", .45), ("ghostpay", .82),
        ("leak", .55), ("gap", .33), ("unknown", .03), ("missing", .68), ("unattributed", .58))}
    faults = {}
    if n >= 10:
        for account, name in enumerate(("underpaid", "leak", "restated", "drift", "thief", "ghostpay", "amount",
                                        "gap", "unknown", "missing", "duplicate", "unattributed")):
            if account < accounts:
                faults[name] = (account, at.get(name, n - 1))
        if "underpaid" in faults:
            faults["fee"] = (0, at["fee"])
        if "missing" in faults:
            a, d = faults["missing"]
            plan.skipped.add((a, d))
        if "unattributed" in faults:
            a, d = faults["unattributed"]
            plan.unattributed[d] = (a, 77_777)
    return plan, faults


EXPECTED_FINDINGS = {"underpaid": ("UNDERPAID_VS_EXPECTED", 1), "fee": ("FEE_RATE_MISMATCH", 1),
                     "leak": ("HASHRATE_LEAK", 1), "restated": ("STATEMENT_RESTATED", 1),
                     "drift": ("BALANCE_DRIFT", 2), "thief": ("NON_WHITELISTED_DESTINATION", 1),
                     "ghostpay": ("PAYOUT_NOT_ON_CHAIN", 1), "amount": ("AMOUNT_MISMATCH", 1),
                     "gap": ("TELEMETRY_GAP", 1), "unknown": ("UNKNOWN_WORKER", 1), "missing": ("MISSING_PAYOUT", 1),
                     "duplicate": ("DUPLICATE_PAYOUT", 1), "unattributed": ("UNATTRIBUTED_RECEIPT", 1)}


def hashrate_text(work: Fraction) -> str:
    exact = work * 2 ** 32 / expected.DAY_SECONDS
    return str((Decimal(exact.numerator) / Decimal(exact.denominator)).quantize(UNIT, ROUND_HALF_EVEN))


def setup_accounts(rpc, sessions, plan: Plan, chain: Chain, faults: dict, devices: int, rng: random.Random) -> dict:
    """Pools, accounts, devices, telemetry and statements, in bulk. Returns counts and timings."""
    t0 = time.perf_counter()
    days = [d.isoformat() for d in plan.days]
    nets = {day: expected.day_network(rpc, day) for day in days}      # the node's facts, once per day
    short = [day for day, net in nets.items() if net.block_count != BLOCKS_PER_DAY]
    assert not short, f"days whose blocks custody.mining.expected does not see: {short[:5]}"
    nets_s = time.perf_counter() - t0
    outsider = TestWallet("outsider").address()
    now = datetime.now(timezone.utc)
    with sessions.begin() as s:
        fleet = registry.get_policy(s, "fleet")
        addresses = {a.index: a.address for a in s.scalars(select(Address).where(
            Address.policy_id == fleet.id, Address.branch == 0, Address.index < plan.accounts))}
        pools = {}
        for name, kind, *_ in POOLS:
            pools[name] = Pool(name=name, kind=kind)
        s.add_all(pools.values())
        s.flush()
        accounts = []
        for a in range(plan.accounts):
            name, _, scheme, method, bps = POOLS[a % len(POOLS)]
            accounts.append(PoolAccount(pool_id=pools[name].id, name=f"acct{a:02d}", scheme=scheme, pool_fee_bps=bps,
                                        fee_method=method, payout_threshold=100_000, schedule="daily",
                                        payout_addresses=json.dumps([addresses[a]]), fleet_policy_id=fleet.id))
        s.add_all(accounts)
        s.flush()
        per_account = [devices // plan.accounts + (1 if a < devices % plan.accounts else 0)
                       for a in range(plan.accounts)]
        device_rows = [{"serial": f"{accounts[a].name}-{n:04d}", "model": "S21", "account_id": accounts[a].id,
                        "worker": f"rig{n:04d}"} for a in range(plan.accounts) for n in range(per_account[a])]
        s.execute(insert(MiningDevice), device_rows)
        fleet_devices = s.execute(select(MiningDevice.id, MiningDevice.account_id, MiningDevice.worker)
                                  .order_by(MiningDevice.id)).all()
        account_ids = [acc.id for acc in accounts]
        names = {acc.id: acc.name for acc in accounts}

        # telemetry: one counter reading per device at every midnight from the first day to the day after the last
        t1 = time.perf_counter()
        work = {a: [Fraction(0)] * len(days) for a in range(plan.accounts)}
        index_of = {acc_id: a for a, acc_id in enumerate(account_ids)}
        gap_device = None
        if "gap" in faults:
            ga, gd = faults["gap"]
            gap_device = next(d.id for d in fleet_devices if d.account_id == account_ids[ga])
        rows, samples, gap_capture = [], 0, None
        for dev in fleet_devices:
            rate = rng.randint(1, 3) * UNIT                # difficulty accepted per day (regtest D is ~4.7e-10)
            if dev.id == gap_device:
                gap_rate = Fraction(rate)
            a = index_of[dev.account_id]
            worker = f"{names[dev.account_id]}.{dev.worker}"
            for n in range(len(days) + 1):
                if n < len(days):
                    work[a][n] += Fraction(rate)
                if dev.id == gap_device and n == faults["gap"][1]:
                    continue                                # the reading that closes the day before is lost
                rows.append({"device_id": dev.id, "worker": worker, "time": midnight(plan.days[0]) + timedelta(days=n),
                             "difficulty_accepted": rate * n, "mhs_av": None, "source": "bench"})
            if len(rows) >= 100_000:
                s.execute(insert(TelemetrySample), rows)
                samples += len(rows)
                rows = []
        if "unknown" in faults:
            ua, ud = faults["unknown"]
            for n, hour in enumerate((6, 18)):               # a rig nobody registered, seen twice in one day
                rows.append({"device_id": None, "worker": f"{names[account_ids[ua]]}.ghost",
                             "time": midnight(plan.days[ud]) + timedelta(hours=hour),
                             "difficulty_accepted": UNIT * (5 + 5 * n), "mhs_av": None, "source": "bench"})
        s.execute(insert(TelemetrySample), rows)
        samples += len(rows)
        telemetry_s = time.perf_counter() - t1
        if gap_device is not None:    # the day after the lost reading, the fleet counts that rig's work twice
            ga, gd = faults["gap"]
            gap_capture = work[ga][gd] / (work[ga][gd] + gap_rate)

        # statements: the pool's honest lines, computed from the node's blocks, then the faults
        t2 = time.perf_counter()
        lines = []

        def line(a, kind, key, d, amount, *, fee=None, txid=None, address=None, details=None, revision=1,
                 superseded=False):
            lines.append({"account_id": account_ids[a], "kind": kind, "key": key, "revision": revision, "day": days[d],
                          "amount": amount, "fee": fee, "txid": txid, "address": address,
                          "details": json.dumps(details or {}, sort_keys=True, separators=(",", ":")),
                          "raw_sha256": hashlib.sha256(f"{a}:{days[d]}".encode()).hexdigest(), "received_at": now,
                          "superseded": superseded})
        for a, acc in enumerate(accounts):
            balance = 0
            method = "none" if acc.scheme == "PPS" else acc.fee_method
            for d, day in enumerate(days):
                net = nets[day]
                credited = work[a][d] * (Fraction(94, 100) if faults.get("leak") == (a, d) else 1)
                rate = hashrate_text(credited)
                ratio = expected.fee_ratio(net.blocks, method)
                owed = expected.fpps(expected.work_from_hashrate(Decimal(rate), expected.DAY_SECONDS), net.difficulty,
                                     net.subsidy, fee_ratio=ratio, pool_fee_bps=acc.pool_fee_bps)
                if acc.scheme in ("TIDES", "PPLNS"):
                    owed = owed * rng.randint(90, 110) // 100          # luck, inside the 20 % band over 30 days
                if faults.get("underpaid") == (a, d):
                    owed = owed * 97 // 100
                details = {"hashrate": rate}
                if acc.fee_method == "foundry":
                    percent = ratio * 100 + (2 if faults.get("fee") == (a, d) else 0)
                    details["fpps_rate_percent"] = f"{Decimal(percent.numerator) / percent.denominator:.6f}"
                if faults.get("restated") == (a, d):
                    line(a, "earning", day, d, owed + 1_000, details=details, superseded=True)
                    line(a, "earning", day, d, owed, details=details, revision=2)
                else:
                    line(a, "earning", day, d, owed, details=details)
                balance += owed
                paid = []
                if (a, d) in chain.payouts:
                    txid, amount = chain.payouts[a, d]
                    recent = d >= len(days) - TXID_DAYS
                    if faults.get("amount") == (a, d):
                        amount += 1
                    paid.append((txid if recent else f"p-{day}", amount, txid if recent else None, addresses[a]))
                    if faults.get("duplicate") == (a, d):
                        paid.append((f"p-{day}-again", amount, txid, addresses[a]))
                if faults.get("thief") == (a, d):
                    paid.append((f"p-{day}-x", 70_000, None, outsider))
                if faults.get("ghostpay") == (a, d):
                    paid.append((f"p-{day}-y", 12_345, None, addresses[a]))
                for key, amount, txid, address in paid:
                    line(a, "payout", key, d, amount, fee=0, txid=txid, address=address, details={"status": "paid"})
                    balance -= amount
                line(a, "balance", day, d, balance + (500 if faults.get("drift") == (a, d) else 0))
        s.execute(insert(StatementLine), lines)
        statements_s = time.perf_counter() - t2
    lines_by_account = Counter(index_of[row["account_id"]] for row in lines)
    return {"samples": samples, "lines": len(lines), "lines_per_account": lines_by_account, "devices": len(fleet_devices),
            "nets_s": nets_s, "gap_capture": gap_capture,
            "telemetry_s": telemetry_s, "statements_s": statements_s}


def reconcile_part(rpc, sessions, plan: Plan, args, profile: bool) -> dict:
    first, last = plan.days[0].isoformat(), plan.days[-1].isoformat()
    with sessions() as s:
        ids = list(s.scalars(select(PoolAccount.id).order_by(PoolAccount.id)))
    if args.time_accounts:
        ids = ids[:args.time_accounts]
    reports, times = [], []
    for account_id in ids:
        t = time.perf_counter()
        with sessions.begin() as s:
            account = s.get(PoolAccount, account_id)
            reports.append(reconcile.reconcile(s, rpc, account, first, last, tolerances=TOLERANCES,
                                               sweep_fee_rate=args.fee_rate, actor="bench"))
        times.append(time.perf_counter() - t)
    profile_text = None
    if profile:       # again, for one account, under cProfile: same work (the findings are known by now)
        profiler = cProfile.Profile()
        with sessions.begin() as s:
            account = s.get(PoolAccount, ids[0])
            profiler.enable()
            reconcile.reconcile(s, rpc, account, first, last, tolerances=TOLERANCES, sweep_fee_rate=args.fee_rate)
            profiler.disable()
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        whole = max(ct for _, _, _, ct, _ in stats.stats.values())
        steps = [("statements", "latest_lines"), ("reconcile", "_earnings_day"), ("telemetry", "accepted_work"),
                 ("expected", "expected_for_day"), ("reconcile", "_luck"), ("reconcile", "_restatements"),
                 ("reconcile", "_payouts_on_chain"), ("reconcile", "_check_tx"), ("reconcile", "_receipts"),
                 ("reconcile", "_missing_payouts"), ("reconcile", "_balance_drift"), ("reconcile", "_unattributed"),
                 ("reconcile", "_sweep_findings"), ("sweeps", "plan"), ("reconcile", "_spent_outside_custody"),
                 ("reconcile", "_store")]
        seen = {(Path(path).stem, name): (calls, ct) for (path, _, name), (_, calls, _, ct, _) in stats.stats.items()
                if "/custody/" in path}
        parts = [f"  {module}.{name}: {seen[module, name][1]:.2f} s in {seen[module, name][0]} calls "
                 f"({seen[module, name][1] / whole:.0%})" for module, name in steps if (module, name) in seen]
        out.write(f"one account, {len(plan.days)} days: {whole:.2f} s under the profiler; cumulative time by step:\n")
        out.write("\n".join(parts) + "\n\n")
        stats.sort_stats("cumulative").print_stats(28)
        stats.sort_stats("tottime").print_stats(15)
        profile_text = out.getvalue()
    return {"reports": reports, "times": times, "profile": profile_text}


def print_reconcile(result: dict, setup: dict, plan: Plan, faults: dict) -> None:
    reports, times = result["reports"], result["times"]
    total = sum(times)
    timed = len(times)
    days = len(plan.days)
    found = Counter(f.category for r in reports for f in r.findings)
    with_expectation = sum(1 for r in reports for row in r.days if row.expected_pool is not None)
    with_fleet = sum(1 for r in reports for row in r.days if row.expected_fleet is not None)
    print(f"\n== reconciliation: {plan.accounts} accounts, {setup['devices']:,} devices, {days} days "
          f"({plan.days[0]} .. {plan.days[-1]})")
    print(f"setup (not timed below): node's day facts {setup['nets_s']:.1f} s; {setup['samples']:,} telemetry samples "
          f"(one per device per midnight) in {setup['telemetry_s']:.1f} s; {setup['lines']:,} statement lines "
          f"in {setup['statements_s']:.1f} s")
    print(f"reconcile.reconcile, every account over the {days} days: {total:.1f} s; per account ({days} days) "
          f"{total / len(times):.2f} s "
          f"(min {min(times):.2f}, max {max(times):.2f}); per account-day {total / (len(times) * days) * 1e3:.1f} ms; "
          f"per statement line {total / sum(setup['lines_per_account'][a] for a in range(timed)) * 1e3:.2f} ms")
    print(f"rules that ran: every rule, every day; expectation from the pool's hashrate on {with_expectation:,} and "
          f"from the fleet's counters on {with_fleet:,} of {len(times) * days:,} account-days (blocks on every day)")
    if timed < plan.accounts:
        print(f"  (only {timed} of {plan.accounts} accounts reconciled (--time-accounts): "
              f"all {plan.accounts} would take "
              f"~{total / timed * plan.accounts:.0f} s)")
    expected_counts = Counter()
    for name, (account, _) in faults.items():
        if account >= timed:
            continue
        category, count = EXPECTED_FINDINGS[name]
        expected_counts[category] += count
    if setup["gap_capture"] is not None and faults["gap"][0] < timed and setup["gap_capture"] < 0.97:
        expected_counts["HASHRATE_LEAK"] += 1     # few devices per account: one rig's day is over 3 % of the work
    injected = sum(1 for a, _ in faults.values() if a < timed)
    print(f"findings: {sum(found.values())} (injected faults: {injected}, expecting {sum(expected_counts.values())})")
    for category in sorted(set(found) | set(expected_counts)):
        mark = "" if found[category] == expected_counts[category] else \
            f"   <-- expected {expected_counts[category]}"
        print(f"  {category:28} {found[category]:>4}{mark}")
        if mark:
            for f in (f for r in reports for f in r.findings if f.category == category):
                print(f"      {f.day} {f.ref}: {f.detail}")
    if result["profile"]:
        print("\n== cProfile of one account's reconciliation (run again after the timed runs)")
        print(result["profile"])


# -- main ---------------------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--payouts", type=int, default=10_000, help="fleet payouts to sweep (default 10,000)")
    parser.add_argument("--per-tx", type=int, default=2_000, help="outputs per funding transaction of today's payouts")
    parser.add_argument("--max-inputs", type=int, default=500)
    parser.add_argument("--fee-rate", type=float, default=2.0, help="sat/vB, for the sweep and reconciliation")
    parser.add_argument("--accounts", type=int, default=20)
    parser.add_argument("--devices", type=int, default=5_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--time-accounts", type=int, default=0,
                        help="reconcile only the first N accounts (all the data is still made); 0: all")
    parser.add_argument("--profile", action="store_true", help="cProfile one account's reconciliation")
    args = parser.parse_args()
    rng = random.Random(20260101)
    yesterday = datetime.now(timezone.utc).date() - timedelta(days=1)
    days = [yesterday - timedelta(days=args.days - 1 - n) for n in range(args.days)]
    plan, faults = make_plan(args.accounts, days, rng)
    fleet_spec = build_policy("wpkh", 1, hd_keys(1, seed_base=FLEET_SEED))
    custody_spec = build_policy("wsh-sortedmulti", 2, hd_keys(3, seed_base=CUSTODY_SEED))
    with tempfile.TemporaryDirectory(prefix="bench-mining-") as tmp:
        os.environ["CUSTODY_HOME"] = tmp                     # the coordinator's event-log key stays in here
        node = start_node(Path(tmp) / "node", bitcoind="")
        try:
            rpc = NodeClient(node.url, cookie_file=node.cookie_file, timeout=600)
            chain = build_chain(rpc, fleet_spec, plan, args.payouts, args.per_tx, rng)
            print(f"chain: {rpc.getblockcount():,} blocks in {chain.build_s:.1f} s; "
                  f"fleet paid {chain.receipts:,} daily "
                  f"pool payouts over {args.days} days (past-dated blocks) + {chain.extra:,} today in "
                  f"{-(-chain.extra // args.per_tx)} transactions of up to {args.per_tx:,} outputs")
            sessions = open_database(f"sqlite:///{tmp}/bench.db")
            with sessions.begin() as s:
                registry.set_status(s, registry.create_policy(s, "fleet", fleet_spec), "active", actor="bench")
                registry.set_status(s, registry.create_policy(s, "custody", custody_spec,
                                                              gap_limit=args.payouts // args.max_inputs + 20),
                                    "active", actor="bench")
            t = time.perf_counter()
            Syncer(sessions, rpc).sync_once()
            with sessions() as s:
                coins = len(s.scalars(select(LedgerUtxo.id).where(
                    LedgerUtxo.policy_id == registry.get_policy(s, "fleet").id)).all())
            print(f"ledger sync: {coins:,} fleet coins in {time.perf_counter() - t:.1f} s")

            swept = sweep_part(rpc, sessions, args)
            print_sweep(swept, args, coins)
            Syncer(sessions, rpc).sync_once()                # the ledger sees the sweeps confirmed

            setup = setup_accounts(rpc, sessions, plan, chain, faults, args.devices, rng)
            result = reconcile_part(rpc, sessions, plan, args, args.profile)
            print_reconcile(result, setup, plan, faults)
        finally:
            node.stop()


if __name__ == "__main__":
    main()
