"""`make demo`: the custody story so far, on the embedded regtest node.

Three signatories are issued reference signers (simulated devices, each its own process, reached only
through HWI). In the key ceremony each device proves it holds its key, the 2-of-3 policy is registered
on every device with a proof, and each holder confirms the first address their device shows. A miner
and a client pay the policy, and the ledger, kept in step with the node, shows the balance and every
coin. Then a treasury officer requests a payment, two other officers approve it by signing its
transaction with their own approval keys, two devices check those approvals and sign the PSBT, and the
coordinator verifies, broadcasts and follows it. Finally an auditor challenges the custodian: the quorum signs a proof of
reserves on two devices, which show the message, and the auditor verifies it on their own node, with
the clients' liabilities. Last, a mining fleet: its payout key on a fourth device that may pay the treasury
only, miners polled over the CGMiner API, a pool's day reconciled and the payouts swept into custody.
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

from embit.networks import NETWORKS
from embit.psbt import PSBT
from sqlalchemy import select

from custody.chain.node_client import btc_to_sats, NodeClient
from custody.devices import ceremony, inventory as devices
from custody.eventlog import log as eventlog
from custody.eventlog.models import EventLogEntry
from custody.ledger import coins as ledger, registry
from custody.ledger.sync import Syncer
from custody.mining import expected, fleet, reconcile, statements, sweeps, telemetry
from custody.mining.models import MiningDevice, Pool, PoolAccount
from custody.people import credentials
from custody.reserves import proofs as reserves, service as reserve_service
from custody.spending import device_signing, spends
from custody.store.db import open_database
from custody_signer.cli import main as signer_cli
from custody_signer.protocol import MODEL
from custody_signer.simulator import shown_first_address, spawn
from regtest.launcher import start_node
from regtest.miner import ManualClock, SimulatedMiner, start_miners, stop_miners
from regtest.testwallet import TestWallet, Utxo

SIGNATORIES = {"alice": "Alice (CFO)", "bob": "Bob (treasurer)", "carol": "Carol (board)"}
SERIALS: dict[str, str] = {}                       # holder -> the serial their device reports
OFFICERS = ("dana", "erin", "frank")
APPROVAL_KEYS: dict[str, Path] = {}                # officer -> their approval key file (the officer keeps it)


def table(rows: list[dict], columns: list[str]) -> None:
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in columns]
    print("  " + "  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for r in rows:
        print("  " + "  ".join(str(r[c]).ljust(w) for c, w in zip(columns, widths)))


def _stop(*_) -> None:
    raise KeyboardInterrupt


def main() -> int:
    # SIGTERM ends the demo as Ctrl-C does, so its node and signers are stopped with it (uvicorn re-raises
    # the signal once the console has shut down)
    signal.signal(signal.SIGTERM, _stop)
    with tempfile.TemporaryDirectory(prefix="custody-demo-") as tmp:
        os.environ["CUSTODY_HOME"] = tmp                  # the demo coordinator's own key, thrown away after
        node = start_node(Path(tmp) / "node")
        rpc = NodeClient(node.url, cookie_file=node.cookie_file)
        signers: list = []
        try:
            print(f"embedded regtest node (Bitcoin Core's consensus via libbitcoinkernel) on {node.url}\n")
            sessions = open_database(f"sqlite:///{tmp}/custody.db")
            accounts_ = demo_accounts(sessions)
            approval_keys(sessions, Path(tmp))
            key_ceremony(sessions, Path(tmp), signers)

            syncer = Syncer(sessions, rpc)
            syncer.sync_once()
            with sessions() as s:
                receive = [a["address"] for a in _addresses(s)]
            miner = TestWallet("demo miner")
            rpc.generatetoaddress(1, receive[0])                       # a coinbase straight into custody
            hashes = rpc.generatetoaddress(101, miner.address())
            coinbase = rpc.getblock(hashes[0], 2)["tx"][0]
            coin = Utxo(coinbase["txid"], 0, btc_to_sats(coinbase["vout"][0]["value"]), miner.wpkh)
            spk = [bytes.fromhex(rpc.validateaddress(a)["scriptPubKey"]) for a in receive[1:3]]
            txid = rpc.sendrawtransaction(miner.sign([coin], [(spk[0], 1_250_000_000), (spk[1], 300_000_000),
                                                              (miner.wpkh, coin.value - 1_550_000_000 - 2_000)]))
            print(f"client deposits 12.5 BTC and 3 BTC in {txid[:16]}…, mined")
            rpc.generatetoaddress(1, miner.address())
            report = syncer.sync_once()
            print(f"ledger synced to block {report.tip_height}\n")
            with sessions() as s:
                policy = registry.get_policy(s, "treasury")
                [balance] = ledger.balances(s, policy)
                print("balance (sat):")
                table([balance.to_json()], ["policy", "confirmed", "unconfirmed", "immature", "frozen", "total"])
                print("\nUTXOs:")
                table(ledger.list_utxos(s, policy), ["outpoint", "value", "state", "confirmations", "address"])
            spend_story(sessions, syncer, rpc)
            reserves_story(sessions, syncer, rpc, node, Path(tmp))
            fleet_story(sessions, syncer, rpc, Path(tmp), signers)
            pending = pending_request(sessions, rpc)
            if os.environ.get("DEMO_SERVE", "1") != "0":
                serve_console(tmp, node, accounts_, pending)
        finally:
            for process in signers:
                process.terminate()
            node.stop()
    print("\nnext: `custody --help` for keys, policies, sync, balances, UTXOs, freezing and BIP-329 labels")
    return 0


DEMO_USERS = [("admin", "admin"), ("dana", "officer"), ("erin", "officer"), ("frank", "officer"),
              ("alice", "signatory"), ("bob", "signatory"), ("carol", "signatory"), ("audrey", "auditor"),
              ("victor", "viewer")]


def pending_request(sessions, rpc) -> int:
    """A second request left for the console: it waits in the officers' approvals queue."""
    with sessions.begin() as s:
        spend = spends.request_spend(s, registry.get_policy(s, "treasury"), "dana",
                                     [(TestWallet("demo payroll").address(), 50_000_000)], fee_rate=2.0,
                                     memo="payroll November", client=rpc)
        print(f"\nspend #{spend.id}: dana requests 0.5 BTC for payroll; it waits for approval in the console")
        return spend.id


