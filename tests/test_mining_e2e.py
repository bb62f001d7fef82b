"""The mining treasury end to end on the regtest node (issue 8, item 8): a fleet whose payout key lives in
a simulated signer reached through HWI, two pool accounts paid daily (pool payouts and coinbase payouts),
miners polled over the CGMiner API on loopback; one under-payment, one missing payout, one payout to an
address that is not whitelisted and a reorganisation that orphans a coinbase payout are all flagged, and
everything else is swept into custody on the device's signature and confirmed.

Regtest's difficulty is ~5e-10, so the simulated miners run at a few milli-hashes per second and the
pools' daily credits are large: the numbers are regtest's, the rules are not."""
from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from fractions import Fraction

import pytest
from embit.networks import NETWORKS
from sqlalchemy import select

from custody.bitcoin.policies import build_policy
from custody.chain.node_client import btc_to_sats, NodeClient, RPCError
from custody.devices import inventory as devices
from custody.spending import device_signing
from custody.ledger import coins as ledger, registry
from custody.ledger.sync import Syncer
from custody.mining import expected, fleet, reconcile, statements, sweeps, telemetry
from custody.mining.models import MiningDevice, Pool, PoolAccount
from custody.spending import spends
from custody.store.db import open_database
from custody_signer.device import MODEL, shown_first_address
from custody_signer.simulator import spawn
from regtest.miner import ManualClock, SimulatedMiner, start_miners, stop_miners
from regtest.testwallet import TestWallet

from .conftest import hd_keys, mine_coins, signer_discovery
from .support import start_node, stop

TODAY = datetime.now(timezone.utc).date()
DAYS = [(TODAY - timedelta(days=n)).isoformat() for n in (3, 2, 1, 0)]
MIDNIGHT = datetime.combine(TODAY, datetime.min.time(), tzinfo=timezone.utc)
OUTSIDER = TestWallet("pool thief")
MINER = TestWallet("e2e miner").address()
QUIET = reconcile.Tolerances(telemetry_max_gap=timedelta(hours=13))


@pytest.fixture(scope="module")
def signer(tmp_path_factory):
    root = tmp_path_factory.mktemp("fleet-signer")
    with signer_discovery(root / "d"):
        process, info = spawn(root / "state")
        yield {"state": root / "state", **info}
        stop(process)


def csv(rows) -> str:
    head = "kind,day,key,amount_sats,txid,address,hashrate,is_generation_txn,status\n"
    return head + "".join(",".join("" if v is None else str(v) for v in row) + "\n" for row in rows)


