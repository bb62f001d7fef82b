"""Fleet telemetry: how much work each machine did, from its "Difficulty Accepted" counter.

Why counters and not hashrate: a hashrate reading is a sample of a moving average, so missed polls and
averaging windows make it drift; the counter is the exact sum of the difficulty of every share the pool
accepted since the miner started. Work between two readings is the difference, and expected PPS
earnings are Δ(difficulty accepted) / network difficulty × subsidy (see the mining-revenue note). All
work is Decimal, parsed from the miner's JSON with parse_float=Decimal: a float would round counters
that run to 20 significant digits.

Sources
- Polling (`poll`): CGMiner's API (also BMMiner, Braiins OS's compatible API, LuxOS) over TCP: the JSON
  request `{"command": "summary+pools"}`, a JSON reply ended by a NUL byte, then the miner closes the
  connection. Only registered devices are polled, at the address registered for them, and an address is
  an IP address on the farm's own networks (`check_address`: loopback and the private ranges, or the
  networks in $CUSTODY_MINER_NETWORKS) with an unprivileged port. Whatever goes wrong on the wire
  (refused, silent, closed, not JSON, an error status, not a summary) is one answer, NO_ANSWER, that
  repeats nothing the peer sent: a poller that told a refused port from a silent one, or echoed a
  banner, would be a port scanner for whoever may register a device. A sample's time is the poller's clock (miners' own clocks are often wrong: no RTC, no
  NTP); its worker is the user the miner is mining as on its active pool, which is what the pool credits.
  Polls are not written to the event log (one per device per interval); the samples are the record.
- Files (`import_samples`), refused whole, with line numbers, if any line is bad; nothing is stored
  then. Accepted files are logged ("telemetry.imported", with the file's SHA-256). A sample with the
  same worker and time as a stored one is skipped, so re-importing a file changes nothing.

  fmt="cgminer": JSON Lines, one saved reply per line:
      {"time": "2025-01-31T12:00:00Z", "worker": "acct.rig01", "serial": "S21-0001",
       "reply": {"STATUS": [...], "SUMMARY": [{"Difficulty Accepted": 123.45, "MHS av": ..., ...}]}}
  "reply" is a `summary` reply or a joined `summary+pools` one. "time" (ISO 8601 with an offset, or
  Unix seconds) defaults to the reply's STATUS When; the worker is the pools reply's active User if the
  reply has one, else "worker", else the worker of the device "serial" names.

  fmt="braiins": samples as Braiins OS's public API (bos-plus-api, GetMinerStats/GetMinerDetails)
  exposes them, flattened, as JSON Lines (objects) or CSV (a header line, then rows):
      timestamp            ISO 8601 with an offset, or Unix seconds                (required)
      worker               the pool user, "account.worker"    (pool user)        } at least one;
      serial               the device's serial number          (serial_number)   } serial must be known
      difficulty_accepted  the exact counter since the miner started             } one of the two
      accepted_shares,     shares accepted × the share difficulty:               }
        share_difficulty     (pool_stats.accepted_shares, pool_stats.last_difficulty) exact only if
                             the share difficulty did not change since the start; prefer the counter
      hashrate_ghs         GH/s (miner_stats.real_hashrate.last_15m), optional, stored as MH/s
  Numbers may be JSON numbers or strings (proto3's JSON writes uint64 as strings), with no more than
  8 decimals (CGMiner's precision, and within the column's 60 characters); unknown fields are refused,
  to catch typos. Example CSV:
      timestamp,worker,difficulty_accepted,hashrate_ghs
      2025-01-31T00:00:00Z,acct.rig01,0,100000

Accepted work (`accepted_work`) is the work observed in (start, end]: every counter increase counts
at the time of the reading that shows it, against the previous reading (the baseline: the last one at
or before start). A reading at exactly midnight shows work done before it, so it closes the previous
day. Consecutive windows (accounting days) thus split the work exactly, nothing counted twice or lost,
with boundaries as sharp as the poll interval. A counter that drops means the miner restarted: the new
reading counts from zero (the work between the previous reading and the restart is lost to telemetry;
a reset in between two readings that the counter outgrows is not seen). Readings further apart than
`max_gap` are reported as gaps (TELEMETRY_GAP), and work by workers that answer to no known device as
unknown (UNKNOWN_WORKER), apart from the total. Device and worker names: a sample belongs to a device if
it was stored for it, or if its worker is the device's worker or "<account name>.<device worker>".
"""
from __future__ import annotations