def approval_keys(sessions, tmp: Path) -> None:
    """Each officer makes an approval key file (`custody approver keygen`) and enrols its public key."""
    from coordinator.accounts import get_user
    (tmp / "officers").mkdir()
    for officer in OFFICERS:
        APPROVAL_KEYS[officer] = tmp / "officers" / f"{officer}-approval.pem"
        public = credentials.generate_key_file(APPROVAL_KEYS[officer])
        with sessions.begin() as s:
            credentials.enroll_key(s, get_user(s, officer), public, label="demo key file", actor=officer)
    print(f"officers {', '.join(OFFICERS)} enrolled their approval keys (key files in {tmp / 'officers'})\n")


def demo_accounts(sessions) -> list[dict]:
    """Console accounts for each role, enrolled at once with passwords and TOTP secrets printed for the
    people trying the demo. Demo only: a real account is made with an enrollment link (`custody user
    add`, the Users page), on which its holder sets credentials nobody else learns."""
    import secrets
    from coordinator import accounts
    made = []
    with sessions.begin() as s:
        for username, role in DEMO_USERS:
            password = f"demo-{username}-" + secrets.token_hex(3)
            _, secret = accounts.create_user(s, username, role, password, actor="demo")
            made.append({"user": username, "role": role, "password": password, "totp_secret": secret or "-"})
    return made


