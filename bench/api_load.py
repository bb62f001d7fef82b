"""The API under load: 50 concurrent clients for 60 seconds on loopback against `custody serve`, on the
coin listing over a ledger of 100,000 coins and on a spend's status.

Two loads per endpoint:
- bounded: each client sends --rate requests per second on a fixed schedule (a person's console,
  polling pages, a script), latency measured from when the request was due, so a slow server
  cannot hide its queue (no coordinated omission). This is the load the goal is stated for.
- saturation: each client sends its next request as soon as the last one answered: the most the
  service serves, and what latency then is.
Each endpoint's figures are also printed as a ratio to `/health` (one SELECT 1 and one RPC to the node)
measured by the same clients in the same run. Goal: p99 under 100 ms under the bounded load.

    .venv/bin/python bench/api_load.py                      # 100,000 coins, 50 clients, 60 s per phase
    .venv/bin/python bench/api_load.py --seconds 5 --utxos 5000 --saturation-seconds 3
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def build_ledger(url: str, count: int, seed: int = 7) -> tuple[str, int]:
    """A 2-of-3 policy holding `count` coins (written straight into the ledger), a viewer's API token
    and one spend request. Returns (token, spend id)."""
    import hashlib
    from embit import bip32
    from embit.networks import NETWORKS
    from sqlalchemy import insert, select
    from coordinator import accounts
    from custody.ledger import registry
    from custody.spending import spends
    from custody.store.db import open_database
    from custody.ledger.models import Address, Block, Utxo
    from custody.bitcoin.policies import build_policy
    from regtest.testwallet import TestWallet

    keys = []
    for n in range(3):
        root = bip32.HDKey.from_seed(hashlib.sha256(f"bench device {n}".encode()).digest(),
                                     version=NETWORKS["regtest"]["xprv"])
        keys.append(f"[{root.my_fingerprint.hex()}/48h/1h/0h/2h]{root.derive('m/48h/1h/0h/2h').to_public().to_base58()}")
    sessions = open_database(url)
    rng = random.Random(seed)
    with sessions.begin() as s:
        policy = registry.create_policy(s, "vault", build_policy("wsh-sortedmulti", 2, keys), gap_limit=2000)
        registry.set_status(s, policy, "active")
        s.add(Block(height=5000, hash="00" * 32, time=1_700_000_000))
        addresses = list(s.scalars(select(Address.id)))
        for start in range(0, count, 20_000):
            s.execute(insert(Utxo), [
                {"policy_id": policy.id, "address_id": addresses[n % len(addresses)],
                 "txid": f"{rng.getrandbits(256):064x}", "vout": n % 4, "value": int(10 ** rng.uniform(3, 9.5)),
                 "height": rng.randrange(1, 5001), "coinbase": n % 50 == 0, "frozen": n % 997 == 0,
                 "freeze_reason": "bench" if n % 997 == 0 else None}
                for n in range(start, min(start + 20_000, count))])
        spends.set_approval_rule(s, policy, required_approvals=1)
        spend = spends.request_spend(s, policy, "olga", [(TestWallet("bench payee").address(), 100_000)],
                                     fee_rate=2.0, memo="bench")
        user, _ = accounts.create_user(s, "bench", "viewer", "bench password long enough")
        token, _ = accounts.create_token(s, user, "bench")
        return token, spend.id


async def _client(port: int, token: str, paths, deadline: float, rate: float | None, latencies: list[float],
                  errors: list[str]) -> None:
    """One keep-alive HTTP/1.1 connection; fixed schedule when `rate` is given, else back to back."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    interval = 1 / rate if rate else 0
    due = time.perf_counter() + random.random() * interval
    try:
        while True:
            if rate:
                wait = due - time.perf_counter()
                if wait > 0:
                    await asyncio.sleep(wait)
            start = due if rate else time.perf_counter()
            if start >= deadline:
                return
            writer.write(f"GET {paths()} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
            await writer.drain()
            status_line = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - start)
            if not status_line.startswith(b"HTTP/1.1 200"):
                errors.append(status_line.decode().strip())
            due += interval
    finally:
        writer.close()