import csv
import hashlib
import io
import ipaddress
import json
import os
import socket
import time as _time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation, localcontext
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from custody.errors import CustodyError
from custody.eventlog.log import record
from custody.mining.models import MiningDevice, PoolAccount, TelemetrySample

TWO_32 = 2 ** 32
DEFAULT_PORT = 4028
DEFAULT_POLL_INTERVAL = timedelta(minutes=5)
DEFAULT_MAX_GAP = 2 * DEFAULT_POLL_INTERVAL
MAX_REPLY = 1 << 20            # a summary is ~1 KB; anything this big is not a miner
MAX_COUNTER = Decimal(10) ** 30   # with 8 decimals at most 39 characters: the column holds 60
_EIGHT = Decimal("0.00000001")
_PREC = 80                     # enough digits that no counter arithmetic rounds
FORMATS = ("cgminer", "braiins")
BRAIINS_FIELDS = ("timestamp", "worker", "serial", "difficulty_accepted", "accepted_shares",
                  "share_difficulty", "hashrate_ghs")
NO_ANSWER = "the device did not answer with CGMiner API data"
NETWORKS_ENV = "CUSTODY_MINER_NETWORKS"
# where a farm's miners are: loopback (simulated miners, a local proxy), RFC 1918 and IPv6 unique-local
# addresses. Not link-local (169.254.169.254 is a cloud's metadata service), not the internet.
DEFAULT_NETWORKS = ("127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
MIN_PORT = 1024                # miners' APIs listen on unprivileged ports (CGMiner 4028); below are ssh, http...


class TelemetryError(CustodyError):
    """A miner that cannot be read (refused, silent, garbage), or a telemetry file that is refused."""


class NoAnswer(TelemetryError):
    """A miner that could not be read, for whatever reason: always NO_ANSWER, never the reason (see the
    module docstring). `invalid_command` is kept for the poller alone (firmware without joined commands)."""

    def __init__(self, invalid_command: bool = False):
        super().__init__(NO_ANSWER)
        self.invalid_command = invalid_command


def allowed_networks() -> list:
    """The networks miners may be polled on: $CUSTODY_MINER_NETWORKS (CIDRs separated by commas or spaces)
    when set, else DEFAULT_NETWORKS."""
    given = os.environ.get(NETWORKS_ENV, "").replace(",", " ").split()
    out = []
    for text in given or DEFAULT_NETWORKS:
        try:
            out.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise TelemetryError(f"{NETWORKS_ENV}: {text!r} is not a network (write CIDRs: 10.20.0.0/16)") from None
    return out


def check_address(host: str | None, port: int | None) -> tuple[str, int]:
    """A miner's API address as it is stored and polled: an IP address (a host name could resolve to any
    machine by the time it is polled) within the allowed networks, and a port from MIN_PORT. Raises
    TelemetryError saying what is accepted."""
    text = (host or "").strip()
    bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        ip = ipaddress.ip_address(bare)
    except ValueError:
        raise TelemetryError(f"API host {text[:80]!r} is not an IP address: register the miner's IP address on the "
                             "farm's network") from None
    if getattr(ip, "ipv4_mapped", None):
        ip = ip.ipv4_mapped
    networks = allowed_networks()
    if not any(ip.version == n.version and ip in n for n in networks):
        raise TelemetryError(f"API host {ip} is outside the networks miners are polled on "
                             f"({', '.join(map(str, networks))}; set {NETWORKS_ENV} to the farm's networks)")
    if isinstance(port, bool) or not isinstance(port, int) or not MIN_PORT <= port <= 65535:
        raise TelemetryError(f"API port {port!r} is not {MIN_PORT} to 65535 (CGMiner listens on 4028)")
    return str(ip), port


@dataclass(frozen=True)
class Sample:
    """One reading of a miner's counters. worker is None until someone knows it (pools reply, device)."""
    worker: str | None
    time: datetime
    difficulty_accepted: Decimal
    mhs_av: Decimal | None = None
    elapsed: int | None = None        # seconds since the miner (re)started, when the reply says
    serial: str | None = None


class Gap(NamedTuple):
    """No reading for longer than max_gap, within the asked window; who: device serial."""
    start: datetime
    end: datetime
    who: str


class Reset(NamedTuple):
    """The reading at `time` showed the counter lower than before: the miner restarted."""
    time: datetime
    who: str


@dataclass
class PollReport:
    ok: dict[str, Sample] = field(default_factory=dict)           # serial -> the sample stored
    failed: dict[str, str] = field(default_factory=dict)          # serial -> NO_ANSWER (or why not polled)
    skipped: list[str] = field(default_factory=list)              # devices without an API address
    worker_mismatch: dict[str, tuple[str, str]] = field(default_factory=dict)  # serial -> (registered, mining as)


@dataclass
class ImportReport:
    stored: int
    duplicates: int
    unknown_workers: list[str]
    sha256: str


@dataclass
class Work:
    """Difficulty accepted in (start, end] by the devices asked about; see the module docstring."""
    start: datetime
    end: datetime
    difficulty: Decimal
    samples: int
    gaps: list[Gap]
    resets: list[Reset]
    unknown: dict[str, Decimal]       # worker -> work by workers no device answers to (not in difficulty)

    def hashrate(self) -> Decimal:
        """The average hashrate (H/s) the work implies over the whole window."""
        return hashrate_from_work(self.difficulty, self.end - self.start)


def hashrate_from_work(difficulty: Decimal | int, seconds: Decimal | int | timedelta) -> Decimal:
    """H/s = difficulty × 2^32 / seconds (one difficulty-1 share is 2^32 hashes on average). Exact when
    the quotient terminates within 80 digits, as it does for whole-second windows of real rates."""
    if isinstance(seconds, timedelta):
        seconds = Decimal(seconds // timedelta(microseconds=1)).scaleb(-6)
    if Decimal(seconds) <= 0:
        raise CustodyError("a hashrate needs a positive duration")
    with localcontext() as ctx:
        ctx.prec = _PREC
        return +(Decimal(difficulty) * TWO_32 / Decimal(seconds))


# -- the CGMiner API ---------------------------------------------------------------------------------
def query(host: str, port: int, command: str, timeout: float = 5.0) -> dict:
    """Send one API command ("summary", "summary+pools", ...) to a miner at an allowed address
    (`check_address`) and return the parsed reply, numbers with decimals as Decimal. Bounded by `timeout`
    in all (connect plus reply), so a silent miner cannot hang a poll. Raises NoAnswer (NO_ANSWER, the same
    whether refused, timed out, not JSON or the miner's own error status: nothing the peer sent is repeated),
    or TelemetryError for an address that may not be polled."""
    host, port = check_address(host, port)
    deadline = _time.monotonic() + timeout
    data = bytearray()
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(json.dumps({"command": command}).encode())
            while True:
                remaining = deadline - _time.monotonic()
                if remaining <= 0:
                    raise NoAnswer
                sock.settimeout(remaining)
                chunk = sock.recv(65536)
                if not chunk:
                    break               # closed without a NUL: some firmware does; parse what came
                data += chunk
                if b"\0" in chunk:
                    del data[data.index(b"\0"):]
                    break
                if len(data) > MAX_REPLY:
                    raise NoAnswer      # a summary is ~1 KB: not a miner's API
    except (OSError, ValueError):      # refused, timed out, reset, unreachable: all the same answer
        raise NoAnswer from None
    try:
        reply = json.loads(data.decode("utf-8", "replace"), parse_float=Decimal, parse_constant=_no_constant,
                           strict=False)
    except (ValueError, RecursionError):
        raise NoAnswer from None
    if not isinstance(reply, dict):
        raise NoAnswer
    for name, part in ([(command, reply)] if "STATUS" in reply else
                       [(n, (reply.get(n) or [{}])[0]) for n in command.split("+")]):
        status = (part.get("STATUS") or [{}])[0] if isinstance(part, dict) else {}
        if not isinstance(status, dict) or status.get("STATUS") not in ("S", "I", "W"):
            msg = status.get("Msg") if isinstance(status, dict) else None
            raise NoAnswer(invalid_command=isinstance(msg, str) and "Invalid command" in msg)
    return reply


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number")


def summary_sample(reply: dict, *, pools: dict | None = None, worker: str | None = None,
                   time: datetime | None = None) -> Sample:
    """A sample from a `summary` (or joined `summary+pools`) reply. The worker is the active pool's
    User when there is a pools reply (what the pool credits), else `worker`; the time is `time`, else
    the reply's STATUS When (the miner's clock). Raises TelemetryError for a reply without the counter,
    or parsed with floats."""
    if "summary" in reply:
        pools = pools or (reply.get("pools") or [None])[0]
        reply = (reply["summary"] or [{}])[0]
    try:
        item = reply["SUMMARY"][0]
        counter = _decimal(item["Difficulty Accepted"], "Difficulty Accepted")
        if time is None:
            time = datetime.fromtimestamp(int(reply["STATUS"][0]["When"]), timezone.utc)
    except (KeyError, IndexError, TypeError) as e:
        raise TelemetryError(f"not a CGMiner summary reply (missing {e})") from None
    except ValueError as e:
        raise TelemetryError(str(e)) from None
    _check_counter(counter)
    mhs = None
    for key, scale in (("MHS av", 1), ("GHS av", 1000)):   # BMMiner reports GH/s
        if item.get(key) is not None:
            try:
                mhs = _rate(_decimal(item[key], key) * scale)
            except ValueError as e:
                raise TelemetryError(str(e)) from None
            break
    elapsed = item.get("Elapsed")
    return Sample(worker=_active_user(pools) or worker, time=_utc(time), difficulty_accepted=counter,
                  mhs_av=mhs, elapsed=int(elapsed) if isinstance(elapsed, (int, Decimal)) else None)


def _active_user(pools: dict | None) -> str | None:
    """The User of the pool the miner is mining on: Stratum Active, else the best-priority alive one."""
    entries = [p for p in (pools or {}).get("POOLS") or [] if isinstance(p, dict) and p.get("User")]
    active = [p for p in entries if p.get("Stratum Active") is True] or \
        sorted((p for p in entries if p.get("Status") == "Alive"), key=lambda p: p.get("Priority", 0))
    return str(active[0]["User"]) if active else None


# -- polling -----------------------------------------------------------------------------------------
def _read_miner(device: MiningDevice, clock: Callable[[], datetime], timeout: float) -> Sample:
    """A sample from the device, or NoAnswer no sooner than `timeout` after the start: a refused port
    answers at once and a silent one at the timeout, and the time a failure took must not tell them apart."""
    began = _time.monotonic()
    try:
        return _read_sample(device, clock, timeout)
    except TelemetryError:
        _time.sleep(max(0.0, began + timeout - _time.monotonic()))
        raise NoAnswer from None


def _read_sample(device: MiningDevice, clock: Callable[[], datetime], timeout: float) -> Sample:
    host, port = device.api_host, device.api_port
    try:
        reply = query(host, port, "summary+pools", timeout)
    except NoAnswer as e:
        if not e.invalid_command:
            raise
        reply = {"summary": [query(host, port, "summary", timeout)],   # no joined commands here
                 "pools": [query(host, port, "pools", timeout)]}
    try:
        sample = summary_sample(reply, worker=device.worker, time=clock())
    except Exception:                  # the peer's JSON, any shape: a good status but no summary we can use
        raise NoAnswer from None
    if not sample.worker or len(sample.worker) > 120:
        raise NoAnswer
    return sample


def poll(session: Session, devices: Iterable[MiningDevice], *, clock: Callable[[], datetime] | None = None,
         timeout: float = 5.0, max_workers: int = 32) -> PollReport:
    """Read every device that has an API address, concurrently (network in threads, the database in the
    caller's thread), store a TelemetrySample for each that answered, and report those that did not:
    an unreachable miner is a finding, not a failure of the poll. Not committed here."""
    clock = clock or (lambda: datetime.now(timezone.utc))
    report = PollReport()
    devices = list(devices)
    reachable = [d for d in devices if d.api_host and d.api_port]
    report.skipped = [d.serial for d in devices if not (d.api_host and d.api_port)]
    for device in list(reachable):     # registered before addresses were checked, or the networks changed
        try:
            check_address(device.api_host, device.api_port)
        except TelemetryError as e:
            report.failed[device.serial] = f"not polled: {e}"
            reachable.remove(device)
    names = _account_names(session)
    with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(reachable)))) as pool:
        futures = [(d, pool.submit(_read_miner, d, clock, timeout)) for d in reachable]
        for device, future in futures:
            try:
                sample = future.result()
            except TelemetryError:
                report.failed[device.serial] = NO_ANSWER
                continue
            session.add(TelemetrySample(device_id=device.id, worker=sample.worker, time=sample.time,
                                        difficulty_accepted=sample.difficulty_accepted, mhs_av=sample.mhs_av,
                                        source="cgminer"))
            report.ok[device.serial] = sample
            if sample.worker not in _device_names(device, names):
                report.worker_mismatch[device.serial] = (device.worker, sample.worker)
    session.flush()
    return report