def serve_console(tmp: str, node, made: list[dict], pending: int) -> None:
    from coordinator.server import serve
    port = int(os.environ.get("DEMO_PORT", "8000"))
    print(f"\nthe web console: http://localhost:{port}/  (API docs at /docs; Ctrl-C stops the demo)")
    print("demo accounts (admins and officers log in with a code from an authenticator app holding the secret,")
    print("e.g. `python -c \"from coordinator.accounts import totp; print(totp('SECRET'))\"`):")
    table(made, ["user", "role", "password", "totp_secret"])
    print(f"to complete spend #{pending} in the console: erin and frank each open it and choose 'with a key file'")
    print(f"  ({APPROVAL_KEYS['erin']} and {APPROVAL_KEYS['frank']}); alice and bob each press")
    print("  'Sign on my device'; then an officer presses 'Broadcast'")
    sys.stdout.flush()
    try:
        serve(db_url=f"sqlite:///{tmp}/custody.db", node_url=node.url,
              node_options={"cookie_file": str(node.cookie_file), "network": "regtest"}, port=port, sync_interval=2.0)
    except KeyboardInterrupt:
        pass


def spend_story(sessions, syncer, rpc) -> None:
    supplier = TestWallet("demo supplier").address()
    with sessions.begin() as s:
        policy = registry.get_policy(s, "treasury")
        spends.set_approval_rule(s, policy, required_approvals=2, per_request_limit=20 * 100_000_000,
                                 daily_limit=50 * 100_000_000)
        spend = spends.request_spend(s, policy, "dana", [(supplier, 2 * 100_000_000)],
                                     fee_rate=2.0, memo="supplier invoice 2026-117", client=rpc)
        spend_id = spend.id
    print(f"\nspend #{spend_id}: dana requests 2 BTC to {supplier[:20]}… (rule: 2 approvals, 20 BTC per spend)")
    with sessions() as s:
        spend = spends.get_spend(s, spend_id)
        print(f"  PSBT built: {len(PSBT.from_string(spend.psbt).inputs)} input(s), fee {spend.fee} sat, coins reserved")
    for officer in ("erin", "frank"):                 # each signs the transaction with their own key file
        with sessions.begin() as s:
            spend = spends.get_spend(s, spend_id)
            proof = credentials.sign_with_key_file(APPROVAL_KEYS[officer], spends.approval_message(s, spend))
            state = spends.decide(s, spend, officer, True, proof).state
        print(f"  approved by {officer:18} -> {state} (signed with {officer}'s approval key)")
    for holder in ("alice", "bob"):
        with sessions.begin() as s:
            spend = spends.get_spend(s, spend_id)
            device = devices.get(s, SERIALS[holder])
            device_signing.sign_on_device(s, spend, device, actor=holder)
            print(f"  {SIGNATORIES[holder]:18} device checked and signed through HWI -> verified, {spend.state}")
    txid = spends.broadcast(sessions, spend_id, rpc)
    print(f"  broadcast {txid[:16]}… after the node's testmempoolaccept")
    rpc.generatetoaddress(1, TestWallet("demo miner").address())
    with sessions.begin() as s:
        state = spends.track(s, spends.get_spend(s, spend_id), rpc).state
    syncer.sync_once()
    with sessions() as s:
        [balance] = ledger.balances(s, registry.get_policy(s, "treasury"))
    print(f"  {state}; treasury balance now {balance.confirmed:,} sat")
    with sessions() as s:
        result = eventlog.verify(s, {eventlog.coordinator_key().public_hex})
        kinds = [e.kind for e in s.scalars(select(EventLogEntry).order_by(EventLogEntry.seq))]
    print(f"\nevent log: {len(kinds)} entries, each hash-chained and signed with the coordinator's ed25519 key")
    print("  " + " -> ".join(kinds))
    print(f"  custody log verify: {'OK' if result.ok else 'FAILED: ' + str(result.problem)} (head {result.head_hash[:16]}…)")
    if not result.ok:
        raise SystemExit(1)


