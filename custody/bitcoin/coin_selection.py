"""Coin selection: branch-and-bound for a changeless spend, else the least-waste selection with change.

Waste (as Bitcoin Core defines it) = what the inputs cost now minus what they would cost at the
long-term fee rate, plus the cost of a change output (or the excess given to miners without one).
"""
from __future__ import annotations

from dataclasses import dataclass

BNB_MAX_TRIES = 100_000


@dataclass(frozen=True)
class Candidate:
    outpoint: str
    value: int           # sats
    input_vbytes: float  # what spending it adds to the transaction


@dataclass
class Selection:
    coins: list[Candidate]
    fee: int
    change: int          # 0 when changeless
    waste: float
    algorithm: str


class InsufficientFunds(ValueError):
    """The spendable coins cannot pay the amount and its fee."""


def _effective(c: Candidate, fee_rate: float) -> float:
    return c.value - c.input_vbytes * fee_rate


def select_coins(candidates: list[Candidate], target: int, *, fee_rate: float, base_vbytes: float,
                 change_vbytes: float, change_spend_vbytes: float, dust: int = 330,
                 long_term_fee_rate: float = 10.0) -> Selection:
    """`target` is the sum of the outputs; `base_vbytes` the transaction without inputs or change."""
    usable = [c for c in candidates if _effective(c, fee_rate) > 0]
    base_fee = base_vbytes * fee_rate
    cost_of_change = change_vbytes * fee_rate + change_spend_vbytes * long_term_fee_rate
    need = target + base_fee
    if sum(_effective(c, fee_rate) for c in usable) < need:
        raise InsufficientFunds(f"spendable coins cannot pay {target} sat plus fees at {fee_rate:g} sat/vB")
    best = _branch_and_bound(usable, need, cost_of_change, fee_rate, long_term_fee_rate)
    if best is not None:
        fee = sum(c.value for c in best) - target
        return Selection(best, fee, 0, _waste(best, fee_rate, long_term_fee_rate) + (sum(_effective(c, fee_rate) for c in best) - need), "bnb")
    return _with_change(usable, target, need, fee_rate, change_vbytes, cost_of_change, dust, long_term_fee_rate)


def _waste(coins, fee_rate: float, long_term: float) -> float:
    return sum(c.input_vbytes * (fee_rate - long_term) for c in coins)


def _branch_and_bound(coins, need: float, cost_of_change: float, fee_rate: float, long_term: float):
    """Depth-first search for inputs whose effective value lands in [need, need + cost_of_change]."""
    ordered = sorted(coins, key=lambda c: _effective(c, fee_rate), reverse=True)
    values = [_effective(c, fee_rate) for c in ordered]
    remaining = [0.0] * (len(values) + 1)
    for i in range(len(values) - 1, -1, -1):
        remaining[i] = remaining[i + 1] + values[i]
    best, best_waste, tries = None, float("inf"), 0
    stack = [(0, 0.0, ())]
    while stack and tries < BNB_MAX_TRIES:
        index, total, chosen = stack.pop()
        tries += 1
        if total > need + cost_of_change or total + remaining[index] < need:
            continue
        if total >= need:
            picked = [ordered[i] for i in chosen]
            waste = _waste(picked, fee_rate, long_term) + (total - need)
            if waste < best_waste:
                best, best_waste = picked, waste
            continue
        if index == len(ordered):
            continue
        stack.append((index + 1, total, chosen))                           # omit this coin
        stack.append((index + 1, total + values[index], chosen + (index,)))  # include it (explored first)
    return best


def _with_change(coins, target: int, need: float, fee_rate: float, change_vbytes: float,
                 cost_of_change: float, dust: int, long_term: float) -> Selection:
    """Largest effective values first until the target, its fee and a change output are paid."""
    need_with_change = need + change_vbytes * fee_rate
    picked, total = [], 0.0
    for c in sorted(coins, key=lambda c: _effective(c, fee_rate), reverse=True):
        picked.append(c)
        total += _effective(c, fee_rate)
        if total >= need_with_change + dust:
            break
    else:
        if total < need:
            raise InsufficientFunds("spendable coins cannot pay the amount plus fees")
    fee = int(-(-(need_with_change - target + sum(c.input_vbytes for c in picked) * fee_rate) // 1))
    change = sum(c.value for c in picked) - target - fee
    if change < dust:   # too small to be worth an output: give it to the miners
        fee += change
        change = 0
    return Selection(picked, fee, change, _waste(picked, fee_rate, long_term) + cost_of_change, "largest-first")
