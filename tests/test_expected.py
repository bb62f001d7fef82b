"""Expected mining earnings: the formulas with exact numbers, and a day's blocks read from the node."""
from __future__ import annotations

import hashlib
from decimal import Context, Decimal, ROUND_HALF_EVEN
from fractions import Fraction
from types import SimpleNamespace

import pytest

from custody.mining.expected import (DayNetwork, Segment, block_subsidy, day_blocks, day_bounds, day_network,
                              difficulty_from_bits, expected_for_day, fee_ratio, fpps, hashprice, pps,
                              pps_exact, pps_from_hashrate, work_from_hashrate)
from custody.chain.node_client import NodeClient
from regtest.testwallet import TestWallet, Utxo

REGTEST_DIFFICULTY = Fraction(0xFFFF, 0x7FFFFF * 2 ** 24)
BTC = 100_000_000


# -- difficulty and subsidy -------------------------------------------------------------------------------
def as_printed(value) -> Decimal:
    """What Bitcoin Core's RPC shows: the value as a double, printed with 16 significant digits (UniValue),
    one fewer than round-trips. Only this rounded form can be compared with the exact value."""
    return Context(prec=16).create_decimal(float(value))


def test_difficulty_from_bits_is_cores_getdifficulty_exactly():
    assert difficulty_from_bits(0x1D00FFFF) == 1
    assert difficulty_from_bits(0x207FFFFF) == REGTEST_DIFFICULTY
    assert as_printed(REGTEST_DIFFICULTY) == Decimal("4.656542373906925E-10")   # Core's regtest "difficulty"
    # mainnet block 840,000 (the fourth halving): bits 17034219, difficulty 86388558925171.02
    d = difficulty_from_bits(0x17034219)
    assert d == Fraction(18446462598732840960, 213529)
    assert as_printed(d) == Decimal("86388558925171.02")     # exactly 86388558925171.0149…


def test_subsidy_halves_by_chain():
    assert block_subsidy(0) == block_subsidy(209_999) == 50 * BTC
    assert block_subsidy(210_000) == 25 * BTC
    assert block_subsidy(840_000) == 312_500_000
    assert block_subsidy(149, 150) == 50 * BTC and block_subsidy(150, 150) == 25 * BTC
    assert block_subsidy(64 * 150, 150) == 0


# -- PPS, FPPS, hashprice -----------------------------------------------------------------------------------
def test_pps_counter_form_and_floor():
    assert pps(1000, 1000, 312_500_000) == 312_500_000            # a block's worth of work earns the subsidy
    assert pps(1, 3, 10) == 3                                      # 3.33… floors
    assert pps_exact(1, 3, 10) == Fraction(10, 3)
    assert pps(Decimal("0.5"), "1", 7) == 3
    with pytest.raises(TypeError):
        pps(1.0, 1000, 10)                                         # floats are refused
    with pytest.raises(ValueError):
        pps(1, 0, 10)


def test_foundrys_worked_example():
    """1 PH/s for a day at D = 21,448,277,761,059, subsidy 6.25 BTC -> 0.0058619 BTC (Foundry's figure,
    published to 7 decimals; exactly it is 0.005861941…)."""
    sats = pps_from_hashrate(10 ** 15, 86_400, 21_448_277_761_059, 625_000_000)
    assert sats == 586_194
    assert (Decimal(sats) / BTC).quantize(Decimal("0.0000001"), ROUND_HALF_EVEN) == Decimal("0.0058619")
    assert work_from_hashrate(10 ** 15, 86_400) == Fraction(10 ** 15 * 86_400, 2 ** 32)


def test_hashprice_sanity_check():
    """D = 1.2e14, subsidy 3.125 BTC, fees 0.03 BTC per block -> about 52.9 sats per TH per day."""
    hp = hashprice(Fraction(12 * 10 ** 13), 312_500_000, 3_000_000)
    assert hp == Fraction(10 ** 12 * 86_400 * 315_500_000, 12 * 10 ** 13 * 2 ** 32)
    assert round(float(hp), 1) == 52.9
    assert hashprice("1.2e14", 312_500_000, 3_000_000) == hp


def test_fpps_floors_once_at_the_end():
    # a block's worth of work, 5 % fees, 2.5 % pool fee: 6.25 BTC × 1.05 × 0.975 exactly
    assert fpps(1000, 1000, 625_000_000, fee_ratio=Fraction(1, 20), pool_fee_bps=250) == 639_843_750
    # Foundry's example again: 586,194.14… sats; × 1.01 = 592,056.08… -> 592,056 (not 586,194 × 1.01 = 592,055.94)
    work = work_from_hashrate(10 ** 15, 86_400)
    assert fpps(work, 21_448_277_761_059, 625_000_000, fee_ratio=Fraction(1, 100), pool_fee_bps=0) == 592_056
    assert fpps(work, 21_448_277_761_059, 625_000_000, fee_ratio=0, pool_fee_bps=0) == 586_194
    for bad in (-1, 10_001, 2.5, "250"):
        with pytest.raises(ValueError):
            fpps(1, 1, 1, fee_ratio=0, pool_fee_bps=bad)


