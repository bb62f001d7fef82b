"""Fleet telemetry: the CGMiner API against simulated miners on loopback, polling into the database,
accepted work from "Difficulty Accepted" counters (exact, resets, gaps, unknown workers), file imports."""
from __future__ import annotations

import json
import socket
import time
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import func, select

from custody.errors import CustodyError
from custody.eventlog.models import EventLogEntry
from custody.mining.models import MiningDevice, Pool, PoolAccount, TelemetrySample
from custody.store.db import open_database
from custody.mining.telemetry import (NO_ANSWER, Gap, Reset, TelemetryError, accepted_work, hashrate_from_work,
                               import_samples, poll, query, summary_sample)
from regtest.miner import ManualClock, SimulatedMiner, stop_miners

FIXTURES = Path(__file__).parent / "fixtures" / "telemetry"
STEP = 1024                                    # seconds between polls: whole work in 8 decimals below
PER_STEP = Decimal("23841857.91015625")        # 100 TH/s × 1024 s / 2^32, exactly
NOMINAL = Decimal(100) * 10 ** 12              # H/s


@pytest.fixture
def clock():
    return ManualClock()


@pytest.fixture
def miners(clock):
    """start(hashrate_ths, worker, **options) -> a SimulatedMiner listening on loopback; all stopped after."""
    started = []

    def start(hashrate_ths, worker, **options):
        miner = SimulatedMiner(hashrate_ths, worker, clock=clock, **options).start()
        started.append(miner)
        return miner
    yield start
    stop_miners(started)


@pytest.fixture
def db(db_url):
    return open_database(db_url)


def make_fleet(session, count: int, miners_by_index: dict | None = None) -> list[MiningDevice]:
    """Account "acct" at one pool, devices S21-0001… mining as rig01…; device i answers at
    miners_by_index[i]'s port when given."""
    pool = Pool(name="Braiins", kind="braiins")
    session.add(pool)
    session.flush()
    account = PoolAccount(pool_id=pool.id, name="acct", scheme="FPPS", pool_fee_bps=0, fee_method="braiins",
                          payout_threshold=100_000, schedule="daily", payout_addresses="[]")
    session.add(account)
    session.flush()
    devices = []
    for i in range(1, count + 1):
        miner = (miners_by_index or {}).get(i)
        devices.append(MiningDevice(serial=f"S21-{i:04d}", model="Antminer S21", account_id=account.id,
                                    worker=f"rig{i:02d}", api_host=miner.host if miner else None,
                                    api_port=miner.port if miner else None))
    session.add_all(devices)
    session.flush()
    return devices