# -- file import -------------------------------------------------------------------------------------
def import_samples(session: Session, path_or_text: str | Path, fmt: str, *, actor: str = "system") -> ImportReport:
    """Import a telemetry file (formats in the module docstring) in the caller's transaction: every
    line checked first, then all stored, or none (TelemetryError listing the bad lines)."""
    if fmt not in FORMATS:
        raise TelemetryError(f"unknown telemetry format {fmt!r} (expected one of {', '.join(FORMATS)})")
    name, text = _read(path_or_text)
    lines = _parse_cgminer(text) if fmt == "cgminer" else _parse_braiins(text)
    devices = session.scalars(select(MiningDevice)).all()
    by_serial = {d.serial: d for d in devices}
    index = _WorkerIndex(devices, _account_names(session))
    errors, rows = [], []
    for lineno, sample in lines:
        if isinstance(sample, str):
            errors.append(f"line {lineno}: {sample}")
            continue
        device = by_serial.get(sample.serial) if sample.serial else None
        if sample.serial and device is None:
            errors.append(f"line {lineno}: serial {sample.serial!r} is not a known device")
            continue
        worker = sample.worker or (device.worker if device else None)
        if not worker:
            errors.append(f"line {lineno}: no worker (give worker, or a serial, or a pools reply)")
            continue
        if len(worker) > 120:
            errors.append(f"line {lineno}: worker name longer than 120 characters")
            continue
        rows.append(TelemetrySample(device_id=device.id if device else None, worker=worker, time=sample.time,
                                    difficulty_accepted=sample.difficulty_accepted, mhs_av=sample.mhs_av,
                                    source=f"file:{fmt}"))
    if errors:
        shown = "; ".join(errors[:20]) + (f"; and {len(errors) - 20} more" if len(errors) > 20 else "")
        raise TelemetryError(f"telemetry file {name} refused, nothing stored: {shown}")
    if not rows:
        raise TelemetryError(f"telemetry file {name} has no samples")

    first, last = min(r.time for r in rows), max(r.time for r in rows)
    seen = {(w, _utc(t)) for w, t in session.execute(
        select(TelemetrySample.worker, TelemetrySample.time)
        .where(TelemetrySample.time >= first, TelemetrySample.time <= last))}
    fresh = []
    for row in rows:
        if (row.worker, row.time) not in seen:
            seen.add((row.worker, row.time))
            fresh.append(row)
    session.add_all(fresh)
    unknown = sorted({r.worker for r in fresh if r.device_id is None and index.device(r.worker) is None})
    digest = hashlib.sha256(text.encode()).hexdigest()
    record(session, "telemetry.imported", actor, f"telemetry:{name}"[:200],
           {"format": fmt, "sha256": digest, "stored": len(fresh), "duplicates": len(rows) - len(fresh),
            "unknown_workers": unknown})
    session.flush()
    return ImportReport(stored=len(fresh), duplicates=len(rows) - len(fresh), unknown_workers=unknown, sha256=digest)


