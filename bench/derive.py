"""Address derivation speed for a 2-of-3 wsh(sortedmulti) policy, in addresses per second.

Measures, in the same run, on keys from fixed seeds (receive branch, regtest addresses):
  - custody.bitcoin.derive.derive_addresses on 2 processes (workers=2) over 20,000 indexes,
  - the same in this one process (workers=1) over 10,000 indexes,
  - plain embit, `spec.embit(0).derive(i).script_pubkey().address(...)`, over 2,000 indexes,
  - `custody derive` of the 20,000 as a whole command (interpreter start included),
each the median of several rounds, and checks that the fast path gave embit's addresses. With
BITCOIND set, Bitcoin Core's `deriveaddresses` over the same 20,000 indexes is measured in the same
run (over RPC, in calls within Core's range limit) and every rate is also given as a ratio to it;
without it, the ratios are to ~7,000 addresses/s, a figure QUOTED from the issue, not measured.

    .venv/bin/python bench/derive.py            # BENCH_N=40000 BENCH_ROUNDS=5 to change the sizes
"""
from __future__ import annotations

import os
import statistics
import sys
import time

repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, repo_root)

from embit.networks import NETWORKS  # noqa: E402

from bench.startup import check_derive_output, core_deriveaddresses, derive_command, policy, seconds  # noqa: E402
from custody.bitcoin import derive  # noqa: E402

CORE_QUOTED = 7_000     # addresses/s, Bitcoin Core's deriveaddresses on this machine, as the issue states it
FAST_N = int(os.environ.get("BENCH_N", "20000"))
ONE_CORE_N = FAST_N // 2
EMBIT_N = max(200, FAST_N // 10)
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))


def measure(fn, count: int) -> tuple[float, list]:
    """Median rate over ROUNDS rounds (addresses/s), and the last round's result."""
    rates, result = [], None
    for _ in range(ROUNDS):
        start = time.perf_counter()
        result = fn()
        rates.append(count / (time.perf_counter() - start))
    return statistics.median(rates), result


def main() -> None:
    spec = policy()
    network = NETWORKS["regtest"]
    desc = spec.embit(0)

    embit_rate, reference = measure(
        lambda: [desc.derive(i).script_pubkey().address(network) for i in range(EMBIT_N)], EMBIT_N)
    one_rate, one = measure(lambda: derive.derive_addresses(spec, 0, 0, ONE_CORE_N - 1, workers=1), ONE_CORE_N)
    two_rate, two = measure(lambda: derive.derive_addresses(spec, 0, 0, FAST_N - 1, workers=2), FAST_N)
    if one[:EMBIT_N] != reference or two[:ONE_CORE_N] != one:
        sys.exit("bench/derive.py: the fast path disagrees with embit")
    if check_derive_output(FAST_N) != two:
        sys.exit("bench/derive.py: `custody derive` disagrees with custody.bitcoin.derive")
    command_rate = FAST_N / seconds(derive_command(FAST_N), ROUNDS)

    bitcoind = os.environ.get("BITCOIND")
    if bitcoind:
        core_seconds, core_addresses = core_deriveaddresses(bitcoind, FAST_N, ROUNDS)
        if core_addresses != two:
            sys.exit("bench/derive.py: Core's deriveaddresses disagrees with custody.bitcoin.derive")
        core_rate, core_name = FAST_N / core_seconds, f"vs Core {FAST_N / core_seconds:,.0f}/s (measured)"
    else:
        core_rate, core_name = CORE_QUOTED, f"vs Core {CORE_QUOTED:,}/s (quoted)"

    print(f"2-of-3 wsh(sortedmulti) receive addresses, median of {ROUNDS} rounds, "
          f"{os.cpu_count()} cores, libsecp256k1 via {derive.BACKEND}")
    print(f"{'':48} {'addresses/s':>12} {'vs embit':>9} {core_name:>30}")
    rows = [(f"plain embit ({EMBIT_N:,})", embit_rate),
            (f"custody.bitcoin.derive, 1 process ({ONE_CORE_N:,})", one_rate),
            (f"custody.bitcoin.derive, workers=2 ({FAST_N:,})", two_rate),
            (f"custody derive, whole command ({FAST_N:,})", command_rate)]
    if bitcoind:
        rows.append((f"Core deriveaddresses, RPC ({FAST_N:,})", core_rate))
    for name, rate in rows:
        print(f"{name:48} {rate:12,.0f} {rate / embit_rate:8.1f}x {rate / core_rate:29.2f}x")
    print(f"`custody derive` of {FAST_N:,} takes {FAST_N / command_rate:.3f} s; Core's deriveaddresses "
          + (f"took {FAST_N / core_rate:.3f} s in this run" if bitcoind else
             f"would take {FAST_N / core_rate:.3f} s at the quoted rate (set BITCOIND to measure it)")
          + f"; the goal of 3x: {'met' if command_rate >= 3 * core_rate else 'NOT met'}.")
    print(f"workers=2 against twice Core's rate ({2 * core_rate:,.0f}/s): {'met' if two_rate >= 2 * core_rate else 'NOT met'}.")


if __name__ == "__main__":
    main()
