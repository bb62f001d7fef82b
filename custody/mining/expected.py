"""Expected mining earnings from the toolkit's own node: what a pool *should* have credited for a day.

Everything the formulas need (difficulty, subsidy, fees per block) is read from our own node, never
from the pool being checked. Arithmetic is exact: `Fraction` inside, integer satoshis out, floored once
at the end — so an expectation never claims a satoshi the exact formula does not give, and the ±1 %
reconciliation tolerances are not eaten by intermediate rounding. Floats are refused as inputs.

Work is either a "difficulty accepted" sum (the miners' monotonic counter: shares weighted by their
share difficulty, in difficulty-1 units) or a hashrate over a time; one difficulty-1 share is 2^32
hashes, the convention every pool uses.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from fractions import Fraction

from custody.chain.node_client import COIN, RPCError

TWO_32 = 2 ** 32
DAY_SECONDS = 86_400
# Blocks between halvings, by `getblockchaininfo`'s "chain" (Core names mainnet "main").
HALVING_INTERVAL = {"main": 210_000, "test": 210_000, "testnet4": 210_000, "signet": 210_000, "regtest": 150}
SCHEMES = ("pps", "fpps", "pplns", "tides", "solo")
FEE_METHODS = ("foundry", "average", "none")
FOUNDRY_TRIM = 3
# How far before the day's start a block's time may run ahead of the median time of its chain. Core
# accepts blocks up to 2 hours in the future, and the median of 11 lags the clock by about an hour at
# 10-minute blocks (more after slow hours). 12 hours is generous; it costs ~72 extra headers, one batch.
LOOKBACK_SECONDS = 12 * 3600
SEARCH_FANOUT = 32   # heights probed per threshold and round of the search: ~4 rounds for 900,000 blocks


# -- exact numbers ------------------------------------------------------------------------------------
def _exact(value, name: str = "value") -> Fraction:
    """int, Fraction, Decimal or str -> Fraction, exactly. Floats are refused: a float has already been
    rounded somewhere (write Fraction(12 * 10**13), Decimal("1.2e14") or "1.2e14")."""
    if isinstance(value, float):
        raise TypeError(f"{name} must be int, Fraction, Decimal or str, never float")
    if isinstance(value, str):
        value = Decimal(value.strip())
    if isinstance(value, Decimal) and not value.is_finite():
        raise ValueError(f"{name} is not finite: {value}")
    return Fraction(value)


def _positive(value, name: str) -> Fraction:
    v = _exact(value, name)
    if v <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return v


def _sats(value: Fraction) -> int:
    """The rounding rule: floor, once, at the end."""
    return math.floor(value)


def difficulty_from_bits(bits: int) -> Fraction:
    """Bitcoin Core's GetDifficulty, exactly: 0xffff / mantissa, shifted by 256 per exponent step from 29.
    The RPC's "difficulty" is this value as a double, printed with 16 significant digits."""
    shift, mantissa = (bits >> 24) & 0xFF, bits & 0x00FFFFFF
    if mantissa == 0:
        raise ValueError(f"bits {bits:#010x} encode a zero target")
    return Fraction(0xFFFF, mantissa) * Fraction(256) ** (29 - shift)


def block_subsidy(height: int, halving_interval: int = 210_000) -> int:
    """New coins in the block at `height`, in sats (Core's GetBlockSubsidy)."""
    halvings = height // halving_interval
    return 0 if halvings >= 64 else (50 * COIN) >> halvings


# -- the formulas ---------------------------------------------------------------------------------------
def pps_exact(work_difficulty, network_difficulty, subsidy) -> Fraction:
    """work / D × subsidy: each difficulty-1 share is worth subsidy / D (a block needs D of them)."""
    return _exact(work_difficulty, "work") / _positive(network_difficulty, "difficulty") * _exact(subsidy, "subsidy")


def pps(work_difficulty, network_difficulty, subsidy) -> int:
    """PPS credit in sats for `work_difficulty` accepted difficulty (the counter form of the note)."""
    return _sats(pps_exact(work_difficulty, network_difficulty, subsidy))


def work_from_hashrate(hashes_per_second, seconds) -> Fraction:
    """Hashes over a time, as difficulty-1 shares (2^32 hashes each)."""
    return _exact(hashes_per_second, "hashrate") * _exact(seconds, "seconds") / TWO_32


def pps_from_hashrate(hashes_per_second, seconds, network_difficulty, subsidy) -> int:
    """H·Δt / (D·2^32) × subsidy, in sats."""
    return _sats(pps_exact(work_from_hashrate(hashes_per_second, seconds), network_difficulty, subsidy))


