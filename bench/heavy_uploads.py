"""/health while large PSBT checks and signature uploads are in progress, against `custody serve` on
loopback (issue 16, finding 6: a 15.4 MB upload held every request for 12.8 s, four large checks held
/health for 25.5 s).

One client asks /health on a fixed schedule (--rate per second; latency counted from when each request
was due, so a stalled server cannot hide its queue), first with the server idle, then while heavy
clients send, back to back: --checkers users each checking a PSBT of --check-inputs inputs
(/api/psbt/check) and --uploaders signatories each uploading one of --upload-inputs inputs to a spend
collecting signatures (/api/spends/{id}/signatures; the upload holds no new signature, so it is parsed,
merged and verified in full and then refused with 400, which is the work this measures). Printed: /health
p50, p99 and max idle and under the load, and p99 under load as a ratio to idle p99, same run.

    .venv/bin/python bench/heavy_uploads.py                    # 15 MB PSBTs, 30 s of load
    .venv/bin/python bench/heavy_uploads.py --seconds 10 --check-inputs 10000 --upload-inputs 5000
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import multiprocessing
import os
import queue
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PASSWORD = "bench password long enough"


def _compact(n: int) -> bytes:
    if n < 0xFD:
        return bytes([n])
    return b"\xfd" + n.to_bytes(2, "little") if n <= 0xFFFF else b"\xfe" + n.to_bytes(4, "little")


def _kv(key: bytes, value: bytes) -> bytes:
    return _compact(len(key)) + key + _compact(len(value)) + value


def big_psbt(inputs: int) -> bytes:
    """A well-formed PSBT spending `inputs` 2-of-3 P2WSH coins (witness UTXO, witness script, three
    derivations each: about 390 bytes an input)."""
    from coincurve import PrivateKey
    keys = [PrivateKey(bytes([i + 1]) * 32).public_key.format() for i in range(3)]
    witness_script = b"\x52" + b"".join(b"\x21" + k for k in keys) + b"\x53\xae"
    script = b"\x00\x20" + hashlib.sha256(witness_script).digest()
    tx = struct.pack("<i", 2) + _compact(inputs) + b"".join(
        hashlib.sha256(i.to_bytes(4, "little")).digest() + bytes(4) + b"\x00" + struct.pack("<I", 0xFFFFFFFD)
        for i in range(inputs)) + _compact(1) + struct.pack("<q", 1000) + _compact(len(script)) + script + bytes(4)
    path = b"".join(struct.pack("<I", x) for x in (0x80000030, 0x80000001, 0x80000000, 0x80000002, 0, 7))
    each = (_kv(b"\x01", struct.pack("<q", 100_000) + _compact(len(script)) + script) + _kv(b"\x05", witness_script)
            + b"".join(_kv(b"\x06" + k, bytes([j]) * 4 + path) for j, k in enumerate(keys)) + b"\x00")
    return b"psbt\xff" + _kv(b"\x00", tx) + b"\x00" + each * inputs + b"\x00"


def prepare(url: str, upload: bytes, checkers: int, uploaders: int) -> tuple[dict[str, str], int]:
    """Users with API tokens, and a spend collecting signatures whose PSBT is `upload`."""
    from embit import bip32
    from embit.networks import NETWORKS
    from coordinator import accounts
    from custody.ledger import registry
    from custody.store.db import open_database
    from custody.bitcoin.policies import build_policy
    from custody.spending.models import Spend

    keys = []
    for n in range(3):
        root = bip32.HDKey.from_seed(hashlib.sha256(f"bench device {n}".encode()).digest(),
                                     version=NETWORKS["regtest"]["xprv"])
        keys.append(f"[{root.my_fingerprint.hex()}/48h/1h/0h/2h]{root.derive('m/48h/1h/0h/2h').to_public().to_base58()}")
    sessions = open_database(url)
    tokens = {}
    with sessions.begin() as s:
        policy = registry.create_policy(s, "vault", build_policy("wsh-sortedmulti", 2, keys))
        registry.set_status(s, policy, "active")
        people = [(f"checker{i}", "viewer") for i in range(checkers)] \
            + [(f"signer{i}", "signatory") for i in range(uploaders)]
        for name, role in people:
            user, _ = accounts.create_user(s, name, role, PASSWORD)
            tokens[name], _ = accounts.create_token(s, user, "bench")
        spend = Spend(policy_id=policy.id, state="signing", requester="bench", destinations="[]", amount=1000,
                      fee_rate_milli=2000, psbt=base64.b64encode(upload).decode())
        s.add(spend)
        s.flush()
        spend_id = spend.id
    sessions.kw["bind"].dispose()
    return tokens, spend_id


async def probe(port: int, seconds: float, rate: float) -> list[float]:
    """/health (as a load balancer asks it: no token) on a fixed schedule over one keep-alive
    connection; latency from when each request was due."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    latencies, interval = [], 1 / rate
    due = time.perf_counter()
    deadline = due + seconds
    try:
        while due < deadline:
            wait = due - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write("GET /health HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
            await writer.drain()
            status = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            await reader.readexactly(length)
            if not status.startswith(b"HTTP/1.1 200"):
                raise SystemExit(f"/health answered {status.decode().strip()}")
            latencies.append(time.perf_counter() - due)
            due += interval
    finally:
        writer.close()
    return latencies


def heavy_client(base: str, token: str, path: str, body: bytes, content_type: str, stop, results) -> None:
    """Back-to-back requests until `stop` is set, in a process of its own (the probe's timing shares
    no interpreter with it); (route, status, seconds) of each goes to `results`."""
    import httpx
    with httpx.Client(base_url=base, timeout=600, headers={"authorization": f"Bearer {token}",
                                                            "content-type": content_type}) as client:
        while not stop.is_set():
            began = time.perf_counter()
            response = client.post(path, content=body)
            response.read()
            results.put((path.split("/")[2], response.status_code, time.perf_counter() - began))
            if response.status_code == 429:
                time.sleep(float(response.headers.get("retry-after", "1")))


def figures(latencies: list[float]) -> dict:
    latencies = sorted(latencies)
    pick = lambda q: latencies[min(int(len(latencies) * q), len(latencies) - 1)] * 1000    # noqa: E731
    return {"n": len(latencies), "p50": pick(0.5), "p99": pick(0.99), "max": latencies[-1] * 1000}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=30, help="length of each phase (idle, then loaded)")
    p.add_argument("--rate", type=float, default=10, help="/health requests per second")
    p.add_argument("--checkers", type=int, default=4, help="users checking PSBTs, one request at a time each")
    p.add_argument("--uploaders", type=int, default=1, help="signatories uploading PSBTs, one at a time each")
    p.add_argument("--check-inputs", type=int, default=38_000, help="inputs of the checked PSBT (38,000: 15 MB)")
    p.add_argument("--upload-inputs", type=int, default=38_000, help="inputs of the uploaded PSBT (38,000: 15 MB)")
    args = p.parse_args()

    from regtest.launcher import free_port, start_node
    check_psbt, upload = big_psbt(args.check_inputs), big_psbt(args.upload_inputs)
    check_body = json.dumps({"psbt": base64.b64encode(check_psbt).decode()}).encode()
    boundary = "benchboundary"
    upload_body = (f'--{boundary}\r\ncontent-disposition: form-data; name="file"; filename="s.psbt"\r\n'
                   f"content-type: application/octet-stream\r\n\r\n").encode() + upload + f"\r\n--{boundary}--\r\n".encode()
    print(f"checked PSBT: {args.check_inputs:,} inputs, {len(check_psbt) / 1e6:.1f} MB ({len(check_body) / 1e6:.1f} MB "
          f"as JSON); uploaded PSBT: {args.upload_inputs:,} inputs, {len(upload) / 1e6:.1f} MB")
    with tempfile.TemporaryDirectory(prefix="custody-bench-heavy-") as tmp:
        os.environ["CUSTODY_HOME"] = tmp
        url = f"sqlite:///{tmp}/custody.db"
        tokens, spend_id = prepare(url, upload, args.checkers, args.uploaders)
        node = start_node(Path(tmp) / "node")
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "coordinator.cli.main", "--node-cookie", str(node.cookie_file), "serve",
                                   "--db", url, "--node", node.url, "--port", str(port), "--workers", "1",
                                   "--sync-interval", "0"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  env={**os.environ, "CUSTODY_HOME": tmp})
        try:
            _wait_for(port)
            asyncio.run(probe(port, 2, args.rate))            # warm up
            idle = figures(asyncio.run(probe(port, args.seconds, args.rate)))
            context = multiprocessing.get_context("spawn")
            stop, results = context.Event(), context.Queue()
            base = f"http://127.0.0.1:{port}"
            clients = [context.Process(target=heavy_client, args=(base, tokens[f"checker{i}"], "/api/psbt/check",
                                                                   check_body, "application/json", stop, results))
                       for i in range(args.checkers)]
            clients += [context.Process(target=heavy_client, args=(base, tokens[f"signer{i}"],
                                                                    f"/api/spends/{spend_id}/signatures", upload_body,
                                                                    f"multipart/form-data; boundary={boundary}", stop,
                                                                    results))
                        for i in range(args.uploaders)]
            for c in clients:
                c.start()
            time.sleep(1)                      # the first bodies are on their way
            loaded = figures(asyncio.run(probe(port, args.seconds, args.rate)))
            stop.set()
            outcomes, durations = Counter(), []
            while any(c.is_alive() for c in clients) or not results.empty():
                try:
                    route, status, seconds = results.get(timeout=1)
                except queue.Empty:
                    continue
                outcomes[(route, status)] += 1
                durations.append(seconds)
            for c in clients:
                c.join()
            print(f"\nheavy load: {args.checkers} users checking, {args.uploaders} uploading, back to back; "
                  f"one server process, {os.cpu_count()} cores")
            print("  answers: " + ", ".join(f"{path} {status}: {n}" for (path, status), n in sorted(outcomes.items())))
            if durations:
                print(f"  heavy request duration: median {sorted(durations)[len(durations) // 2]:.1f} s, "
                      f"max {max(durations):.1f} s")
            print(f"\n  {'/health':24} {'requests':>9} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
            for name, r in (("idle", idle), ("under the heavy load", loaded)):
                print(f"  {name:24} {r['n']:>9,} {r['p50']:>8.1f} {r['p99']:>8.1f} {r['max']:>8.1f}")
            print(f"\n  p99 under load / p99 idle: {loaded['p99'] / idle['p99']:.1f}")
            return 0
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
