"""A simulated ASIC miner that answers the CGMiner API on loopback, for telemetry tests.

Real CGMiner, BMMiner, Braiins OS (its CGMiner-compatible API) and LuxOS listen on TCP (port 4028 by
default) for one request per connection: `{"command": "summary"}` (JSON, joined commands such as
"summary+pools" allowed) or the plain-text `summary|` form. They reply once, end the reply with a NUL
byte and close the connection. This module does the same for `summary`, `devs`, `pools` and
`version`, with the quirks a client has to live with: hashrates as JSON floats with two decimals,
"Difficulty Accepted" as a JSON number with eight decimals (parse it with parse_float=Decimal or lose
precision), the NUL terminator.

The miner's work is exact and driven by an injected clock, so a test decides how much was mined:
    difficulty accepted = Σ hashrate (H/s) × elapsed (s) / 2^32
exact in Decimal and reported to 8 decimals as CGMiner prints it ("%.8f"). `restart()` zeroes the
counters as a rebooted miner does. One simplification: the counter grows smoothly instead of in steps
of the share difficulty; "Accepted" (shares) is the whole number of shares that work makes.

`mode` makes a miner misbehave for the client's error paths: "garbage" (answers bytes that are not
JSON), "silent" (accepts and never answers), "trickle" (the reply in small pieces), "no_nul" (no
terminator, just the close, as some firmware does).
"""
from __future__ import annotations

import json
import socket
import socketserver
import threading
import time
from datetime import datetime, timedelta, timezone
from decimal import ROUND_DOWN, Decimal, localcontext
from typing import Callable, Iterable

TWO_32 = 2 ** 32
API_VERSION = "3.7"
CGMINER_VERSION = "4.11.1"
MODES = ("ok", "garbage", "silent", "trickle", "no_nul")
_EIGHT = Decimal("0.00000001")
_TWO = Decimal("0.01")

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class ManualClock:
    """A clock that moves only when told to: tests share one between miners and the poller."""

    def __init__(self, start: datetime = datetime(2025, 1, 31, tzinfo=timezone.utc)):
        self.now = start
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self.now

    def advance(self, seconds: int | timedelta) -> datetime:
        with self._lock:
            self.now += seconds if isinstance(seconds, timedelta) else timedelta(seconds=seconds)
            return self.now