def _pool_share(pool_fee_bps: int) -> Fraction:
    if not isinstance(pool_fee_bps, int) or isinstance(pool_fee_bps, bool) or not 0 <= pool_fee_bps <= 10_000:
        raise ValueError(f"pool fee must be whole basis points 0..10000, got {pool_fee_bps!r}")
    return 1 - Fraction(pool_fee_bps, 10_000)


def fpps(work_difficulty, network_difficulty, subsidy, *, fee_ratio, pool_fee_bps: int) -> int:
    """PPS × (1 + fee ratio) × (1 − pool fee), floored once (the pools' own statements round each of
    their parts — base, fee reward, pool fee — so they may differ from this by a satoshi or two)."""
    value = pps_exact(work_difficulty, network_difficulty, subsidy) * (1 + _exact(fee_ratio, "fee ratio"))
    return _sats(value * _pool_share(pool_fee_bps))


def fee_ratio(blocks, method: str) -> Fraction:
    """Fees over subsidies of the day's blocks (anything with `.fees` and `.subsidy`, in sats).

    - "foundry": drop the 3 highest- and 3 lowest-fee blocks, then Σ fees / Σ subsidy. With fewer than
      7 blocks it drops as many as it can from each end while keeping at least one block
      (k = min(3, (n − 1) // 2)): 6 blocks keep 2, 2 blocks keep 2, 1 keeps 1. Ties in fees are broken
      by height, which only matters when tied blocks have different subsidies (a halving day).
    - "average": Σ fees / Σ subsidy over all blocks.
    - "none": 0 (plain PPS).
    No blocks (or no subsidy left to divide by) gives 0.
    """
    if method not in FEE_METHODS:
        raise ValueError(f"fee method must be one of {', '.join(FEE_METHODS)}, got {method!r}")
    blocks = list(blocks)
    if method == "none" or not blocks:
        return Fraction(0)
    if method == "foundry":
        k = min(FOUNDRY_TRIM, (len(blocks) - 1) // 2)
        ranked = sorted(blocks, key=lambda b: (b.fees, getattr(b, "height", 0)))
        blocks = ranked[k:len(ranked) - k]
    subsidy = sum(b.subsidy for b in blocks)
    return Fraction(sum(b.fees for b in blocks), subsidy) if subsidy else Fraction(0)


def hashprice(network_difficulty, subsidy, avg_fees) -> Fraction:
    """Sats per TH/s per day: 1e12 · 86400 / (D · 2^32) × (subsidy + average fees per block), subsidy
    and fees in sats. A rate, not an amount, so it stays an exact Fraction (round it for display)."""
    return pps_exact(work_from_hashrate(10 ** 12, DAY_SECONDS), network_difficulty,
                     _exact(subsidy, "subsidy") + _exact(avg_fees, "fees"))


# -- the node's view of a day ----------------------------------------------------------------------------
@dataclass(frozen=True)
class BlockFacts:
    height: int
    hash: str
    time: int            # header time, seconds since the epoch (UTC)
    bits: int
    difficulty: Fraction
    subsidy: int         # sats
    fees: int            # sats, getblockstats "totalfee"


@dataclass(frozen=True)
class Segment:
    """A stretch of the day during which one (difficulty, subsidy) was being mined for."""
    start: int
    end: int
    difficulty: Fraction
    subsidy: int


@dataclass(frozen=True)
class DayNetwork:
    """The network's side of an accounting day.

    PPS credits each share at the difficulty (and subsidy) in force when it was submitted, i.e. those of
    the block being worked on. So the day is cut into segments at the moments they change (a retarget,
    a halving) and a day's work, taken as spread evenly over the day, is worth
    Σ_segments (Δt / T) · work · subsidy / D. `difficulty` and `subsidy` are the single pair that gives
    the same value: D is the time-weighted harmonic mean and the subsidy the 1/D-weighted mean. On an
    ordinary day they are simply the day's difficulty and subsidy.
    """
    day: str
    blocks: tuple[BlockFacts, ...]
    segments: tuple[Segment, ...]
    complete: bool       # a block proves the day is over (its median time is past the day's end)

    @property
    def block_count(self) -> int:
        return len(self.blocks)

    @property
    def subsidy_total(self) -> int:
        return sum(b.subsidy for b in self.blocks)

    @property
    def fees_total(self) -> int:
        return sum(b.fees for b in self.blocks)

    def _weights(self) -> tuple[Fraction, Fraction]:
        shares = sum(Fraction(s.end - s.start) / s.difficulty for s in self.segments)
        value = sum(Fraction(s.end - s.start) * s.subsidy / s.difficulty for s in self.segments)
        return shares, value

    @property
    def difficulty(self) -> Fraction:
        shares, _ = self._weights()
        return Fraction(DAY_SECONDS) / shares

    @property
    def subsidy(self) -> Fraction:
        shares, value = self._weights()
        return value / shares


def day_bounds(day: str) -> tuple[int, int]:
    """[start, end) of a UTC day "YYYY-MM-DD" in epoch seconds."""
    start = datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=timezone.utc)
    return int(start.timestamp()), int(start.timestamp()) + DAY_SECONDS