def reserves_story(sessions, syncer, rpc, node, tmp: Path) -> None:
    """The auditor's challenge, a proof signed on two devices, and the auditor's own verification."""
    nonce = "audrey-" + secrets.token_hex(8)
    height = rpc.getblockcount()
    print(f"\nproof of reserves: auditor Audrey picks height {height} and sends nonce {nonce}")
    with sessions.begin() as s:
        run = reserves.create(s, rpc, nonce=nonce, audit="2026-Q4", custodian="Demo Treasury", height=height,
                              actor="dana")
        run_id = run.id
        print(f"  run #{run_id}: {run.coins} coins, {run.total:,} sat at height {height}; the message:")
        print("    " + run.message.replace("\n", "\n    "))
    for holder in ("alice", "carol"):
        with sessions.begin() as s:
            reserves.sign_reserves_on_device(s, reserves.get_run(s, run_id), devices.get(s, SERIALS[holder]),
                                                   actor=holder)
        print(f"  {SIGNATORIES[holder]:18} device showed the message and {run.total:,} sat, and signed through HWI")
    with sessions.begin() as s:
        package = reserves.finalize_run(s, reserves.get_run(s, run_id), actor="dana")
    (tmp / "package.json").write_text(json.dumps(package, indent=1))
    rpc.generatetoaddress(6, TestWallet("demo miner").address())          # the auditor wants height buried 6 deep
    syncer.sync_once()
    with sessions.begin() as s:
        verdict = reserve_service.self_check(s, rpc, run_id, actor="dana", min_depth=6)["report"]["verdict"]
    print(f"  package written ({package['txid'][:16]}…); the coordinator's own check: {verdict}")
    clients = "client,balance\n" + "".join(f"client-{n:03d},1.{n:02d}\n" for n in range(40))   # BTC, 47.8 in all
    (tmp / "balances.csv").write_text(clients)
    audit = [sys.executable, "-m", "audit.cli"]
    subprocess.run(audit + ["liabilities", "build", str(tmp / "balances.csv"), "--out", str(tmp / "liabilities")],
                   check=True, capture_output=True)
    print("  Audrey verifies on her own node (custody-audit verify), with the published liabilities:")
    done = subprocess.run(audit + ["verify", str(tmp / "package.json"), "--node", node.url, "--cookie",
                                   str(node.cookie_file), "--nonce", nonce, "--audit", "2026-Q4",
                                   "--liabilities", str(tmp / "liabilities" / "root.json"),
                                   "--key", str(tmp / "audrey.key"), "--auditor", "Audrey (auditor)",
                                   "--report", str(tmp / "report.json"), "--html", str(tmp / "report.html")],
                          capture_output=True, text=True)
    print("    " + done.stdout.strip().replace("\n", "\n    "))
    if done.returncode != 0:
        print(done.stderr, file=sys.stderr)
        raise SystemExit(1)