def test_a_fleet_paid_daily_is_reconciled_and_swept_into_custody(rpc, wallet, signer, tmp_path):
    sessions = open_database(f"sqlite:///{tmp_path}/e2e.db")
    funding = mine_coins(rpc, wallet, 3)
    with sessions.begin() as s:
        custody = registry.create_policy(s, "custody", build_policy("wsh-sortedmulti", 2, hd_keys(3, seed_base=61)))
        registry.set_status(s, custody, "active", actor="admin")
        device = devices.issue(s, model=MODEL, serial=signer["serial"], to="Mia (mining ops)", actor="admin")
        devices.connect(s, device, "regtest", actor="admin")
        fleet.create_wallet(s, "fleet", signer["serial"], "custody", network="regtest", actor="admin")
    with sessions.begin() as s:      # Mia confirms the address her device shows
        fleet.confirm_wallet(s, "fleet", signer["serial"], shown_first_address(signer["state"]),
                             by="Mia (mining ops)")
    request = tmp_path / "hsm.json"  # and approves, on the device, that its key pays custody only
    request.write_text(json.dumps({"approvers": {}, "rules": [{"wallet": "fleet", "to_wallets": ["custody"]}]}))
    subprocess.run([sys.executable, "-m", "custody_signer.cli", "hsm-policy", "--state", str(signer["state"]),
                    str(request)], check=True, capture_output=True)
    Syncer(sessions, rpc).sync_once()
    with sessions() as s:
        spec = registry.spec_of(registry.get_policy(s, "fleet"))
    addr = [spec.embit(0).derive(i).address(NETWORKS["regtest"]) for i in range(10)]
    spk = [spec.embit(0).derive(i).script_pubkey().data for i in range(10)]

    # the pools pay: Acme (FPPS) daily to addresses 0-4, one day's payout going to a thief's address;
    # Ocean (TIDES) inside coinbases to addresses 5-9
    paid = {}
    for n, day in enumerate(DAYS[:3]):
        outputs = [(spk[n], 40_000_000 + n)] + ([(OUTSIDER.wpkh, 7_000_000)] if n == 1 else [])
        change = funding[n].value - sum(v for _, v in outputs) - 10_000
        txid = rpc.sendrawtransaction(wallet.sign([funding[n]], outputs + [(wallet.wpkh, change)]))
        paid[day] = txid
        rpc.generatetoaddress(1, MINER)
    mature_cb = rpc.getblock(rpc.generatetoaddress(1, addr[5])[0], 2)["tx"][0]
    rpc.generatetoaddress(100, MINER)                                   # Ocean's first coinbase payout matures
    node_b = start_node(tmp_path / "b")
    rpc_b = NodeClient(node_b.url, cookie_file=node_b.cookie_file)
    try:
        for height in range(1, rpc.getblockcount() + 1):
            rpc_b.submitblock(rpc.getblock(rpc.getblockhash(height), 0))
        doomed_block = rpc.generatetoaddress(1, addr[6])[0]                       # it will be orphaned
        doomed_cb = rpc.getblock(doomed_block, 2)["tx"][0]
        Syncer(sessions, rpc).sync_once()
        for block in rpc_b.generatetoaddress(2, MINER):
            rpc.submitblock(rpc_b.getblock(block, 0))
    finally:
        node_b.stop()
    assert rpc.getblockheader(doomed_block)["confirmations"] == -1             # off the best chain
    assert rpc.gettxout(doomed_cb["txid"], 0, False) is None                  # its coinbase output is gone
    # What getrawtransaction says of that coinbase is not what flags it: Core with -txindex still returns it
    # from the stale block (confirmations 0), a node without the stale block's entry says "No such ...".
    try:
        seen = rpc.getrawtransaction(doomed_cb["txid"], True)
    except RPCError as e:
        assert e.code == -5 and "No such" in e.message
    else:
        assert seen["txid"] == doomed_cb["txid"] and seen["blockhash"] == doomed_block
        assert seen["confirmations"] == 0 and "in_active_chain" not in seen
    Syncer(sessions, rpc).sync_once()

    # the fleet: two miners for Acme, one for Ocean, polled over the CGMiner API at midnight, noon, midnight
    clock = ManualClock(MIDNIGHT)
    rigs = start_miners([SimulatedMiner("0.000000000000004", "acme.rig1", clock=clock),
                         SimulatedMiner("0.000000000000004", "acme.rig2", clock=clock),
                         SimulatedMiner("0.000000000000002", "ocean.rig3", clock=clock)])
    try:
        with sessions.begin() as s:
            acme_pool, ocean_pool = Pool(name="Acme", kind="foundry"), Pool(name="Ocean", kind="ocean")
            s.add_all([acme_pool, ocean_pool])
            s.flush()
            fleet_id = registry.get_policy(s, "fleet").id
            acme = PoolAccount(pool_id=acme_pool.id, name="acme", scheme="FPPS", pool_fee_bps=200, fee_method="foundry",
                               payout_threshold=10_000_000, schedule="daily", payout_addresses=json.dumps(addr[:5]),
                               fleet_policy_id=fleet_id)
            ocean = PoolAccount(pool_id=ocean_pool.id, name="ocean", scheme="TIDES", pool_fee_bps=200,
                                fee_method="average", payout_threshold=0, schedule="per-block",
                                payout_addresses=json.dumps(addr[5:]), fleet_policy_id=fleet_id)
            s.add_all([acme, ocean])
            s.flush()
            s.add_all([MiningDevice(serial=f"S21-{n}", model="S21", account_id=acme.id if n < 3 else ocean.id,
                                    worker=f"rig{n}", api_host=r.host, api_port=r.port)
                       for n, r in zip((1, 2, 3), rigs)])
        for _ in range(3):
            with sessions.begin() as s:
                report = telemetry.poll(s, s.scalars(select(MiningDevice)).all(), clock=clock)
                assert not report.failed
            clock.advance(timedelta(hours=12))
    finally:
        stop_miners(rigs)

    with sessions.begin() as s:
        acme = s.query(PoolAccount).filter_by(name="acme").one()
        ocean = s.query(PoolAccount).filter_by(name="ocean").one()
        work = telemetry.accepted_work(s, acme, MIDNIGHT, MIDNIGHT + timedelta(days=1)).difficulty
        exact = Fraction(work) * 2 ** 32 / 86_400
        hashrate = Decimal(exact.numerator) / Decimal(exact.denominator)
        owed = expected.expected_for_day(rpc, DAYS[3], scheme="fpps", pool_fee_bps=200, fee_method="foundry",
                                         hashrate=Decimal(f"{hashrate:.8f}")).expected
        statements.import_statement(s, acme, "csv", csv([
            ("earning", DAYS[0], DAYS[0], 45_000_000, None, None, None, None, None),
            ("payout", DAYS[1], "pay-1", 40_000_000, paid[DAYS[0]], addr[0], None, None, "paid"),
            ("payout", DAYS[1], "pay-2", 7_000_000, paid[DAYS[1]], OUTSIDER.address(), None, None, "paid"),
            ("earning", DAYS[1], DAYS[1], 30_000_000, None, None, None, None, None),
            # 28,000,000 sat unpaid after DAYS[1], over the threshold: no payout on DAYS[2]
            ("earning", DAYS[2], DAYS[2], 25_000_000, None, None, None, None, None),
            ("earning", DAYS[3], DAYS[3], owed * 90 // 100, None, None, f"{hashrate:.8f}", None, None),
        ]), actor="ops")
        statements.import_statement(s, ocean, "csv", csv([
            ("payout", DAYS[3], mature_cb["txid"], int(Decimal(str(mature_cb["vout"][0]["value"])) * 10 ** 8),
             mature_cb["txid"], addr[5], None, "true", "paid"),
            ("payout", DAYS[3], doomed_cb["txid"], int(Decimal(str(doomed_cb["vout"][0]["value"])) * 10 ** 8),
             doomed_cb["txid"], addr[6], None, "true", "paid"),
        ]), actor="ops")
        for account in (acme, ocean):
            reconcile.reconcile(s, rpc, account, DAYS[0], DAYS[3], tolerances=QUIET, sweep_fee_rate=2.0)
        found = reconcile.open_findings(s)
        flagged = {d.category: d for d in found}
    assert flagged["UNDERPAID_VS_EXPECTED"].day == DAYS[3]
    assert flagged["NON_WHITELISTED_DESTINATION"].ref.endswith("pay-2")
    assert flagged["MISSING_PAYOUT"].day == DAYS[2]
    assert [d.detail for d in found if d.category == "COINBASE_ORPHANED"] == [   # the one on the best chain is not
        f"payout transaction {doomed_cb['txid']} of {btc_to_sats(doomed_cb['vout'][0]['value'])} sat: "
        "its block left the best chain"]

    # everything else goes into custody, signed by the fleet's device through HWI under its own policy
    with sessions.begin() as s:
        made = sweeps.sweep(s, rpc, "fleet", "custody", actor="sweeper", fee_rate=2.0)
        spend_ids = [m.spend_id for m in made]
        assert made and not json.loads(made[0].deferred)
    for spend_id in spend_ids:
        with sessions.begin() as s:
            spend = spends.get_spend(s, spend_id)
            device_signing.sign_on_device(s, spend, devices.get(s, signer["serial"]), actor="Mia (mining ops)")
        spends.broadcast(sessions, spend_id, rpc, actor="sweeper")
    rpc.generatetoaddress(1, MINER)
    with sessions.begin() as s:
        assert all(spends.track(s, spends.get_spend(s, i), rpc).state == "confirmed" for i in spend_ids)
    Syncer(sessions, rpc).sync_once()
    with sessions() as s:
        left = ledger.balances(s, registry.get_policy(s, "fleet"))[0]
        into_custody = ledger.balances(s, registry.get_policy(s, "custody"))[0]
    swept = 40_000_000 + 40_000_001 + 40_000_002 + int(Decimal(str(mature_cb["vout"][0]["value"])) * 10 ** 8)
    assert left.total == 0
    assert into_custody.confirmed == swept - sum(m.fee for m in made)