def seconds_between(start: datetime, end: datetime) -> Decimal:
    """Exact seconds (microsecond resolution, as datetime has) as a Decimal."""
    return Decimal((end - start) // timedelta(microseconds=1)).scaleb(-6)


class SimulatedMiner:
    """One ASIC: a nominal hashrate in TH/s, the worker it mines as, its share difficulty, a clock."""

    def __init__(self, hashrate_ths: Decimal | int | str, worker: str, *, share_difficulty: int = 65536,
                 clock: Clock = utcnow, pool_url: str = "stratum+tcp://pool.invalid:3333",
                 model: str = "Antminer S21", boards: int = 3, mode: str = "ok"):
        self.worker = worker
        self.share_difficulty = share_difficulty
        self.clock = clock
        self.pool_url = pool_url
        self.model = model
        self.boards = boards
        self.mode = mode
        self.requests: list[str] = []      # what clients asked, for tests
        self._lock = threading.Lock()
        self._rate = Decimal(hashrate_ths) * 10 ** 12        # H/s
        self._started = clock()                               # when the miner (re)started
        self._since = self._started                           # when the current rate began
        self._banked = Decimal(0)                             # work before `_since`
        self._server: socketserver.ThreadingTCPServer | None = None
        self._stopping = threading.Event()
        self.host, self.port = "127.0.0.1", 0

    # -- the mining ----------------------------------------------------------------------------
    def work(self) -> Decimal:
        """Difficulty accepted since the last (re)start, exact."""
        with self._lock, localcontext() as ctx:
            ctx.prec = 80
            return self._banked + self._rate * seconds_between(self._since, self.clock()) / TWO_32

    def set_hashrate(self, hashrate_ths: Decimal | int | str) -> None:
        """From now on, mine at another rate (work so far is kept)."""
        banked = self.work()
        with self._lock:
            self._banked, self._since = banked, self.clock()
            self._rate = Decimal(hashrate_ths) * 10 ** 12

    def restart(self) -> None:
        """The miner process restarts: every counter starts again from zero."""
        with self._lock:
            self._started = self._since = self.clock()
            self._banked = Decimal(0)

    # -- the API's replies (Python values; Decimals already at the precision CGMiner prints) ------
    def _status(self, code: int, msg: str, ok: bool = True) -> list[dict]:
        return [{"STATUS": "S" if ok else "E", "When": int(self.clock().timestamp()), "Code": code,
                 "Msg": msg, "Description": f"cgminer {CGMINER_VERSION}"}]

    def _counters(self, work: Decimal, share: Decimal) -> dict:
        return {"Accepted": int(work // share), "Rejected": 0,
                "Difficulty Accepted": work.quantize(_EIGHT), "Difficulty Rejected": Decimal("0.00000000"),
                "Last Share Difficulty": share.quantize(_EIGHT)}

    def summary(self) -> dict:
        work, elapsed = self.work(), int(seconds_between(self._started, self.clock()))
        mhs = (self._rate / 10 ** 6).quantize(_TWO)
        share = Decimal(self.share_difficulty)
        return {"STATUS": self._status(11, "Summary"), "SUMMARY": [{
            "Elapsed": elapsed, "MHS av": mhs, "MHS 5s": mhs, "MHS 1m": mhs, "MHS 5m": mhs, "MHS 15m": mhs,
            "Found Blocks": 0, "Getworks": elapsed // 30, **self._counters(work, share),
            "Hardware Errors": 0, "Utility": Decimal(0).quantize(_TWO), "Discarded": 0, "Stale": 0,
            "Get Failures": 0, "Local Work": 0, "Remote Failures": 0, "Network Blocks": 0,
            "Total MH": (self._rate / 10 ** 6 * elapsed).quantize(Decimal(1)),
            "Work Utility": Decimal(0).quantize(_TWO),
            "Difficulty Stale": Decimal("0.00000000"), "Best Share": int(share * 4) if work else 0,
            "Device Hardware%": Decimal("0.0000"), "Device Rejected%": Decimal("0.0000"),
            "Pool Rejected%": Decimal("0.0000"), "Pool Stale%": Decimal("0.0000"),
            "Last getwork": int(self.clock().timestamp())}], "id": 1}

    def devs(self) -> dict:
        """One entry per hashboard; their counters add up to the summary's."""
        work, elapsed = self.work(), int(seconds_between(self._started, self.clock()))
        with localcontext() as ctx:
            ctx.prec = 80
            board_work = (work / self.boards).quantize(_EIGHT, ROUND_DOWN)
            board_mhs = (self._rate / 10 ** 6 / self.boards).quantize(_TWO, ROUND_DOWN)
            share = Decimal(self.share_difficulty)
            devs = []
            for i in range(self.boards):
                w = board_work if i < self.boards - 1 else work.quantize(_EIGHT) - board_work * (self.boards - 1)
                devs.append({"ASC": i, "Name": "BTM", "ID": i, "Enabled": "Y", "Status": "Alive",
                             "Temperature": Decimal("65.00"), "MHS av": board_mhs, "MHS 5s": board_mhs,
                             **self._counters(w, share), "Hardware Errors": 0, "Device Elapsed": elapsed,
                             "Last Valid Work": int(self.clock().timestamp())})
        return {"STATUS": self._status(9, f"{self.boards} ASC(s)"), "DEVS": devs, "id": 1}

    def pools(self) -> dict:
        summary = self.summary()["SUMMARY"][0]
        return {"STATUS": self._status(7, "1 Pool(s)"), "POOLS": [{
            "POOL": 0, "URL": self.pool_url, "Status": "Alive", "Priority": 0, "Quota": 1, "Long Poll": "N",
            "Getworks": summary["Getworks"], "Accepted": summary["Accepted"], "Rejected": 0, "Works": 0,
            "Discarded": 0, "Stale": 0, "Get Failures": 0, "Remote Failures": 0, "User": self.worker,
            "Last Share Time": int(self.clock().timestamp()), "Diff1 Shares": 0, "Proxy Type": "", "Proxy": "",
            "Difficulty Accepted": summary["Difficulty Accepted"], "Difficulty Rejected": Decimal("0.00000000"),
            "Difficulty Stale": Decimal("0.00000000"), "Last Share Difficulty": summary["Last Share Difficulty"],
            "Work Difficulty": summary["Last Share Difficulty"], "Has Stratum": True, "Stratum Active": True,
            "Stratum URL": self.pool_url.split("://")[-1].rsplit(":", 1)[0], "Stratum Difficulty":
            summary["Last Share Difficulty"], "Has GBT": False, "Best Share": summary["Best Share"],
            "Pool Rejected%": Decimal("0.0000"), "Pool Stale%": Decimal("0.0000"), "Bad Work": 0,
            "Current Block Height": 0, "Current Block Version": 536870912}], "id": 1}

    def version(self) -> dict:
        return {"STATUS": self._status(22, "CGMiner versions"), "VERSION": [{
            "CGMiner": CGMINER_VERSION, "API": API_VERSION, "Miner": "custody regtest simulated miner",
            "Type": self.model}], "id": 1}

    def _invalid(self) -> dict:
        return {"STATUS": self._status(14, "Invalid command", ok=False), "id": 1}

    # -- the wire --------------------------------------------------------------------------------
    def respond(self, request: str) -> str:
        """The reply text (without the NUL) to one request, JSON or plain text."""
        request = request.strip("\0\r\n ")
        commands = {"summary": self.summary, "devs": self.devs, "pools": self.pools, "version": self.version}
        if not request.startswith("{"):   # plain text: "command|parameter"
            make = commands.get(request.split("|", 1)[0])
            return _plain(make() if make else self._invalid())
        try:
            command = str(json.loads(request).get("command", ""))
        except (ValueError, AttributeError):
            return _dumps(self._invalid())
        names = command.split("+")
        if len(names) == 1 or any(n not in commands for n in names):
            make = commands.get(command)
            return _dumps(make() if make else self._invalid())
        return _dumps({**{n: [commands[n]()] for n in names}, "id": 1})

    def _serve(self, sock: socket.socket) -> None:
        sock.settimeout(2)
        request = _read_request(sock)
        self.requests.append(request)
        if self.mode == "silent":
            self._stopping.wait(60)
            return
        if self.mode == "garbage":
            sock.sendall(b"\x15\x03\x01\x00\x02HTTP/1.0 400 nonsense\r\n\0")
            return
        data = self.respond(request).encode() + (b"" if self.mode == "no_nul" else b"\0")
        if self.mode == "trickle":
            for i in range(0, len(data), 64):
                sock.sendall(data[i:i + 64])
                time.sleep(0.002)
        else:
            sock.sendall(data)

    def start(self, host: str = "127.0.0.1", port: int = 0) -> "SimulatedMiner":
        """Listen on host:port (0: a free port) in a background thread."""
        miner = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                try:
                    miner._serve(self.request)
                except OSError:
                    pass   # the client went away

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._stopping.clear()
        self._server = Server((host, port), Handler)
        self.host, self.port = self._server.server_address[:2]
        threading.Thread(target=self._server.serve_forever, name=f"miner-{self.worker}", daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop listening: connections are refused from now on (a miner switched off)."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def start_miners(miners: Iterable[SimulatedMiner]) -> list[SimulatedMiner]:
    """Start each miner on its own free loopback port."""
    return [m.start() for m in miners]


def stop_miners(miners: Iterable[SimulatedMiner]) -> None:
    for m in miners:
        m.stop()


def _read_request(sock: socket.socket) -> str:
    """A request ends at a NUL or newline, at the end of a JSON object, or when the client half-closes."""
    data = b""
    while len(data) < 8192:
        try:
            chunk = sock.recv(4096)
        except socket.timeout:
            break
        if not chunk:
            break
        data += chunk
        if b"\0" in data or b"\n" in data:
            break
        try:
            json.loads(data)
            break
        except ValueError:
            if not data.lstrip().startswith(b"{") and data.endswith(b"|"):
                break
    return data.decode("utf-8", "replace")


def _dumps(value) -> str:
    """JSON with Decimals written as numbers, digit for digit (what CGMiner's printf gives)."""
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{_dumps(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_dumps(v) for v in value) + "]"
    if isinstance(value, Decimal):
        return f"{value:f}"
    return json.dumps(value)


def _plain(reply: dict) -> str:
    """CGMiner's plain-text form: STATUS=S,When=…|SUMMARY,Elapsed=…,MHS av=…|"""
    def fields(item: dict) -> str:
        return ",".join(f"{k}={'true' if v is True else 'false' if v is False else v}" for k, v in item.items())
    out = fields(reply["STATUS"][0]) + "|"
    for section, items in reply.items():
        if section in ("STATUS", "id"):
            continue
        for item in items:
            out += (f"{section}," if section in ("SUMMARY", "VERSION") else "") + fields(item) + "|"
    return out