def _read(path_or_text: str | Path) -> tuple[str, str]:
    """A Path is a file; a str is always the text itself (never taken as a file name: text that arrives
    over the API must not make the server read its own files)."""
    if isinstance(path_or_text, str):
        return "(text)", path_or_text
    path = Path(path_or_text)
    try:
        return path.name, path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise TelemetryError(f"cannot read telemetry file {path}: {e}") from None


def _json_lines(text: str) -> Iterable[tuple[int, Any]]:
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line, parse_float=Decimal, parse_constant=_no_constant)
        except ValueError as e:
            yield lineno, f"not valid JSON ({e})"
        except RecursionError:
            yield lineno, "nests arrays and objects too deeply"


def _parse_cgminer(text: str) -> list[tuple[int, Sample | str]]:
    out: list[tuple[int, Sample | str]] = []
    for lineno, obj in _json_lines(text):
        if isinstance(obj, str) or not isinstance(obj, dict):
            out.append((lineno, obj if isinstance(obj, str) else "not a JSON object"))
            continue
        extra = sorted(set(obj) - {"time", "worker", "serial", "reply"})
        if extra or not isinstance(obj.get("reply"), dict):
            out.append((lineno, f"unexpected fields {extra}" if extra else "no \"reply\" object"))
            continue
        try:
            moment = _parse_time(obj["time"]) if obj.get("time") is not None else None
            sample = summary_sample(obj["reply"], worker=_text(obj.get("worker"), "worker"), time=moment)
            out.append((lineno, Sample(sample.worker, sample.time, sample.difficulty_accepted, sample.mhs_av,
                                       sample.elapsed, _text(obj.get("serial"), "serial"))))
        except (ValueError, TelemetryError) as e:
            out.append((lineno, str(e)))
    return out