def fleet_story(sessions, syncer, rpc, tmp: Path, processes: list) -> None:
    """A mining fleet: its payout key on Mia's device, a pool paying daily, miners polled over the CGMiner
    API, the day reconciled (an under-payment flagged) and the payouts swept into the treasury."""
    process, info = spawn(tmp / "device-mia")
    processes.append(process)
    mia = "Mia (mining ops)"
    print(f"\nmining treasury: {mia} is issued device {info['serial']} for the fleet's payout wallet")
    with sessions.begin() as s:
        devices.connect(s, devices.issue(s, model=MODEL, serial=info["serial"], to=mia, actor="admin"), "regtest",
                        actor="admin")
        fleet.create_wallet(s, "fleet", info["serial"], "treasury", network="regtest", actor="admin")
    with sessions.begin() as s:
        fleet.confirm_wallet(s, "fleet", info["serial"], shown_first_address(tmp / "device-mia"), by=mia)
    (tmp / "policy-mia.json").write_text(json.dumps({"approvers": {},
                                                     "rules": [{"wallet": "fleet", "to_wallets": ["treasury"]}]}))
    signer_cli(["hsm-policy", "--state", str(tmp / "device-mia"), str(tmp / "policy-mia.json")])
    print("  wpkh payout wallet made from the device's key (proof of possession), treasury registered on it "
          "watch-only,\n  and Mia approved on the device a policy that pays the treasury only")
    with sessions() as s:
        spec = registry.spec_of(registry.get_policy(s, "fleet"))
    addresses = [spec.embit(0).derive(i).address(NETWORKS["regtest"]) for i in range(5)]
    miner = TestWallet("demo miner")
    coinbase = rpc.getblock(rpc.generatetoaddress(1, miner.address())[0], 2)["tx"][0]
    rpc.generatetoaddress(100, miner.address())
    coin = Utxo(coinbase["txid"], 0, btc_to_sats(coinbase["vout"][0]["value"]), miner.wpkh)
    payouts = [(bytes.fromhex(rpc.validateaddress(a)["scriptPubKey"]), 1_500_000 + n) for n, a in enumerate(addresses)]
    txids = []
    for n, payout in enumerate(payouts):                                  # five daily payouts
        change = coin.value - payout[1] - 2_000
        raw = miner.sign([coin], [payout, (miner.wpkh, change)])
        txids.append(rpc.sendrawtransaction(raw))
        coin = Utxo(txids[-1], 1, change, miner.wpkh)
        rpc.generatetoaddress(1, miner.address())
    syncer.sync_once()
    today = datetime.now(timezone.utc).date()
    midnight = datetime.combine(today, datetime.min.time(), tzinfo=timezone.utc)
    clock = ManualClock(midnight)
    rigs = start_miners([SimulatedMiner("0.000000000000004", f"acme.rig{n}", clock=clock) for n in (1, 2)])
    try:
        with sessions.begin() as s:
            pool = Pool(name="Acme Pool", kind="foundry")
            s.add(pool)
            s.flush()
            account = PoolAccount(pool_id=pool.id, name="acme", scheme="FPPS", pool_fee_bps=200, fee_method="foundry",
                                  payout_threshold=1_000_000, schedule="daily", payout_addresses=json.dumps(addresses),
                                  fleet_policy_id=registry.get_policy(s, "fleet").id)
            s.add(account)
            s.flush()
            s.add_all([MiningDevice(serial=f"S21-{n}", model="Antminer S21", account_id=account.id, worker=f"rig{n}",
                                    api_host=r.host, api_port=r.port) for n, r in zip((1, 2), rigs)])
        for _ in range(3):                                                # midnight, noon, midnight
            with sessions.begin() as s:
                telemetry.poll(s, s.scalars(select(MiningDevice)).all(), clock=clock)
            clock.advance(timedelta(hours=12))
    finally:
        stop_miners(rigs)
    days = [(today - timedelta(days=4 - n)).isoformat() for n in range(5)]
    with sessions.begin() as s:
        account = s.scalar(select(PoolAccount))
        work = telemetry.accepted_work(s, account, midnight, midnight + timedelta(days=1)).difficulty
        owed = expected.expected_for_day(rpc, days[-1], scheme="fpps", pool_fee_bps=200, fee_method="foundry",
                                         work=work).expected
        rows = [f"earning,{d},{d},{1_500_000 + n},," for n, d in enumerate(days[:-1])]
        rows += [f"payout,{d},pay-{n},{1_500_000 + n},{txid},{a}" for n, (d, txid, a) in
                 enumerate(zip(days, txids, addresses))]
        rows += [f"earning,{days[-1]},{days[-1]},{owed * 96 // 100},,"]   # the pool pays 96 % of the fleet's work
        statements.import_statement(s, account, "csv", "kind,day,key,amount_sats,txid,address\n" + "\n".join(rows),
                                    actor="ops")
        report = reconcile.reconcile(s, rpc, account, days[0], days[-1],
                                     tolerances=reconcile.Tolerances(telemetry_max_gap=timedelta(hours=13)))
        today_row = report.days[-1].to_json()
        print(f"  two miners polled over the CGMiner API; today the pool credited {today_row['paid']:,} sat for work "
              f"worth {today_row['expected_fleet']:,} sat\n  (at regtest's difficulty a few milli-hashes per second "
              "earn thousands of BTC a day)")
        for finding in report.findings:
            print(f"  flagged {finding.category} ({finding.severity}): {finding.detail}")
        made = sweeps.sweep(s, rpc, "fleet", "treasury", actor="sweeper", fee_rate=2.0)
        sweep_ids = [m.spend_id for m in made]
    for spend_id in sweep_ids:
        with sessions.begin() as s:
            spend = spends.get_spend(s, spend_id)
            device_signing.sign_on_device(s, spend, devices.get(s, info["serial"]), actor=mia)
        spends.broadcast(sessions, spend_id, rpc, actor="sweeper")
    rpc.generatetoaddress(1, miner.address())
    with sessions.begin() as s:
        states = [spends.track(s, spends.get_spend(s, i), rpc).state for i in sweep_ids]
    syncer.sync_once()
    with sessions() as s:
        left = ledger.balances(s, registry.get_policy(s, "fleet"))[0].total
        swept = sum(m.amount for m in made)
    print(f"  {len(made)} sweep of {sum(m.inputs for m in made)} payouts into the treasury, signed on Mia's device "
          f"under its policy: {', '.join(states)}, {swept:,} sat moved, {left} sat left in the fleet wallet")