def raw_request(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


# -- the simulated miner speaks CGMiner's API --------------------------------------------------------
def test_summary_reply_as_cgminer_writes_it(miners, clock):
    miner = miners(100, "acct.rig01")
    clock.advance(STEP)
    raw = raw_request(miner.port, b'{"command":"summary"}')
    assert raw.endswith(b"}\x00") and raw.count(b"\x00") == 1          # NUL-terminated, then closed
    assert b'"Difficulty Accepted":23841857.91015625,' in raw          # a JSON number with decimals
    assert b'"MHS av":100000000.00,' in raw

    reply = query("127.0.0.1", miner.port, "summary")
    status = reply["STATUS"][0]
    assert {"STATUS", "When", "Code", "Msg", "Description"} <= set(status) and status["STATUS"] == "S"
    summary = reply["SUMMARY"][0]
    assert {"Elapsed", "MHS av", "MHS 5s", "Accepted", "Rejected", "Difficulty Accepted", "Difficulty Rejected",
            "Last Share Difficulty", "Best Share"} <= set(summary)
    assert summary["Difficulty Accepted"] == PER_STEP and isinstance(summary["Difficulty Accepted"], Decimal)
    assert summary["Elapsed"] == STEP and summary["Accepted"] == int(PER_STEP // 65536)

    pools = query("127.0.0.1", miner.port, "pools")["POOLS"][0]
    assert pools["User"] == "acct.rig01" and pools["URL"].startswith("stratum+tcp://")
    devs = query("127.0.0.1", miner.port, "devs")["DEVS"]
    assert len(devs) == 3 and sum(d["Difficulty Accepted"] for d in devs) == PER_STEP
    assert query("127.0.0.1", miner.port, "version")["VERSION"][0]["API"] == "3.7"
    joined = query("127.0.0.1", miner.port, "summary+pools")
    assert set(joined) == {"summary", "pools", "id"}
    assert summary_sample(joined).worker == "acct.rig01"

    plain = raw_request(miner.port, b"summary|").decode()
    assert plain.startswith("STATUS=S,When=") and "|SUMMARY,Elapsed=1024,MHS av=100000000.00," in plain
    assert "Difficulty Accepted=23841857.91015625," in plain and plain.endswith("|\x00")


def test_query_errors_are_one_answer_and_never_hang(miners):
    """Whatever went wrong, the same answer, repeating nothing the peer sent (a poller that told refused
    from silent, or echoed a banner, would scan ports for whoever registers a device)."""
    good = miners(100, "acct.rig01")
    with pytest.raises(TelemetryError, match=f"^{NO_ANSWER}$") as invalid:
        query("127.0.0.1", good.port, "no-such-command")
    assert invalid.value.invalid_command                   # kept for the poller's fallback, never shown

    off = miners(100, "acct.rig02")
    off.stop()
    with pytest.raises(TelemetryError, match=f"^{NO_ANSWER}$"):
        query("127.0.0.1", off.port, "summary")

    garbage = miners(100, "acct.rig03", mode="garbage")
    with pytest.raises(TelemetryError, match=f"^{NO_ANSWER}$"):
        query("127.0.0.1", garbage.port, "summary")

    silent = miners(100, "acct.rig04", mode="silent")      # accepts, then holds the connection for 60 s
    began = time.monotonic()
    with pytest.raises(TelemetryError, match=f"^{NO_ANSWER}$"):
        query("127.0.0.1", silent.port, "summary", timeout=0.5)
    assert time.monotonic() - began < 30                   # the timeout ended it, not the miner (no tighter bound:
                                                           # a busy machine may be slow, never 60 s slow)

    # replies in small pieces, or closed without the NUL, are still read whole
    for mode in ("trickle", "no_nul"):
        miner = miners(100, f"acct.{mode}", mode=mode)
        assert query("127.0.0.1", miner.port, "summary+pools")["pools"][0]["POOLS"][0]["User"] == f"acct.{mode}"


def test_summary_sample_is_exact_or_refused():
    reply = '{"STATUS":[{"STATUS":"S","When":1738281600}],"SUMMARY":[{"Elapsed":5,"GHS av":13500.12,' \
            '"Difficulty Accepted":12345678901234.12345678}]}'
    sample = summary_sample(json.loads(reply, parse_float=Decimal), worker="acct.s9")
    assert sample.difficulty_accepted == Decimal("12345678901234.12345678")   # 22 digits: a float keeps 17
    assert sample.mhs_av == Decimal("13500120.00") and sample.worker == "acct.s9"   # BMMiner's GH/s
    assert sample.time.isoformat() == "2025-01-31T00:00:00+00:00" and sample.elapsed == 5
    with pytest.raises(TelemetryError, match="parse_float=Decimal"):
        summary_sample(json.loads(reply))
    with pytest.raises(TelemetryError, match="not a CGMiner summary reply"):
        summary_sample({"STATUS": [{"STATUS": "S", "When": 1}], "SUMMARY": [{"MHS av": 1}]})


def test_hashrate_from_work_is_exact():
    assert hashrate_from_work(PER_STEP, STEP) == NOMINAL
    assert hashrate_from_work(PER_STEP * 3, timedelta(seconds=3 * STEP)) == NOMINAL
    assert hashrate_from_work(1, 1) == 2 ** 32
    with pytest.raises(CustodyError):
        hashrate_from_work(1, 0)


# -- polling into the database -----------------------------------------------------------------------
def test_poll_stores_the_reachable_and_reports_the_rest(db, miners, clock):
    rig1 = miners(100, "rig01")                  # the device's worker as registered
    rig2 = miners(200, "acct.rig02")             # the pool's form "<account>.<worker>": the same worker
    rig3 = miners(100, "acct.rig03")
    rig5 = miners(100, "acct.rig05", mode="silent")
    rig6 = miners(100, "elsewhere.rig06")        # mining for someone else
    with db() as session:
        devices = make_fleet(session, 6, {1: rig1, 2: rig2, 3: rig3, 5: rig5, 6: rig6})
        rig3.stop()                              # switched off
        clock.advance(STEP)
        began = time.monotonic()
        report = poll(session, devices, clock=clock, timeout=0.5)
        assert time.monotonic() - began < 30     # the silent miner costs its timeout, not the 60 s it holds on
        session.commit()

        assert sorted(report.ok) == ["S21-0001", "S21-0002", "S21-0006"]
        assert report.ok["S21-0001"].difficulty_accepted == PER_STEP
        assert report.ok["S21-0002"].difficulty_accepted == 2 * PER_STEP
        assert sorted(report.failed) == ["S21-0003", "S21-0005"]
        assert report.failed == {"S21-0003": NO_ANSWER, "S21-0005": NO_ANSWER}   # switched off, silent: alike
        assert report.skipped == ["S21-0004"]
        assert report.worker_mismatch == {"S21-0006": ("rig06", "elsewhere.rig06")}

        rows = session.execute(select(TelemetrySample.device_id, TelemetrySample.worker, TelemetrySample.source,
                                      TelemetrySample.difficulty_accepted, TelemetrySample.mhs_av)
                               .order_by(TelemetrySample.device_id)).all()
        assert [(r.device_id, r.worker, r.source) for r in rows] == [
            (devices[0].id, "rig01", "cgminer"), (devices[1].id, "acct.rig02", "cgminer"),
            (devices[5].id, "elsewhere.rig06", "cgminer")]
        assert rows[1].difficulty_accepted == 2 * PER_STEP and rows[1].mhs_av == Decimal(200_000_000)


def poll_every_step(session, devices, clock, steps: int, *, skip: set[int] = frozenset()):
    for k in range(steps + 1):
        if k not in skip:
            poll(session, devices, clock=clock)
        if k < steps:
            clock.advance(STEP)
    session.commit()


def test_accepted_work_and_implied_hashrate_match_the_nominal_rate_exactly(db, miners, clock):
    rig1, rig2 = miners(100, "acct.rig01"), miners(200, "acct.rig02")
    clock.advance(5 * STEP)                      # the miners ran before the first poll
    start = clock()
    with db() as session:
        devices = make_fleet(session, 2, {1: rig1, 2: rig2})
        poll_every_step(session, devices, clock, 6)
        end = clock()
        gap = timedelta(seconds=2 * STEP)

        work = accepted_work(session, devices[0], start, end, max_gap=gap)
        assert work.difficulty == 6 * PER_STEP and work.samples == 6
        assert work.hashrate() == NOMINAL
        assert hashrate_from_work(work.difficulty, end - start) == NOMINAL
        assert (work.gaps, work.resets, work.unknown) == ([], [], {})

        fleet = accepted_work(session, None, start, end, max_gap=gap)
        assert fleet.difficulty == 18 * PER_STEP and fleet.hashrate() == 3 * NOMINAL
        assert accepted_work(session, "S21-0002", start, end, max_gap=gap).hashrate() == 2 * NOMINAL
        assert accepted_work(session, "acct.rig02", start, end, max_gap=gap).difficulty == 12 * PER_STEP

        # consecutive windows split the work exactly: a reading on the boundary closes the earlier window
        middle = start + timedelta(seconds=2 * STEP)
        first = accepted_work(session, devices[0], start, middle, max_gap=gap)
        second = accepted_work(session, devices[0], middle, end, max_gap=gap)
        assert (first.difficulty, second.difficulty) == (2 * PER_STEP, 4 * PER_STEP)


def test_counter_reset_counts_from_zero(db, miners, clock):
    rig1 = miners(100, "acct.rig01")
    start = clock()
    with db() as session:
        devices = make_fleet(session, 1, {1: rig1})
        poll_every_step(session, devices, clock, 2)          # readings 0, 1, 2 steps
        clock.advance(STEP)
        rig1.restart()                                       # the step before the restart is never read
        clock.advance(STEP)
        poll_every_step(session, devices, clock, 1)          # readings: 1 step, 2 steps after the restart
        restarted_read = start + timedelta(seconds=4 * STEP)

        work = accepted_work(session, devices[0], start, clock(), max_gap=timedelta(seconds=3 * STEP))
        assert work.resets == [Reset(restarted_read, "S21-0001")]
        assert work.difficulty == 2 * PER_STEP + 1 * PER_STEP + 1 * PER_STEP
        assert work.gaps == []


def test_gaps_are_reported(db, miners, clock):
    rig1 = miners(100, "acct.rig01")
    start = clock()
    with db() as session:
        devices = make_fleet(session, 2, {1: rig1})          # S21-0002 is never read
        poll_every_step(session, devices[:1], clock, 8, skip={3, 4, 5})
        end = clock() + timedelta(seconds=3 * STEP)          # and nothing after the last reading
        work = accepted_work(session, None, start, end, max_gap=timedelta(seconds=2 * STEP))
        at = lambda k: start + timedelta(seconds=k * STEP)   # noqa: E731
        assert work.gaps == [Gap(start, end, "S21-0002"), Gap(at(2), at(6), "S21-0001"),
                             Gap(at(8), end, "S21-0001")]
        assert work.difficulty == 8 * PER_STEP               # the counter still covers the gap


# -- file imports ------------------------------------------------------------------------------------
def count(session, model=TelemetrySample):
    return session.scalar(select(func.count()).select_from(model))


def test_import_cgminer_summaries(db, clock):
    path = FIXTURES / "cgminer-summary.jsonl"
    with db() as session:
        make_fleet(session, 2)
        report = import_samples(session, path, "cgminer", actor="ops")
        session.commit()
        assert (report.stored, report.duplicates, report.unknown_workers) == (8, 0, [])
        start, end = clock(), clock() + timedelta(seconds=3 * STEP)
        rig1 = accepted_work(session, "S21-0001", start, end, max_gap=timedelta(seconds=2 * STEP))
        assert rig1.difficulty == 3 * PER_STEP and rig1.hashrate() == NOMINAL
        rig2 = accepted_work(session, "S21-0002", start, end, max_gap=timedelta(seconds=2 * STEP))
        assert rig2.difficulty == 4 * PER_STEP and rig2.resets == [Reset(start + timedelta(seconds=2 * STEP),
                                                                         "S21-0002")]
        sources = set(session.scalars(select(TelemetrySample.source)))
        assert sources == {"file:cgminer"}
        event = session.scalars(select(EventLogEntry).where(EventLogEntry.kind == "telemetry.imported")).one()
        assert event.actor == "ops" and json.loads(event.data)["sha256"] == report.sha256

        again = import_samples(session, path.read_text(), "cgminer")     # the text itself; nothing new
        assert (again.stored, again.duplicates) == (0, 8)
        assert count(session) == 8


def test_import_braiins_samples_and_unknown_workers(db, clock):
    start = clock()
    with db() as session:
        make_fleet(session, 4)
        csv_report = import_samples(session, FIXTURES / "braiins-samples.csv", "braiins")
        assert (csv_report.stored, csv_report.unknown_workers) == (5, ["stranger.rig99"])
        jsonl_report = import_samples(session, FIXTURES / "braiins-samples.jsonl", "braiins")
        assert (jsonl_report.stored, jsonl_report.unknown_workers) == (3, [])
        session.commit()
        end = start + timedelta(minutes=20)
        gap = timedelta(minutes=10)

        rig3 = accepted_work(session, "acct.rig03", start, end, max_gap=gap)
        assert rig3.difficulty == Decimal("1621440")         # 1000000.5, then 40 × 65536 − 2000000.5
        mhs = session.scalars(select(TelemetrySample.mhs_av).where(TelemetrySample.worker == "acct.rig03")
                              .order_by(TelemetrySample.time)).all()
        assert mhs == [Decimal(100_000_000), Decimal("100000500"), Decimal("99999123.456789")]
        rig4 = accepted_work(session, "S21-0004", start, end, max_gap=gap)
        assert rig4.difficulty == Decimal("700.5") and len(rig4.resets) == 1

        fleet = accepted_work(session, None, start, end, max_gap=gap)
        assert fleet.unknown == {"stranger.rig99": Decimal(3000)}
        assert fleet.difficulty == Decimal("1621440") + Decimal("700.5")   # unknown work is apart
        stranger = accepted_work(session, "stranger.rig99", start, end, max_gap=gap)
        assert (stranger.difficulty, stranger.unknown) == (0, {"stranger.rig99": Decimal(3000)})
        account = session.scalars(select(PoolAccount)).one()
        assert accepted_work(session, account, start, end, max_gap=gap).unknown == {}   # not "acct.…"


@pytest.mark.parametrize("name, fmt, bad_lines", [
    ("cgminer-bad.jsonl", "cgminer", [2, 3, 4, 5]),
    ("braiins-bad.csv", "braiins", [3, 4, 5, 6, 7]),
])
def test_malformed_files_are_refused_whole(db, name, fmt, bad_lines):
    with db() as session:
        make_fleet(session, 1)
        with pytest.raises(TelemetryError) as refused:
            import_samples(session, FIXTURES / name, fmt)
        message = str(refused.value)
        assert f"telemetry file {name} refused, nothing stored" in message
        assert [n for n in range(1, 9) if f"line {n}:" in message] == bad_lines
        assert count(session) == 0 and count(session, EventLogEntry) == 0


def test_import_refusal_reasons(db):
    with db() as session:
        make_fleet(session, 1)
        with pytest.raises(TelemetryError) as e:
            import_samples(session, FIXTURES / "braiins-bad.csv", "braiins")
        message = str(e.value)
        assert "line 3: time '2025-01-31T00:05:00' has no UTC offset" in message
        assert "line 4: difficulty_accepted must be a finite number ≥ 0" in message
        assert "line 5: difficulty accepted 2000000.123456789 has more than 8 decimals" in message
        assert "line 6: serial 'S21-9999' is not a known device" in message
        assert "line 7: no worker or serial" in message
        with pytest.raises(TelemetryError) as e:
            import_samples(session, FIXTURES / "cgminer-bad.jsonl", "cgminer")
        message = str(e.value)
        assert "line 2: not valid JSON" in message and "line 3: not a CGMiner summary reply" in message
        assert "line 4: not valid JSON (NaN is not a number)" in message
        assert "line 5: unexpected fields ['wrker']" in message
        with pytest.raises(TelemetryError, match=r"line 1: unknown columns \['dificulty_accepted'\]"):
            import_samples(session, "timestamp,worker,dificulty_accepted\n1,a,1\n", "braiins")
        long_line = '{"timestamp": 1738281600, "worker": "%s", "difficulty_accepted": 1}' % ("w" * 121)
        with pytest.raises(TelemetryError, match=r"\(text\) refused.*line 1: worker name longer than 120"):
            import_samples(session, long_line, "braiins")         # one line of text, too long for a path
        with pytest.raises(TelemetryError, match="unknown telemetry format 'luxos'"):
            import_samples(session, FIXTURES / "braiins-samples.csv", "luxos")


def test_counter_digits_survive_storage(db, db_url):
    """A year of a 200 TH/s machine is ~1.5e12 difficulty: with 8 decimals, 20 significant digits (kept as
    decimal text: SQLite's NUMERIC would round them through a binary float)."""
    text = ("timestamp,worker,difficulty_accepted\n"
            "2025-01-31T00:00:00Z,acct.rig01,1468800000000.00000001\n"
            "2025-01-31T00:01:00Z,acct.rig01,1468800000000.00000003\n")
    with db() as session:
        make_fleet(session, 1)
        import_samples(session, text, "braiins")
        session.commit()
        stored = session.scalars(select(TelemetrySample.difficulty_accepted).order_by(TelemetrySample.time)).all()
        assert stored[1] == Decimal("1468800000000.00000003")