def _parse_braiins(text: str) -> list[tuple[int, Sample | str]]:
    if text.lstrip().startswith("{"):
        records = [(n, o if isinstance(o, (dict, str)) else "not a JSON object") for n, o in _json_lines(text)]
    else:
        reader = csv.DictReader(io.StringIO(text))
        unknown = sorted(set(reader.fieldnames or ()) - set(BRAIINS_FIELDS))
        if unknown or not reader.fieldnames:
            return [(1, f"unknown columns {unknown}" if unknown else "no header line")]
        records = []
        for row in reader:
            if None in row:
                records.append((reader.line_num, "more values than columns"))
            else:
                records.append((reader.line_num, {k: v for k, v in row.items() if v not in (None, "")}))
    return [(n, r if isinstance(r, str) else _braiins_sample(r)) for n, r in records]


def _braiins_sample(obj: dict) -> Sample | str:
    extra = sorted(set(obj) - set(BRAIINS_FIELDS))
    if extra:
        return f"unexpected fields {extra}"
    try:
        if obj.get("timestamp") is None:
            return "no timestamp"
        moment = _parse_time(obj["timestamp"])
        if obj.get("difficulty_accepted") is not None:
            if obj.get("accepted_shares") is not None:
                return "give difficulty_accepted or accepted_shares × share_difficulty, not both"
            counter = _decimal(obj["difficulty_accepted"], "difficulty_accepted")
        elif obj.get("accepted_shares") is not None and obj.get("share_difficulty") is not None:
            shares = _decimal(obj["accepted_shares"], "accepted_shares")
            if shares != shares.to_integral_value():
                return "accepted_shares is not a whole number"
            with localcontext() as ctx:
                ctx.prec = _PREC
                counter = shares * _decimal(obj["share_difficulty"], "share_difficulty")
        else:
            return "no difficulty_accepted (nor accepted_shares and share_difficulty)"
        _check_counter(counter)
        mhs = None
        if obj.get("hashrate_ghs") is not None:
            mhs = _rate(_decimal(obj["hashrate_ghs"], "hashrate_ghs") * 1000)
        worker, serial = _text(obj.get("worker"), "worker"), _text(obj.get("serial"), "serial")
    except (ValueError, TelemetryError) as e:
        return str(e)
    if not worker and not serial:
        return "no worker or serial"
    return Sample(worker, moment, counter, mhs, None, serial)