# -- fee ratio ------------------------------------------------------------------------------------------------
def blocks(fees, subsidy=312_500_000, first_height=1):
    subsidies = [subsidy] * len(fees) if isinstance(subsidy, int) else subsidy
    return [SimpleNamespace(height=first_height + i, fees=f, subsidy=s)
            for i, (f, s) in enumerate(zip(fees, subsidies))]


def test_foundry_drops_three_highest_and_three_lowest_by_fees():
    day = blocks([5_000, 100_000, 7_000, 3_000, 50_000, 9_000, 1_000_000, 2_000, 8_000, 6_000])
    # sorted: 2k 3k 5k | 6k 7k 8k 9k | 50k 100k 1M
    assert fee_ratio(day, "foundry") == Fraction(6_000 + 7_000 + 8_000 + 9_000, 4 * 312_500_000)
    assert fee_ratio(day, "average") == Fraction(1_190_000, 10 * 312_500_000)
    assert fee_ratio(day, "none") == 0
    with pytest.raises(ValueError):
        fee_ratio(day, "median")


def test_foundry_trim_with_fewer_than_seven_blocks_keeps_at_least_one():
    assert fee_ratio(blocks([1, 2, 3, 4, 5, 6, 7]), "foundry") == Fraction(4, 312_500_000)       # k = 3
    assert fee_ratio(blocks([1, 2, 3, 4, 5, 6]), "foundry") == Fraction(3 + 4, 2 * 312_500_000)  # k = 2
    assert fee_ratio(blocks([10, 20, 30]), "foundry") == Fraction(20, 312_500_000)               # k = 1
    assert fee_ratio(blocks([10, 20]), "foundry") == Fraction(30, 2 * 312_500_000)               # k = 0
    assert fee_ratio(blocks([10]), "foundry") == Fraction(10, 312_500_000)
    assert fee_ratio([], "foundry") == fee_ratio([], "average") == 0


def test_foundry_ties_in_fees_break_by_height():
    # across a halving: the tied zero-fee blocks of heights 1..4 pay 50 BTC, 5..8 pay 25 BTC
    day = blocks([0] * 8, subsidy=[50 * BTC] * 4 + [25 * BTC] * 4) + blocks([100], 25 * BTC, first_height=9)
    # lowest three dropped: heights 1, 2, 3; highest three: 9 (fee 100), then 8, 7 (the higher heights)
    assert fee_ratio(day, "foundry") == 0
    kept = sorted(day, key=lambda b: (b.fees, b.height))[3:-3]
    assert [b.height for b in kept] == [4, 5, 6]


# -- a day's representative difficulty and subsidy -----------------------------------------------------------
def test_day_network_weights_by_time_piecewise():
    half = 43_200
    segments = (Segment(0, half, Fraction(100), 50), Segment(half, 2 * half, Fraction(300), 50))
    net = DayNetwork("2024-01-01", (), segments, True)
    assert net.difficulty == 150           # the time-weighted harmonic mean: 86400 / (43200/100 + 43200/300)
    assert net.subsidy == 50
    # a halving at 15:35 at constant difficulty: the subsidy is the time-weighted mean
    net = DayNetwork("2024-01-01", (), (Segment(0, 56_100, Fraction(7), 50 * BTC),
                                        Segment(56_100, 86_400, Fraction(7), 25 * BTC)), True)
    assert net.difficulty == 7
    assert net.subsidy == Fraction(56_100 * 50 * BTC + 30_300 * 25 * BTC, 86_400)


# -- on the node -------------------------------------------------------------------------------------------
MINER = TestWallet("expected miner")
OTHER = TestWallet("expected payee")
DAY = "2024-04-19"
START, END = day_bounds(DAY)
PREV = START - 86_400
# heights of the test day carrying fee-paying transactions, and their fees (block 150 has two)
FEES = {115: [5_000], 118: [100_000], 121: [7_000], 124: [3_000], 127: [50_000], 130: [9_000],
        140: [1_000_000], 145: [2_000], 150: [8_000, 600], 155: [6_000], 163: [12_345]}