def _batch(client, calls: list[tuple[str, list]]) -> list:
    results = client.batch(calls)
    for r in results:
        if isinstance(r, RPCError):
            raise r
    return results


def _headers(client, heights: list[int]) -> list[dict]:
    hashes = _batch(client, [("getblockhash", [h]) for h in heights])
    return _batch(client, [("getblockheader", [h]) for h in hashes])


def _first_heights_with_mediantime(client, thresholds: list[int], tip: int) -> list[int]:
    """For each threshold, the lowest height whose median time is ≥ it (tip + 1 when none is).

    Searches on median time because it never decreases along the chain, while header times may
    (a block need only be later than the median of its 11 predecessors). Each round probes up to
    SEARCH_FANOUT heights per threshold in two batched calls, so a mainnet search takes about four
    rounds; the thresholds share the rounds and each other's probes.
    """
    bounds = [[0, tip + 1] for _ in thresholds]     # answer in [lo, hi]: below lo too early, from hi late enough
    while any(lo < hi for lo, hi in bounds):
        probes = set()
        for lo, hi in bounds:
            n = hi - lo
            k = min(SEARCH_FANOUT, n)
            probes |= {lo + n * i // (k + 1) for i in range(1, k + 1)}
        probes = sorted(probes)
        medians = dict(zip(probes, (h["mediantime"] for h in _headers(client, probes))))
        for bound, threshold in zip(bounds, thresholds):
            for p in probes:
                if bound[0] <= p < bound[1]:
                    if medians[p] >= threshold:
                        bound[1] = p
                        break
                    bound[0] = p + 1
    return [hi for _, hi in bounds]


def _chain_halving_interval(client) -> int:
    chain = client.getblockchaininfo()["chain"]
    if chain not in HALVING_INTERVAL:
        raise ValueError(f"unknown chain {chain!r}")
    return HALVING_INTERVAL[chain]


def _window(client, day: str) -> tuple[list[dict], bool, int]:
    """Consecutive headers covering the day, from before it started to one block past the first whose
    median time reaches its end (that block's successor may change the difficulty in force before the end).

    Upper end, exact: a block's time exceeds its parent's median time, so once a median time reaches
    the day's end no later block can fall in the day. Lower end, a margin: nothing in consensus bounds
    how far a block's time runs ahead of the median, so the scan starts LOOKBACK_SECONDS early.
    """
    start, end = day_bounds(day)
    tip = client.getblockcount()
    first, last = _first_heights_with_mediantime(client, [start - LOOKBACK_SECONDS, end], tip)
    first = max(0, min(first, tip) - 1)     # and its parent: when the first block's regime began
    heights = list(range(first, min(last + 1, tip) + 1))
    return _headers(client, heights), last <= tip, tip


def _segments(headers: list[dict], halving: int, start: int, end: int, tip: int) -> tuple[Segment, ...]:
    """Cut [start, end) where the (difficulty, subsidy) being mined for changes.

    Block h's difficulty and subsidy are in force from the time its parent was found until it is
    found. Header times stand in for when pools learned of each block; since they may go backwards,
    a running maximum keeps the change points in order. After the chain's tip, the tip's difficulty
    and the next height's subsidy are assumed (an unfinished day: see DayNetwork.complete).
    """
    regimes = []   # (from time, difficulty, subsidy)
    clock = None
    for prev, cur in zip([None] + headers, headers + [None]):
        if cur is None:
            if prev is None or prev["height"] != tip:
                break
            cur = {"height": tip + 1, "bits": prev["bits"]}
        if prev is not None:
            clock = prev["time"] if clock is None else max(clock, prev["time"])
        began = clock
        regime = (difficulty_from_bits(int(cur["bits"], 16)), block_subsidy(cur["height"], halving))
        if regimes and regimes[-1][1:] == regime:
            continue
        regimes.append((began, *regime))
    segments = []
    for i, (began, difficulty, subsidy) in enumerate(regimes):
        s = start if began is None else max(start, began)
        e = end if i + 1 == len(regimes) else min(end, regimes[i + 1][0])
        if e > s:
            segments.append(Segment(s, e, difficulty, subsidy))
    return tuple(segments)


def _facts(client, headers: list[dict], day: str, halving: int) -> list[BlockFacts]:
    start, end = day_bounds(day)
    inside = [h for h in headers if start <= h["time"] < end]
    stats = _batch(client, [("getblockstats", [h["hash"], ["totalfee", "subsidy"]]) for h in inside])
    facts = []
    for h, s in zip(inside, stats):
        bits = int(h["bits"], 16)
        subsidy = block_subsidy(h["height"], halving)
        if int(s["subsidy"]) != subsidy:
            raise ValueError(f"block {h['height']}: node reports subsidy {s['subsidy']}, expected {subsidy} "
                             "(wrong halving interval for this chain?)")
        facts.append(BlockFacts(h["height"], h["hash"], h["time"], bits, difficulty_from_bits(bits),
                                subsidy, int(s["totalfee"])))
    return facts


def day_blocks(client, day: str) -> list[BlockFacts]:
    """The blocks whose header time falls in the UTC day `YYYY-MM-DD`, by height. Header times are not
    monotonic, so these need not be a contiguous run of heights."""
    halving = _chain_halving_interval(client)
    headers, _, _ = _window(client, day)
    return _facts(client, headers, day, halving)


def day_network(client, day: str) -> DayNetwork:
    halving = _chain_halving_interval(client)
    headers, complete, tip = _window(client, day)
    start, end = day_bounds(day)
    return DayNetwork(day, tuple(_facts(client, headers, day, halving)),
                      _segments(headers, halving, start, end, tip), complete)


# -- what reconciliation stores ------------------------------------------------------------------------
@dataclass(frozen=True)
class Expected:
    """One pool account's expectation for one accounting day, next to the pool's statement.

    For PPS and FPPS it is what the pool owes. For PPLNS, TIDES and solo the day's figure is the same
    expectation (the work's share of the day's subsidy and fees, less the pool's fee; "average" is the
    natural fee method, as those schemes pay the fees of the blocks actually found): what is paid differs
    by luck, so those are compared over a rolling 30 days, luck reported apart from shortfall.
    """
    day: str
    scheme: str
    fee_method: str
    pool_fee_bps: int
    blocks: int               # the day's blocks on our node
    difficulty: Fraction      # DayNetwork.difficulty
    subsidy: Fraction         # DayNetwork.subsidy, sats
    fee_ratio: Fraction
    work: Fraction            # difficulty-1 shares credited (from `work`, or from `hashrate` over the day)
    hashrate: Fraction | None  # H/s, when given instead of work
    pps: int                  # sats
    expected: int             # sats: pps with the fee component, less the pool fee
    complete: bool


def expected_for_day(client, day: str, *, scheme: str, pool_fee_bps: int, fee_method: str,
                     work=None, hashrate=None, net: "DayNetwork | None" = None) -> Expected:
    """Expected earnings for a day's `work` (difficulty accepted) or average `hashrate` (H/s), assumed
    spread evenly over the day. PPS has no fee component, so it only takes fee_method "none"."""
    scheme = scheme.lower()
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {', '.join(SCHEMES)}, got {scheme!r}")
    if scheme == "pps" and fee_method != "none":
        raise ValueError("PPS pays no fee component: use fee_method 'none'")
    if (work is None) == (hashrate is None):
        raise ValueError("give either work (difficulty accepted) or hashrate (H/s), not both or neither")
    _pool_share(pool_fee_bps)
    shares = _exact(work, "work") if work is not None else work_from_hashrate(hashrate, DAY_SECONDS)
    net = net or day_network(client, day)      # a caller asking about one day many times passes it
    if not net.segments:
        raise ValueError(f"no block data covers {day}")
    ratio = fee_ratio(net.blocks, fee_method)
    return Expected(day, scheme, fee_method, pool_fee_bps, net.block_count, net.difficulty, net.subsidy, ratio,
                    shares, None if hashrate is None else _exact(hashrate, "hashrate"),
                    pps(shares, net.difficulty, net.subsidy),
                    fpps(shares, net.difficulty, net.subsidy, fee_ratio=ratio, pool_fee_bps=pool_fee_bps),
                    net.complete)