# -- accepted work -----------------------------------------------------------------------------------
def fleet_index(session: Session) -> tuple[list[MiningDevice], "_WorkerIndex"]:
    """Every device and the worker-name index: made once by a caller asking about many days."""
    devices_all = session.scalars(select(MiningDevice)).all()
    return devices_all, _WorkerIndex(devices_all, _account_names(session))


def accepted_work(session: Session, who: MiningDevice | PoolAccount | str | None, start: datetime,
                  end: datetime, *, max_gap: timedelta = DEFAULT_MAX_GAP,
                  lookback: timedelta = timedelta(days=1), fleet: tuple | None = None) -> Work:
    """Difficulty accepted in (start, end] (module docstring) by `who`: a device; an account's devices;
    a serial or worker name (one naming no device is reported as an unknown worker); None, the whole
    fleet. The last reading at or before `start` (within `lookback`) is the baseline. `fleet` is a
    `fleet_index` to reuse."""
    start, end = _utc(start), _utc(end)
    if end <= start:
        raise CustodyError("accepted work needs start < end")
    devices_all, index = fleet or fleet_index(session)
    devices, unknown_wanted = _scope(who, devices_all, index)
    ids = {d.id for d in devices}
    t = TelemetrySample
    query_ = select(t.id, t.device_id, t.worker, t.time, t.difficulty_accepted) \
        .where(t.time >= start - lookback, t.time <= end)
    if who is not None:   # samples stored without a device are matched by worker name below
        query_ = query_.where(or_(t.device_id.in_(ids), t.device_id.is_(None)))

    series: dict[tuple[str, Any], list] = {}
    for row in session.execute(query_):
        device = index.device(row.worker) if row.device_id is None else None
        device_id = row.device_id or (device.id if device else None)
        if device_id in ids:
            key = ("device", device_id)
        elif device_id is None and unknown_wanted(row.worker):
            key = ("worker", row.worker)
        else:
            continue
        series.setdefault(key, []).append((_utc(row.time), row.id, Decimal(row.difficulty_accepted)))

    serial_of = {d.id: d.serial for d in devices}
    total, samples, gaps, resets, unknown = Decimal(0), 0, [], [], {}
    for key, points in series.items():
        points.sort()
        before = [p for p in points if p[0] <= start]
        points = before[-1:] + [p for p in points if p[0] > start]
        samples += len(points) - len(before[-1:])
        who_ = serial_of[key[1]] if key[0] == "device" else key[1]
        work, g, r = _walk(points, start, end, max_gap, who_)
        if key[0] == "device":
            total, gaps, resets = total + work, gaps + g, resets + r
        elif points[-1][0] > start:
            unknown[key[1]] = work
    for device in devices:
        if ("device", device.id) not in series:
            gaps.append(Gap(start, end, device.serial))
    return Work(start, end, total, samples, sorted(gaps), sorted(resets), unknown)