def block_times() -> dict[int, int]:
    """Header times, not monotonic at either end of the test day (each is still after its parent's
    median time, which is all consensus asks)."""
    t = {h: PREV + 600 * h for h in range(1, 110)}          # the day before, up to 18:10
    t[110] = START + 120                                     # 00:02 of the day...
    t[111] = START - 120                                     # ...then a block stamped 23:58 the day before
    t.update({h: START + 600 + 1500 * (h - 112) for h in range(112, 161)})   # 00:10 .. 20:10, the halving at 150
    t[161] = END - 1                                         # 23:59:59: in
    t[162] = END                                             # 00:00:00 next day: out
    t[163] = END - 300                                       # 23:55, after a next-day block: in
    t.update({h: END + 600 * (h - 163) for h in range(164, 176)})   # the next day
    return t


def sha256d(b: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(b).digest()).digest()


def mine_at(rpc, when: int, address: str, txs=()) -> str:
    """A block with the header time we choose: a template from generateblock, re-stamped and re-solved
    (the embedded node has no setmocktime)."""
    raw = bytearray.fromhex(rpc.generateblock(address, list(txs), False)["hex"])
    raw[68:72] = when.to_bytes(4, "little")
    target = 0x7FFFFF << (8 * (0x20 - 3))
    for nonce in range(1 << 24):
        raw[76:80] = nonce.to_bytes(4, "little")
        if int.from_bytes(sha256d(bytes(raw[:80])), "little") <= target:
            break
    assert rpc.submitblock(raw.hex()) is None
    return rpc.getbestblockhash()


@pytest.fixture(scope="module")
def chain(rpc):
    """Genesis (2011) then 175 blocks on 2024-04-18..20, with fee-paying transactions on the 19th and one
    on the 18th (block 111), spending the coinbases of blocks 1..13."""
    assert rpc.getblockcount() == 0
    times = block_times()
    coins: list[Utxo] = []
    fee_plan = {**FEES, 111: [777]}
    for height in range(1, 176):
        txs = []
        for fee in fee_plan.get(height, []):
            coin = coins.pop(0)
            txs.append(MINER.sign([coin], [(OTHER.wpkh, coin.value - fee)]))
        block_hash = mine_at(rpc, times[height], MINER.address(), txs)
        if height <= 13:
            out = rpc.getblock(block_hash, 2)["tx"][0]
            coins.append(Utxo(out["txid"], 0, int(out["vout"][0]["value"] * BTC),
                              bytes.fromhex(out["vout"][0]["scriptPubKey"]["hex"])))
    assert rpc.getblockcount() == 175
    return times


def test_day_blocks_are_the_blocks_stamped_in_the_day(rpc, chain):
    facts = day_blocks(rpc, DAY)
    assert [b.height for b in facts] == [110, *range(112, 162), 163]
    hashes = rpc.batch([("getblockhash", [b.height]) for b in facts])
    for b, block_hash in zip(facts, hashes):
        header = rpc.getblockheader(block_hash)
        assert (b.hash, b.time, b.bits) == (block_hash, chain[b.height], 0x207FFFFF)
        assert b.difficulty == REGTEST_DIFFICULTY and as_printed(b.difficulty) == as_printed(header["difficulty"])
        assert b.subsidy == (50 * BTC if b.height < 150 else 25 * BTC)          # regtest halves at 150
        assert b.fees == sum(FEES.get(b.height, [])) == rpc.getblockstats(block_hash, ["totalfee"])["totalfee"]
    assert [b.height for b in day_blocks(rpc, "2024-04-18")] == [*range(1, 110), 111]
    assert day_blocks(rpc, "2024-04-18")[-1].fees == 777
    assert [b.height for b in day_blocks(rpc, "2024-04-20")] == [162, *range(164, 176)]
    assert day_blocks(rpc, "2024-04-17") == [] and day_blocks(rpc, "2024-04-21") == []


def test_a_day_is_a_few_round_trips(node, chain):
    class Counting(NodeClient):
        requests = 0

        def _exchange(self, payload):
            Counting.requests += 1
            return super()._exchange(payload)

    day_blocks(Counting(node.url, cookie_file=node.cookie_file), DAY)
    assert Counting.requests <= 12     # tip, chain, the search (two calls a round), the window's headers (two), fees


def test_day_network_cuts_the_day_at_the_halving(rpc, chain):
    net = day_network(rpc, DAY)
    assert net.complete and net.block_count == 52
    # block 150's subsidy is mined for from the moment block 149 was found
    assert net.segments == (Segment(START, chain[149], REGTEST_DIFFICULTY, 50 * BTC),
                            Segment(chain[149], END, REGTEST_DIFFICULTY, 25 * BTC))
    assert net.difficulty == REGTEST_DIFFICULTY
    assert net.subsidy == Fraction((chain[149] - START) * 50 * BTC + (END - chain[149]) * 25 * BTC, 86_400)
    assert net.subsidy_total == 39 * 50 * BTC + 13 * 25 * BTC
    assert net.fees_total == sum(sum(f) for f in FEES.values())
    assert not day_network(rpc, "2024-04-20").complete        # the chain has not yet moved past it


