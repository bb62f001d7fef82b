"""`make demo`: the custody story so far, on the embedded regtest node.

Three signatories are issued reference signers (simulated devices, each its own process, reached only
through HWI). In the key ceremony each device proves it holds its key, the 2-of-3 policy is registered
on every device with a proof, and each holder confirms the first address their device shows. A miner
and a client pay the policy, and the ledger, kept in step with the node, shows the balance and every
coin. Then a treasury officer requests a payment, two other officers approve it (one also signs it for
the devices' own policy), two devices check and sign the PSBT, and the coordinator verifies,
broadcasts and follows it. Finally an auditor challenges the custodian: the quorum signs a proof of
reserves on two devices, which show the message, and the auditor verifies it on their own node, with
the clients' liabilities.
"""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path

import nacl.signing
from embit.psbt import PSBT
from sqlalchemy import select

from custody import ceremony, device_signing, devices, eventlog, ledger, registry, reserve_service, reserves, spends
from custody_signer.cli import main as signer_cli
from custody_signer.device import MODEL, shown_first_address
from custody_signer.hsm import approval_message
from custody_signer.simulator import spawn
from custody.models import EventLogEntry
from custody.db import open_database
from custody.node_client import NodeClient, btc_to_sats
from custody.sync import Syncer
from regtest.launcher import start_node
from regtest.testwallet import TestWallet, Utxo

SIGNATORIES = {"alice": "Alice (CFO)", "bob": "Bob (treasurer)", "carol": "Carol (board)"}
SERIALS: dict[str, str] = {}                       # holder -> the serial their device reports
APPROVERS = {name: nacl.signing.SigningKey.generate() for name in ("erin", "frank")}   # officers' approval keys


def table(rows: list[dict], columns: list[str]) -> None:
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in columns]
    print("  " + "  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for r in rows:
        print("  " + "  ".join(str(r[c]).ljust(w) for c, w in zip(columns, widths)))


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="custody-demo-") as tmp:
        os.environ["CUSTODY_HOME"] = tmp                  # the demo coordinator's own key, thrown away after
        node = start_node(Path(tmp) / "node")
        rpc = NodeClient(node.url, cookie_file=node.cookie_file)
        signers: list = []
        try:
            print(f"embedded regtest node (Bitcoin Core's consensus via libbitcoinkernel) on {node.url}\n")
            sessions = open_database(f"sqlite:///{tmp}/custody.db")
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
            pending_request(sessions)
            accounts_ = demo_accounts(sessions)
            if os.environ.get("DEMO_SERVE", "1") != "0":
                serve_console(tmp, node, accounts_)
        finally:
            for process in signers:
                process.terminate()
            node.stop()
    print("\nnext: `custody --help` for keys, policies, sync, balances, UTXOs, freezing and BIP-329 labels")
    return 0


DEMO_USERS = [("admin", "admin"), ("dana", "officer"), ("erin", "officer"), ("frank", "officer"),
              ("alice", "signatory"), ("bob", "signatory"), ("carol", "signatory"), ("audrey", "auditor"),
              ("victor", "viewer")]


def pending_request(sessions) -> None:
    """A second request left for the console: it waits in the officers' approvals queue."""
    with sessions.begin() as s:
        spend = spends.request_spend(s, registry.get_policy(s, "treasury"), "dana",
                                     [(TestWallet("demo payroll").address(), 50_000_000)], fee_rate=2.0,
                                     memo="payroll November")
        print(f"\nspend #{spend.id}: dana requests 0.5 BTC for payroll; it waits for approval in the console")


def demo_accounts(sessions) -> list[dict]:
    """Console accounts for each role; passwords and TOTP secrets are printed once, as at enrolment."""
    import secrets
    from custody import accounts
    made = []
    with sessions.begin() as s:
        for username, role in DEMO_USERS:
            password = f"demo-{username}-" + secrets.token_hex(3)
            _, secret = accounts.create_user(s, username, role, password, actor="demo")
            made.append({"user": username, "role": role, "password": password, "totp_secret": secret or "-"})
    return made


def serve_console(tmp: str, node, made: list[dict]) -> None:
    from coordinator.server import serve
    port = int(os.environ.get("DEMO_PORT", "8000"))
    print(f"\nthe web console: http://127.0.0.1:{port}/  (API docs at /docs; Ctrl-C stops the demo)")
    print("demo accounts (admins and officers log in with a code from an authenticator app holding the secret,")
    print("e.g. `python -c \"from custody.accounts import totp; print(totp('SECRET'))\"`):")
    table(made, ["user", "role", "password", "totp_secret"])
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
                                     fee_rate=2.0, memo="supplier invoice 2026-117")
        spend_id = spend.id
    print(f"\nspend #{spend_id}: dana requests 2 BTC to {supplier[:20]}… (rule: 2 approvals, 20 BTC per spend)")
    for officer in ("erin", "frank"):
        with sessions.begin() as s:
            state = spends.decide(s, spends.get_spend(s, spend_id), officer, True).state
        print(f"  approved by {officer:18} -> {state}")
    with sessions.begin() as s:
        spend = spends.create_psbt(s, spends.get_spend(s, spend_id), rpc)
        print(f"  PSBT built: {len(PSBT.from_string(spend.psbt).inputs)} input(s), fee {spend.fee} sat, coins reserved")
    with sessions.begin() as s:                               # erin signs for the devices' own policy
        spend = spends.get_spend(s, spend_id)
        key = APPROVERS["erin"]
        txid = PSBT.from_string(spend.psbt).tx.txid().hex()
        device_signing.add_approver_signature(s, spend, key.verify_key.encode().hex(),
                                              key.sign(approval_message(txid)).signature.hex(), actor="erin")
    print("  erin's approval signature attached (the devices' policy asks for one)")
    for holder in ("alice", "bob"):
        with sessions.begin() as s:
            spend = spends.get_spend(s, spend_id)
            device = devices.get(s, SERIALS[holder])
            device_signing.sign_on_device(s, spend, device, actor=holder)
            print(f"  {SIGNATORIES[holder]:18} device checked and signed through HWI -> verified, {spend.state}")
    with sessions.begin() as s:
        txid = spends.broadcast(s, spends.get_spend(s, spend_id), rpc)
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
            device_signing.sign_reserves_on_device(s, reserves.get_run(s, run_id), devices.get(s, SERIALS[holder]),
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
        policy = {"approvers": {n: k.verify_key.encode().hex() for n, k in APPROVERS.items()},
                  "rules": [{"wallet": "treasury", "max_amount": 20 * 100_000_000, "min_approvers": 1}]}
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
    from custody.models import Address
    policy = registry.get_policy(session, "treasury")
    rows = session.scalars(select(Address).where(Address.policy_id == policy.id, Address.branch == 0)
                           .order_by(Address.index).limit(5))
    return [{"address": a.address} for a in rows]


if __name__ == "__main__":
    sys.exit(main())
