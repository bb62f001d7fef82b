"""Address derivation speed for a 2-of-3 wsh(sortedmulti) policy.

Measures, in the same run: the toolkit's derivation on every core (custody.derive), the same on one
core, and plain embit derivation (the baseline library). Bitcoin Core's `deriveaddresses` does about
7,000 addresses/s on this machine class (quoted by the issue, not measured here: no bitcoind);
the goal is at least twice that.

    python bench/derive.py
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from embit.networks import NETWORKS  # noqa: E402

from custody.derive import derive_addresses  # noqa: E402
from custody.policies import build_policy  # noqa: E402
from tests.conftest import hd_keys  # noqa: E402

CORE_QUOTED = 7_000
N = int(os.environ.get("BENCH_N", "40000"))


def rate(fn, count: int) -> float:
    start = time.perf_counter()
    fn()
    return count / (time.perf_counter() - start)


def main() -> None:
    spec = build_policy("wsh-sortedmulti", 2, hd_keys(3))
    network = NETWORKS["regtest"]
    embit_n = N // 20
    desc = spec.embit(0)
    baseline = rate(lambda: [desc.derive(i).script_pubkey().address(network) for i in range(embit_n)], embit_n)
    one = rate(lambda: derive_addresses(spec, 0, 0, N // 4 - 1, workers=1), N // 4)
    cores = os.cpu_count() or 1
    every = rate(lambda: derive_addresses(spec, 0, 0, N - 1, workers=cores), N)
    print(f"{'derivation, 2-of-3 wsh(sortedmulti)':42} {'addresses/s':>12} {'vs embit':>9} {'vs Core 7k':>11}")
    for name, value in ((f"plain embit ({embit_n:,})", baseline), (f"custody.derive, 1 core ({N // 4:,})", one),
                        (f"custody.derive, {cores} cores ({N:,})", every)):
        print(f"{name:42} {value:12,.0f} {value / baseline:8.1f}x {value / CORE_QUOTED:10.2f}x")


if __name__ == "__main__":
    main()