def _scope(who, devices_all: list[MiningDevice], index: "_WorkerIndex"):
    """The devices `who` stands for, and which workers without a device to report as unknown."""
    if who is None:
        return list(devices_all), lambda worker: True
    if isinstance(who, MiningDevice):
        return [who], lambda worker: False
    if isinstance(who, PoolAccount):
        return [d for d in devices_all if d.account_id == who.id], lambda worker: worker.startswith(f"{who.name}.")
    device = next((d for d in devices_all if d.serial == who), None) or index.device(who)
    if device:
        return [device], lambda worker: False
    return [], lambda worker: worker == who


def _walk(points: list, start: datetime, end: datetime, max_gap: timedelta, who: str):
    """Work, gaps and resets along one device's readings (the first may be the baseline before start)."""
    work, gaps, resets = Decimal(0), [], []
    with localcontext() as ctx:
        ctx.prec = _PREC
        previous = None
        for moment, _, counter in points:
            if previous is None:
                if moment > start and moment - start > max_gap:
                    gaps.append(Gap(start, moment, who))
            else:
                if moment - previous[0] > max_gap:
                    gaps.append(Gap(max(previous[0], start), moment, who))
                if counter >= previous[1]:
                    work += counter - previous[1]
                else:
                    work += counter
                    resets.append(Reset(moment, who))
            previous = (moment, counter)
        if end - previous[0] > max_gap:
            gaps.append(Gap(max(previous[0], start), end, who))
    return work, gaps, resets