def test_expected_for_day(rpc, chain):
    work = REGTEST_DIFFICULTY * 10                            # ten blocks' worth of work
    e = expected_for_day(rpc, DAY, scheme="FPPS", pool_fee_bps=200, fee_method="foundry", work=work)
    # foundry trim of the day's 52 blocks: the three lowest are fee-less blocks 110, 112, 113 (by height);
    # the three highest are 140, 118 and 127
    kept = [h for h in [110, *range(112, 162), 163] if h not in (110, 112, 113, 140, 118, 127)]
    ratio = Fraction(sum(sum(FEES.get(h, [])) for h in kept),
                     sum(50 * BTC if h < 150 else 25 * BTC for h in kept))
    subsidy = Fraction((chain[149] - START) * 50 * BTC + (END - chain[149]) * 25 * BTC, 86_400)
    assert (e.blocks, e.difficulty, e.subsidy, e.fee_ratio) == (52, REGTEST_DIFFICULTY, subsidy, ratio)
    assert e.pps == int(10 * subsidy)
    assert e.expected == int(10 * subsidy * (1 + ratio) * Fraction(98, 100))
    assert e.work == work and e.hashrate is None and e.complete

    by_rate = expected_for_day(rpc, DAY, scheme="fpps", pool_fee_bps=200, fee_method="foundry",
                               hashrate=work * 2 ** 32 / 86_400)
    assert (by_rate.pps, by_rate.expected) == (e.pps, e.expected)

    pplns = expected_for_day(rpc, DAY, scheme="pplns", pool_fee_bps=0, fee_method="average", work=work)
    average = Fraction(sum(sum(f) for f in FEES.values()), 39 * 50 * BTC + 13 * 25 * BTC)
    assert pplns.fee_ratio == average and pplns.expected == int(10 * subsidy * (1 + average))

    plain = expected_for_day(rpc, DAY, scheme="pps", pool_fee_bps=0, fee_method="none", work=work)
    assert plain.expected == plain.pps == e.pps
    with pytest.raises(ValueError):
        expected_for_day(rpc, DAY, scheme="pps", pool_fee_bps=0, fee_method="foundry", work=work)
    with pytest.raises(ValueError):
        expected_for_day(rpc, DAY, scheme="fpps", pool_fee_bps=0, fee_method="none", work=work, hashrate=1)


# -- a mainnet-sized chain, simulated: the search, and a retarget inside the day -----------------------------
class FakeMainnet:
    """Just enough of Core's RPC for custody.mining.expected: 900,000 ten-minute blocks whose times wobble by up
    to ±500 s (so they go backwards now and then), and a retarget at height 840,672 in the middle of DAY."""
    RETARGET = 840_672

    def __init__(self):
        self.base = START + 43_200 - 600 * self.RETARGET
        self.requests = 0

    def time(self, h):
        return self.base + 600 * h + ((h * 37) % 11 - 5) * 100

    def header(self, h):
        last11 = sorted(self.time(i) for i in range(max(0, h - 10), h + 1))
        return {"height": h, "hash": f"{h:064x}", "time": self.time(h), "mediantime": last11[len(last11) // 2],
                "bits": "17034219" if h < self.RETARGET else "17033000"}

    def _one(self, method, params):
        if method == "getblockhash":
            return f"{params[0]:064x}"
        if method == "getblockheader":
            return self.header(int(params[0], 16))
        if method == "getblockstats":
            h = int(params[0], 16)
            return {"totalfee": 1_000 * (h % 97), "subsidy": block_subsidy(h)}
        raise AssertionError(method)

    def batch(self, calls):
        self.requests += 1
        return [self._one(m, p) for m, p in calls]

    def getblockcount(self):
        self.requests += 1
        return 900_000

    def getblockchaininfo(self):
        self.requests += 1
        return {"chain": "main"}


def test_mainnet_sized_day_with_a_retarget():
    node = FakeMainnet()
    net = day_network(node, DAY)
    r = FakeMainnet.RETARGET
    assert [b.height for b in net.blocks] == [h for h in range(r - 200, r + 200) if START <= node.time(h) < END]
    assert node.requests <= 16                      # ~4 search rounds of two calls, the window's headers, the stats
    assert net.complete and net.fees_total == sum(1_000 * (b.height % 97) for b in net.blocks)
    d1, d2 = difficulty_from_bits(0x17034219), difficulty_from_bits(0x17033000)
    change = max(node.time(h) for h in range(r - 20, r))      # when block r-1 was found (times run backwards)
    assert net.segments == (Segment(START, change, d1, 312_500_000), Segment(change, END, d2, 312_500_000))
    assert net.difficulty == Fraction(86_400) / (Fraction(change - START) / d1 + Fraction(END - change) / d2)
    assert net.subsidy == 312_500_000
