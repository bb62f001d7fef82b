"""The soak: money moves exactly once while everything under it fails.

N clients spend from a 2-of-3 policy through `custody serve` on loopback for a fixed time (5 minutes
by default): each one requests a payment to a payee of its own (its transaction made and its coins
reserved), has it approved by a second officer signing it with his approval key, fetches the PSBT, signs it with two of the policy's devices, uploads both signatures and broadcasts,
retrying a step when the service answers 5xx. Meanwhile the embedded node is SIGKILLed and started
again, blocks are mined, and the chain is reorganised (the tip's last blocks replaced by a longer
branch). Then the chain settles, the coordinator catches up, and the run is judged against the node:

- payments made (payee outputs on the chain) against payments expected (spends the coordinator
  records as broadcast or confirmed), and payees paid twice (goal 0);
- coins reserved by two live spends at once (goal 0);
- records that disagree with the chain (goal 0): a spend 'confirmed' whose transaction is not in the
  best chain, 'broadcast' while the node knows nothing of it, a coin the ledger holds unspent that
  the chain has spent or never had;
- p99 latency of GET /api/spends and of GET /health, polled all along, and their ratio.

    .venv/bin/python bench/soak.py                      # 4 clients, 300 s
    .venv/bin/python bench/soak.py --seconds 60 --clients 2
Exit status 1 when a goal is missed. Bounded: it stops by itself and cleans up its temporary folder.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from embit import bip32  # noqa: E402
from embit.networks import NETWORKS  # noqa: E402
from embit.psbt import PSBT  # noqa: E402

from custody.chain.node_client import NodeClient, NodeError  # noqa: E402
from regtest.launcher import free_port, start_node  # noqa: E402
from regtest.testwallet import TestWallet  # noqa: E402
from tests import officers  # noqa: E402

SEED_BASE = 9100
COINS = 150                      # policy coins of 0.2 BTC each
PAYMENT = "0.01"
LIVE = ("requested", "approved", "signing", "signed", "broadcasting", "broadcast", "confirmed")   # hold their coins


def device(n: int) -> bip32.HDKey:
    return bip32.HDKey.from_seed(hashlib.sha256(f"test device {n}".encode()).digest(),
                                 version=NETWORKS["regtest"]["xprv"])


def account_keys() -> list[str]:
    keys = []
    for n in range(SEED_BASE, SEED_BASE + 3):
        root = device(n)
        keys.append(f"[{root.my_fingerprint.hex()}/48h/1h/0h/2h]{root.derive('m/48h/1h/0h/2h').to_public().to_base58()}")
    return keys


class Chain:
    """The embedded node, which the chaos thread kills and starts again on the same port and datadir."""

    def __init__(self, datadir: Path):
        self.datadir, self.port = datadir, free_port()
        self.node = start_node(datadir, port=self.port)
        self.branch = start_node(datadir.parent / "branch")      # where the other branch is mined
        self.lock = threading.Lock()
        self.kills = self.reorgs = self.blocks = 0

    def rpc(self) -> NodeClient:
        return NodeClient(self.node.url, cookie_file=self.node.cookie_file, timeout=30)

    def kill_and_restart(self) -> None:
        with self.lock:
            self.node.process.kill()
            self.node.process.wait()
            self.kills += 1
            time.sleep(1.0)
            self.node = start_node(self.datadir, port=self.port)

    def mine(self, address: str, count: int = 1) -> None:
        with self.lock:
            self.rpc().generatetoaddress(count, address)
            self.blocks += count

    def reorganise(self, address: str, depth: int = 2) -> bool:
        """Replace the last `depth` blocks by `depth + 1` others mined on a second node (Core's
        invalidateblock is not in the embedded node); the replaced blocks' transactions return to
        the mempool and are mined again later. False when too few blocks followed the last one."""
        with self.lock:
            rpc, branch = self.rpc(), NodeClient(self.branch.url, cookie_file=self.branch.cookie_file)
            fork = rpc.getblockcount() - depth
            for height in range(branch.getblockcount() + 1, fork + 1):
                branch.submitblock(rpc.getblock(rpc.getblockhash(height), 0))
            if branch.getblockcount() != fork or branch.getbestblockhash() != rpc.getblockhash(fork):
                return False
            for block_hash in branch.generatetoaddress(depth + 1, address):
                rpc.submitblock(branch.getblock(block_hash, 0))
            self.reorgs += 1
            self.blocks += depth + 1
            return True


def fund(chain: Chain, addresses: list[str]) -> None:
    from tests.conftest import mine_coins
    wallet = TestWallet("soak funder")
    coinbases = mine_coins(chain.rpc(), wallet, 2)
    from embit.script import address_to_scriptpubkey
    outputs = [(address_to_scriptpubkey(a).data, 20_000_000) for a in addresses]
    for coin, part in zip(coinbases, (outputs[:COINS // 2], outputs[COINS // 2:])):
        change = coin.value - sum(v for _, v in part) - 20_000
        chain.rpc().sendrawtransaction(wallet.sign([coin], part + [(wallet.wpkh, change)]))
    chain.mine(TestWallet("soak miner").address())


class Api:
    def __init__(self, port: int, tokens: dict[str, str]):
        self.base, self.tokens = f"http://127.0.0.1:{port}", tokens
        self.latency: dict[str, list[float]] = {"/api/spends": [], "/health": []}
        self.server_errors = 0

    def call(self, method: str, path: str, who: str | None = None, body=None, raw: bytes | None = None):
        headers = {"authorization": f"Bearer {self.tokens[who]}"} if who else {}
        data = None
        if body is not None:
            data, headers["content-type"] = json.dumps(body).encode(), "application/json"
        if raw is not None:
            boundary = "soakboundary"
            data = (f"--{boundary}\r\ncontent-disposition: form-data; name=\"file\"; filename=\"s.psbt\"\r\n"
                    f"content-type: application/octet-stream\r\n\r\n").encode() + raw + f"\r\n--{boundary}--\r\n".encode()
            headers["content-type"] = f"multipart/form-data; boundary={boundary}"
        request = urllib.request.Request(self.base + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as e:
            if e.code >= 500:
                self.server_errors += 1
            try:
                return e.code, json.loads(e.read() or b"null")
            except ValueError:
                return e.code, None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
            self.server_errors += 1
            return 599, {"detail": str(e)}

    def until_ok(self, stop: threading.Event, method: str, path: str, who: str, **kw):
        """Retry while the service answers 5xx (node or database away); return the first other answer."""
        while True:
            status, body = self.call(method, path, who, **kw)
            if status < 500 or stop.is_set():
                return status, body
            time.sleep(0.5)


def client(api: Api, number: int, stop: threading.Event, results: dict) -> None:
    rng = random.Random(number)
    k = 0
    while not stop.is_set():
        k += 1
        payee = TestWallet(f"soak payee {number}-{k}").address()
        status, spend = api.until_ok(stop, "POST", "/api/spends", "olga",
                                     body={"policy": "vault", "to": [{"address": payee, "amount": PAYMENT}], "fee_rate": 2})
        if status != 201:
            results["refused"].append(("request", status, spend))
            time.sleep(1)
            continue
        sid = spend["id"]
        results["payees"][sid] = payee
        status, asked = api.until_ok(stop, "POST", f"/api/spends/{sid}/approval-request", "omar")
        if status == 200:
            status, asked = api.until_ok(stop, "POST", f"/api/spends/{sid}/approve", "omar",
                                         body={"proof": officers.signed(asked["message"], "omar")})
        if status != 200:
            results["refused"].append(("approve", status, asked))
            api.until_ok(stop, "POST", f"/api/spends/{sid}/cancel", "omar")
            time.sleep(1)
            continue
        status, made = api.until_ok(stop, "POST", f"/api/spends/{sid}/psbt", "omar")
        if status != 200:
            results["refused"].append(("psbt", status, made))
            api.until_ok(stop, "POST", f"/api/spends/{sid}/cancel", "omar")
            time.sleep(1)
            continue
        psbt = PSBT.from_string(made["psbt"])
        for n, who in ((SEED_BASE, "sina"), (SEED_BASE + 1 + rng.randrange(2), "sina")):
            signed = PSBT.from_string(made["psbt"])
            signed.sign_with(device(n))
            api.until_ok(stop, "POST", f"/api/spends/{sid}/signatures", who, raw=signed.serialize())
        del psbt
        status, sent = api.until_ok(stop, "POST", f"/api/spends/{sid}/broadcast", "omar")
        results["broadcast_answers"][status] = results["broadcast_answers"].get(status, 0) + 1


def poller(api: Api, stop: threading.Event) -> None:
    while not stop.is_set():
        for path in ("/api/spends", "/health"):
            began = time.perf_counter()
            api.call("GET", path, "vic" if path != "/health" else None)
            api.latency[path].append(time.perf_counter() - began)
        time.sleep(0.2)


def chaos(chain: Chain, stop: threading.Event, log: list[str]) -> None:
    miner = TestWallet("soak miner").address()
    began, next_kill, next_reorg = time.monotonic(), 45.0, 25.0
    while not stop.wait(3.0):
        elapsed = time.monotonic() - began
        try:
            if elapsed >= next_kill:
                next_kill += 45.0
                chain.kill_and_restart()
                log.append(f"{elapsed:5.0f} s  node killed (SIGKILL) and started again")
            elif elapsed >= next_reorg:
                next_reorg += 45.0
                depth = 2 + chain.reorgs % 3
                if chain.reorganise(miner, depth=depth):
                    log.append(f"{elapsed:5.0f} s  reorganisation: the last {depth} blocks replaced by {depth + 1}")
            else:
                chain.mine(miner)
        except NodeError as e:
            log.append(f"{elapsed:5.0f} s  node call failed: {e}")


def judge(chain: Chain, db_url: str, payees: dict[int, str], descriptors: list[str]) -> dict:
    from sqlalchemy import select
    from custody.store.db import open_database
    from custody.ledger.models import Utxo
    from custody.spending.models import Spend
    from embit.script import address_to_scriptpubkey
    rpc, sessions = chain.rpc(), open_database(db_url)
    with sessions() as s:
        spend_rows = list(s.scalars(select(Spend)))
        unspent = [(u.txid, u.vout, u.height) for u in s.scalars(select(Utxo).where(Utxo.spent_txid.is_(None)))]
    by_script = {address_to_scriptpubkey(a).data.hex(): sid for sid, a in payees.items()}
    scan = rpc.scantxoutset("start", [f"addr({a})" for a in payees.values()])
    paid: dict[int, int] = {}
    for u in scan["unspents"]:
        sid = by_script[u["scriptPubKey"]]
        paid[sid] = paid.get(sid, 0) + 1
    expected = {sp.id for sp in spend_rows if sp.state in ("broadcast", "confirmed")}
    mempool = set(rpc.getrawmempool())
    disagree, holders = [], {}
    for sp in spend_rows:
        if sp.state in LIVE and sp.psbt:
            for i in PSBT.from_string(sp.psbt).inputs:
                holders.setdefault(f"{i.txid.hex()}:{i.vout}", set()).add(sp.id)
        if sp.state == "confirmed":
            info = rpc.getrawtransaction(sp.txid, True)
            if info.get("confirmations", 0) < 1:
                disagree.append(f"spend #{sp.id} is confirmed; its transaction is not in the best chain")
        elif sp.state == "broadcast" and sp.txid not in mempool:
            disagree.append(f"spend #{sp.id} is broadcast; the node has it neither in the mempool nor mined")
        if paid.get(sp.id) and sp.state not in ("broadcast", "confirmed"):
            disagree.append(f"spend #{sp.id} is {sp.state}; its payee was paid")
    for txid, vout, height in unspent:
        if height is not None and rpc.gettxout(txid, vout, False) is None:
            disagree.append(f"coin {txid}:{vout} is unspent in the ledger; the chain has spent it or never had it")
    held = {f"{txid}:{vout}" for txid, vout, _ in unspent}
    for u in rpc.scantxoutset("start", [{"desc": d, "range": 2 * COINS} for d in descriptors])["unspents"]:
        if f"{u['txid']}:{u['vout']}" not in held:
            disagree.append(f"coin {u['txid']}:{u['vout']} of the policy is on the chain; the ledger lacks it")
    return {"expected": len(expected), "made": sum(paid.values()),
            "paid_twice": sum(1 for n in paid.values() if n > 1),
            "missing": sorted(expected - set(paid)),
            "double_reserved": sum(1 for h in holders.values() if len(h) > 1),
            "disagree": disagree, "states": {st: sum(1 for sp in spend_rows if sp.state == st)
                                             for st in sorted({sp.state for sp in spend_rows})}}


def settle(chain: Chain, db_url: str, timeout: float = 120) -> None:
    """Mine until the coordinator has followed every broadcast to the chain and synced to the tip."""
    from sqlalchemy import select
    from custody.store.db import open_database
    from custody.ledger.coins import tip_height
    from custody.spending.models import Spend
    sessions, miner = open_database(db_url), TestWallet("soak miner").address()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        chain.mine(miner)
        time.sleep(2.5)
        with sessions() as s:
            pending = s.scalars(select(Spend.id).where(Spend.state.in_(("broadcasting", "broadcast")))).all()
            synced = tip_height(s) == chain.rpc().getblockcount()
        if not pending and synced:
            return
    print(f"  (the coordinator had not settled after {timeout:.0f} s)")


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] * 1000 if len(values) >= 2 else float("nan")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--seconds", type=float, default=300)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="custody-soak-") as tmp:
        home = Path(tmp)
        os.environ["CUSTODY_HOME"] = tmp
        db_url = f"sqlite:///{home}/custody.db"
        from coordinator import accounts
        from custody.people import credentials
        from custody.ledger import registry
        from custody.spending import spends
        from custody.store.db import open_database
        from custody.bitcoin.policies import build_policy
        sessions = open_database(db_url)
        tokens = {}
        with sessions.begin() as s:
            for name, role in (("olga", "officer"), ("omar", "officer"), ("sina", "signatory"), ("vic", "viewer")):
                user, _ = accounts.create_user(s, name, role, "correct horse battery staple")
                tokens[name], _ = accounts.create_token(s, user, "soak")
                if name == "omar":          # the approving officer's key (the bench holds its private half)
                    credentials.enroll_key(s, user, officers.public_hex(name), label="soak", actor="soak")
            spec = build_policy("wsh-sortedmulti", 2, account_keys())
            policy = registry.create_policy(s, "vault", spec, gap_limit=COINS + 20)
            registry.set_status(s, policy, "active")
            spends.set_approval_rule(s, policy, required_approvals=1, daily_limit=10**15)
        addresses = [spec.embit(0).derive(i).script_pubkey().address(NETWORKS["regtest"]) for i in range(COINS)]
        chain = Chain(home / "node")
        fund(chain, addresses)
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "coordinator.cli.main", "--node-cookie", str(chain.node.cookie_file),
                                   "serve", "--db", db_url, "--node", chain.node.url, "--port", str(port),
                                   "--workers", "1", "--sync-interval", "1"],
                                  stdout=open(home / "serve.log", "ab"), stderr=subprocess.STDOUT,
                                  env={**os.environ, "CUSTODY_HOME": tmp})
        api = Api(port, tokens)
        try:
            for _ in range(300):
                if api.call("GET", "/health")[0] == 200:
                    break
                time.sleep(0.1)
            stop, log = threading.Event(), []
            results = {"payees": {}, "refused": [], "broadcast_answers": {}}
            threads = [threading.Thread(target=client, args=(api, n, stop, results)) for n in range(args.clients)]
            threads += [threading.Thread(target=poller, args=(api, stop)),
                        threading.Thread(target=chaos, args=(chain, stop, log))]
            began = time.monotonic()
            for t in threads:
                t.start()
            stop.wait(args.seconds)
            stop.set()
            for t in threads:
                t.join()
            print(f"soak: {args.clients} clients, {time.monotonic() - began:.0f} s, {chain.kills} node kills, "
                  f"{chain.reorgs} reorganisations, {chain.blocks} blocks")
            for line in log:
                print("  " + line)
            settle(chain, db_url)
            verdict = judge(chain, db_url, results["payees"], [spec.descriptor(0), spec.descriptor(1)])
        finally:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
            chain.node.stop()
            chain.branch.stop()
    spends_p99, health_p99 = p99(api.latency["/api/spends"]), p99(api.latency["/health"])
    print(f"  spend states at the end: {verdict['states']}")
    print(f"  payments made {verdict['made']}, payments expected {verdict['expected']}, "
          f"payees paid twice {verdict['paid_twice']} (goal 0), expected but unpaid {len(verdict['missing'])} (goal 0)")
    print(f"  coins double-reserved: {verdict['double_reserved']} (goal 0)")
    print(f"  records that disagree with the chain: {len(verdict['disagree'])} (goal 0)")
    for line in verdict["disagree"][:10]:
        print("    " + line)
    reasons = sorted({f"{step}: {(body or {}).get('detail')}" for step, _, body in results["refused"]})
    print(f"  refusals: {len(results['refused'])} {reasons[:3]}, 5xx answers retried: {api.server_errors}")
    print(f"  GET /api/spends p99 {spends_p99:.1f} ms over {len(api.latency['/api/spends'])} polls; "
          f"GET /health p99 {health_p99:.1f} ms; ratio {spends_p99 / health_p99:.2f}")
    ok = (verdict["made"] == verdict["expected"] and not verdict["paid_twice"] and not verdict["double_reserved"]
          and not verdict["disagree"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