def key_ceremony(sessions, tmp: Path, processes: list) -> None:
    """Issue a simulated device to each signatory and run the ceremony; each device's process is added to
    `processes` as soon as it starts, for the caller to stop."""
    os.environ["CUSTODY_SIGNER_DISCOVERY"] = str(tmp / "signers")
    states = {}
    for holder in SIGNATORIES:
        process, info = spawn(tmp / f"device-{holder}")
        processes.append(process)
        states[holder] = tmp / f"device-{holder}"
        SERIALS[holder] = info["serial"]
        with sessions.begin() as s:
            device = devices.issue(s, model=MODEL, serial=info["serial"], to=holder, actor="admin")
            devices.connect(s, device, "regtest", actor="admin")
        print(f"device issued to {SIGNATORIES[holder]:16} fingerprint {info['fingerprint']}, "
              f"firmware {info['firmware']['version']}")
        # the holder approves the device's own signing policy on the device itself
        with sessions() as s:
            approvers = credentials.device_approvers(s)
        policy = {"approvers": approvers,
                  "rules": [{"wallet": "treasury", "max_amount": 20 * 100_000_000, "min_approvers": 2}]}
        (tmp / f"policy-{holder}.json").write_text(json.dumps(policy))
        signer_cli(["hsm-policy", "--state", str(states[holder]), str(tmp / f"policy-{holder}.json")])
    serials = [SERIALS[holder] for holder in SIGNATORIES]
    with sessions.begin() as s:
        cid = ceremony.start(s, "treasury", 2, serials, actor="admin").id
    for serial in serials:
        with sessions.begin() as s:
            key = ceremony.collect_key(s, ceremony.get(s, cid), serial, "regtest", actor="admin")
            print(f"key ceremony: {serial:14} [{key.fingerprint}{key.path[1:]}]{key.xpub[:24]}… proof of possession OK")
    with sessions.begin() as s:
        policy = ceremony.register(s, ceremony.get(s, cid), "regtest", actor="admin")
        print(f"\npolicy 'treasury' registered on every device, each proof verified:\n  {policy.descriptor}")
    for holder, serial in zip(SIGNATORIES, serials):
        shown = shown_first_address(states[holder])
        with sessions.begin() as s:
            state = ceremony.confirm(s, ceremony.get(s, cid), serial, shown, by=holder).state
        print(f"  {SIGNATORIES[holder]:16} confirms the device shows {shown[:24]}… -> ceremony {state}")
    print()


def _addresses(session) -> list[dict]:
    from sqlalchemy import select
    from custody.ledger.models import Address
    policy = registry.get_policy(session, "treasury")
    rows = session.scalars(select(Address).where(Address.policy_id == policy.id, Address.branch == 0)
                           .order_by(Address.index).limit(5))
    return [{"address": a.address} for a in rows]


if __name__ == "__main__":
    sys.exit(main())
