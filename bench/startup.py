"""Start-up of the `custody` command, whole commands with the interpreter's start included:
`custody --help`, `custody derive` of one address (its start) and of 20,000 2-of-3 wsh(sortedmulti) receive addresses, each as a
ratio to `python -c pass` measured in the same run (the median of several rounds). With BITCOIND set,
`custody derive` is also set against Bitcoin Core's `deriveaddresses` over the same range in the same
run, and both answers are checked to be the same addresses.

Core is timed over RPC alone (no bitcoin-cli start), which favours Core. Goals: `custody --help`
and `custody derive`'s start under 0.3 s; `custody derive` at least 3x as fast as Core's deriveaddresses.

    .venv/bin/python bench/startup.py           # BENCH_N=2000 BENCH_ROUNDS=3 for a smaller run
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from embit import bip32  # noqa: E402
from embit.networks import NETWORKS  # noqa: E402

from custody.bitcoin.derive import derive_addresses  # noqa: E402
from custody.bitcoin.policies import build_policy  # noqa: E402

N = int(os.environ.get("BENCH_N", "20000"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
CORE_RANGE = 1_000_000   # deriveaddresses refuses end >= begin + 1,000,000 (ParseDescriptorRange, src/rpc/util.cpp)


def account_key(seed_byte: int) -> str:
    root = bip32.HDKey.from_seed(bytes([seed_byte]) * 32, version=NETWORKS["regtest"]["xprv"])
    account = root.derive("m/48h/1h/0h/2h").to_public()
    return f"[{root.my_fingerprint.hex()}/48h/1h/0h/2h]{account.to_base58()}"


def policy():
    """The benchmarks' 2-of-3 wsh(sortedmulti) policy, on keys from fixed seeds."""
    return build_policy("wsh-sortedmulti", 2, [account_key(i) for i in (1, 2, 3)])


def custody_command() -> list[str]:
    """The installed `custody` script next to this interpreter, as people run it (else `python -m coordinator.cli.main`)."""
    script = Path(sys.executable).with_name("custody")
    return [str(script)] if script.exists() else [sys.executable, "-m", "coordinator.cli.main"]


def derive_command(n: int = N) -> list[str]:
    return custody_command() + ["derive", policy().descriptor(0), "--from", "0", "--to", str(n - 1)]


def seconds(argv: list[str], rounds: int = ROUNDS) -> float:
    """Median wall time of running argv to completion, its output discarded."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def core_deriveaddresses(bitcoind: str, n: int = N, rounds: int = ROUNDS) -> tuple[float, list[str]]:
    """Median seconds of Bitcoin Core's deriveaddresses over indexes 0..n-1 (calls of at most
    CORE_RANGE indexes, Core's limit), and the addresses it gave."""
    from custody.chain.node_client import NodeClient
    from regtest.launcher import start_node
    descriptor = policy().descriptor(0)        # with its checksum, which deriveaddresses requires
    with tempfile.TemporaryDirectory() as tmp:
        node = start_node(Path(tmp) / "core", bitcoind=bitcoind)
        try:
            rpc = NodeClient(node.url, cookie_file=node.cookie_file, timeout=3600)
            times, addresses = [], []
            for _ in range(rounds):
                start = time.perf_counter()
                addresses = [a for begin in range(0, n, CORE_RANGE)
                             for a in rpc.deriveaddresses(descriptor, [begin, min(begin + CORE_RANGE, n) - 1])]
                times.append(time.perf_counter() - start)
        finally:
            node.stop()
    return statistics.median(times), addresses


def check_derive_output(n: int = N) -> list[str]:
    """`custody derive`'s output, checked against the library's own derivation."""
    out = subprocess.run(derive_command(n), capture_output=True, text=True, check=True).stdout.split()
    if out != derive_addresses(policy(), 0, 0, n - 1):
        sys.exit("bench/startup.py: `custody derive` printed other addresses than custody.bitcoin.derive gives")
    return out


def main() -> None:
    ours = check_derive_output()
    baseline = seconds([sys.executable, "-c", "pass"])
    figures = {"python -c pass": baseline,
               "custody --help": seconds(custody_command() + ["--help"]),
               "custody derive (1 address: the start)": seconds(derive_command(1)),
               f"custody derive ({N:,} addresses)": seconds(derive_command())}
    print(f"whole commands, median of {ROUNDS} rounds, {os.cpu_count()} cores")
    print(f"{'':40} {'seconds':>8} {'vs python -c pass':>18}")
    for name, value in figures.items():
        print(f"{name:40} {value:8.3f} {value / baseline:17.1f}x")
    for name in ("custody --help", "custody derive (1 address: the start)"):
        print(f"goal: {name} under 0.3 s: {'met' if figures[name] < 0.3 else 'NOT met'}")
    bitcoind = os.environ.get("BITCOIND")
    if not bitcoind:
        print("(set BITCOIND=/path/to/bitcoind to set custody derive against Core's deriveaddresses in this run)")
        return
    core, addresses = core_deriveaddresses(bitcoind)
    if addresses != ours:
        sys.exit("bench/startup.py: Core's deriveaddresses and `custody derive` disagree")
    derive = figures[f"custody derive ({N:,} addresses)"]
    print(f"{'Core deriveaddresses, RPC (same run)':40} {core:8.3f}")
    print(f"custody derive (whole command) is {core / derive:.2f}x as fast as Core's deriveaddresses "
          f"(goal 3x: {'met' if core >= 3 * derive else 'NOT met'})")


if __name__ == "__main__":
    main()