# -- helpers -----------------------------------------------------------------------------------------
def _account_names(session: Session) -> dict[int, str]:
    return {id_: name for id_, name in session.execute(select(PoolAccount.id, PoolAccount.name))}


def _device_names(device: MiningDevice, account_names: dict[int, str]) -> set[str]:
    """The names a device's samples may carry: its worker, and "<account>.<worker>" as pools write it."""
    names = {device.worker}
    if device.account_id in account_names:
        names.add(f"{account_names[device.account_id]}.{device.worker}")
    return names


class _WorkerIndex:
    """Worker name -> the one device it names (a short name shared by two accounts names neither)."""

    def __init__(self, devices: Iterable[MiningDevice], account_names: dict[int, str]):
        self._by_name: dict[str, list[MiningDevice]] = {}
        for d in devices:
            for name in _device_names(d, account_names):
                self._by_name.setdefault(name, []).append(d)

    def device(self, worker: str) -> MiningDevice | None:
        found = self._by_name.get(worker, [])
        return found[0] if len(found) == 1 else None


def _utc(moment: datetime) -> datetime:
    """SQLite hands back naive times (stored as UTC); everything here is aware UTC."""
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def _decimal(value: Any, what: str) -> Decimal:
    """A non-negative finite Decimal from a JSON number parsed as Decimal, an int, or a numeric string."""
    if isinstance(value, float):
        raise ValueError(f"{what} was parsed as a binary float: parse with parse_float=Decimal")
    if isinstance(value, bool) or not isinstance(value, (int, Decimal, str)):
        raise ValueError(f"{what} is not a number: {value!r}")
    try:
        number = Decimal(value.strip()) if isinstance(value, str) else Decimal(value)
    except InvalidOperation:
        raise ValueError(f"{what} is not a number: {value!r}") from None
    if not number.is_finite() or number < 0:
        raise ValueError(f"{what} must be a finite number ≥ 0, not {value}")
    return number


def _check_counter(counter: Decimal) -> None:
    if counter >= MAX_COUNTER:
        raise TelemetryError(f"difficulty accepted {counter} is too large to store")
    with localcontext() as ctx:
        ctx.prec = _PREC
        if counter.normalize().as_tuple().exponent < -8:
            raise TelemetryError(f"difficulty accepted {counter} has more than 8 decimals (CGMiner prints 8)")


def _rate(mhs: Decimal) -> Decimal:
    """A hashrate is a reading, not a counter: rounded to 8 decimals, like the counters."""
    with localcontext() as ctx:
        ctx.prec = _PREC
        if mhs >= MAX_COUNTER:
            raise ValueError(f"hashrate {mhs} MH/s is too large")
        return mhs.quantize(_EIGHT)


def _text(value: Any, what: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError(f"{what} is not text")
    return value.strip()


def _parse_time(value: Any) -> datetime:
    """ISO 8601 with an offset (a time without one is refused: whose clock?), or Unix seconds."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, (int, Decimal)) and not isinstance(value, bool):
        try:
            return datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=int(Decimal(value) * 10 ** 6))
        except (OverflowError, InvalidOperation):
            raise ValueError(f"time {value} is out of range") from None
    if not isinstance(value, str):
        raise ValueError(f"time {value!r} is neither ISO 8601 nor Unix seconds")
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(f"time {value!r} is not ISO 8601") from None
    if moment.tzinfo is None:
        raise ValueError(f"time {value!r} has no UTC offset")
    return moment.astimezone(timezone.utc)