def run_phase(port: int, token: str, paths, clients: int, seconds: float, rate: float | None) -> dict:
    latencies: list[float] = []
    errors: list[str] = []

    async def main():
        deadline = time.perf_counter() + seconds
        await asyncio.gather(*(_client(port, token, paths, deadline, rate, latencies, errors) for _ in range(clients)))
    began = time.perf_counter()
    asyncio.run(main())
    elapsed = time.perf_counter() - began
    latencies.sort()
    pick = (lambda q: latencies[min(int(len(latencies) * q), len(latencies) - 1)] * 1000) if latencies else (lambda q: 0)
    return {"n": len(latencies), "rps": len(latencies) / elapsed, "p50": pick(0.50), "p99": pick(0.99),
            "max": latencies[-1] * 1000 if latencies else 0, "errors": errors}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--seconds", type=float, default=60, help="length of each bounded phase")
    p.add_argument("--saturation-seconds", type=float, default=20, help="length of each saturation phase")
    p.add_argument("--rate", type=float, default=2.0, help="requests per second per client under the bounded load")
    p.add_argument("--utxos", type=int, default=100_000)
    p.add_argument("--workers", type=int, default=2, help="server processes (the machine has 2 cores)")
    args = p.parse_args()

    from regtest.launcher import free_port, start_node
    with tempfile.TemporaryDirectory(prefix="custody-bench-api-") as tmp:
        os.environ["CUSTODY_HOME"] = tmp
        url = f"sqlite:///{tmp}/custody.db"
        began = time.perf_counter()
        token, spend_id = build_ledger(url, args.utxos)
        print(f"ledger: {args.utxos:,} coins written in {time.perf_counter() - began:.1f} s")
        node = start_node(Path(tmp) / "node")
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "coordinator.cli.main", "--node-cookie", str(node.cookie_file), "serve",
                                   "--db", url, "--node", node.url, "--port", str(port), "--workers", str(args.workers),
                                   "--sync-interval", "0"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  env={**os.environ, "CUSTODY_HOME": tmp})
        try:
            _wait_for(port)
            rng = random.Random(1)
            pages = max(args.utxos // 50, 1)
            listing = [lambda: "/api/utxos?sort=height&order=desc",
                       lambda: f"/api/utxos?sort=value&order=desc&offset={rng.randrange(pages) * 50}",
                       lambda: f"/api/utxos?sort=outpoint&offset={rng.randrange(pages) * 50}",
                       lambda: "/api/utxos?state=frozen",
                       lambda: f"/api/utxos?q={rng.getrandbits(8):02x}"]
            endpoints = [("/health (baseline)", lambda: "/health"),
                         ("/api/utxos (mix of 5 queries)", lambda: rng.choice(listing)()),
                         (f"/api/spends/{spend_id}", lambda: f"/api/spends/{spend_id}")]
            failed = False
            for mode, seconds, rate in (("bounded", args.seconds, args.rate), ("saturation", args.saturation_seconds, None)):
                load = f"{args.clients} clients x {rate:g} req/s" if rate else f"{args.clients} clients back to back"
                print(f"\n{mode}: {load}, {seconds:g} s per endpoint, {args.workers} server processes")
                print(f"  {'endpoint':32} {'requests':>9} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}"
                      f" {'p50/health':>10} {'p99/health':>10}")
                baseline = None
                for name, paths in endpoints:
                    r = run_phase(port, token, paths, args.clients, seconds, rate)
                    baseline = baseline or r
                    print(f"  {name:32} {r['n']:>9,} {r['rps']:>7.0f} {r['p50']:>8.1f} {r['p99']:>8.1f} {r['max']:>8.1f}"
                          f" {r['p50'] / baseline['p50']:>10.2f} {r['p99'] / baseline['p99']:>10.2f}")
                    if r["errors"]:
                        failed = True
                        print(f"    {len(r['errors'])} non-200 responses, e.g. {r['errors'][0]}")
                    if mode == "bounded" and name != endpoints[0][0]:
                        verdict = "met" if r["p99"] < 100 else "NOT met"
                        print(f"    goal p99 < 100 ms: {verdict}")
            return 1 if failed else 0
        finally:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
            node.stop()


def _wait_for(port: int) -> None:
    import urllib.request
    for _ in range(300):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("the service did not start")


if __name__ == "__main__":
    sys.exit(main())
