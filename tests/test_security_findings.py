"""Issue 16's findings 9, 10a, 12 (b, c) and 13 (flash), each with the attack that worked before:

9    the telemetry poller as a port scanner: it polls registered devices only, at addresses registered
     (and logged) on their own, on the farm's networks only, and whatever happens on the wire it answers
     one sentence that repeats nothing the peer sent (refused, silent and garbage look alike);
10a  download names: a policy name with a line break, a `"`, a `;` or outside Latin-1 exports with an RFC
     6266 header whose file name round-trips; new names with control characters are refused;
12b  deeply nested JSON in label imports, log verification, wallet, statement and telemetry imports is
     a 400 with the reason, not a 500;
12c  /api/derive on a policy's own `<0;1>` descriptor derives receive and change (or the branch asked);
13   `?flash=` in a link shows nothing: the console shows only messages the server sent this browser.
"""
from __future__ import annotations

import re
import socket
import threading
import time
from pathlib import Path
from urllib.parse import quote, unquote

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from coordinator import accounts
from coordinator.app import create_app, node_factory
from coordinator.cli.main import main
from coordinator.downloads import content_disposition
from custody.bitcoin.derive import derive_addresses
from custody.bitcoin.policies import build_policy
from custody.errors import CustodyError
from custody.eventlog import log as eventlog
from custody.eventlog.models import EventLogEntry
from custody.ledger import coins as ledger, registry
from custody.ledger.models import Policy
from custody.mining import service as ms
from custody.mining.telemetry import check_address, NO_ANSWER, TelemetryError
from custody.store.db import open_database
from regtest.miner import SimulatedMiner

from .conftest import hd_keys
from .test_api import Service
from .test_console_pages import Console, PASSWORD

NESTED = "[" * 20_000 + "]" * 20_000            # Python's parser gives up (RecursionError) near 1,000
SECRET = b"SSH-2.0-OpenSSH_9.6 SECRET-BANNER-7f3a\r\n"


@pytest.fixture
def sessions(tmp_path):
    return open_database(f"sqlite:///{tmp_path}/custody.db")


@pytest.fixture
def app(sessions, node):
    tokens, secrets_ = {}, {}
    with sessions.begin() as s:
        for name, role in [("root", "admin"), ("olga", "officer"), ("aude", "auditor"), ("vic", "viewer")]:
            user, secrets_[name] = accounts.create_user(s, name, role, PASSWORD)
            tokens[name] = accounts.create_token(s, user, "test")[0]
    application = create_app(sessions, node_factory(node.url, cookie_file=node.cookie_file), sync_interval=0)
    with TestClient(application) as client:
        yield Service(client, sessions, tokens, secrets_), Console(client, secrets_)


class Peer:
    """A TCP server on loopback that is no miner: it answers `reply` to anyone and closes, or (reply None)
    accepts and says nothing until stopped."""

    def __init__(self, reply: bytes | None):
        self.reply, self.stopping = reply, threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.sock.settimeout(0.2)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        held = []
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            if self.reply is None:
                held.append(conn)
                continue
            try:
                conn.recv(4096)
                conn.sendall(self.reply)
            finally:
                conn.close()
        for conn in held:
            conn.close()

    def stop(self):
        self.stopping.set()
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def peers():
    started = []

    def start(reply):
        started.append(Peer(reply))
        return started[-1]
    yield start
    for peer in started:
        peer.stop()


def closed_port() -> int:
    """A loopback port nobody listens on (connecting is refused)."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        return sock.getsockname()[1]


def fleet(sessions) -> None:
    with sessions.begin() as s:
        ms.pool_create(s, "Braiins", "braiins", actor="root")
        ms.account_create(s, "Braiins", "acct", scheme="FPPS", pool_fee_bps=0, fee_method="foundry",
                          payout_threshold=0, schedule="daily", payout_addresses=[], fleet_policy=None,
                          network="regtest", actor="root")


# -- 9: the telemetry poller is no port scanner ----------------------------------------------------------------
def test_addresses_are_ips_on_the_farms_networks_and_their_registration_is_logged(app, monkeypatch):
    svc, _ = app
    fleet(svc.sessions)
    device = {"serial": "S21-1", "model": "S21", "account": "acct", "worker": "rig1"}
    for host, port, reason in [("8.8.8.8", 4028, "outside the networks miners are polled on"),
                               ("169.254.169.254", 4028, "outside the networks"),    # a cloud's metadata service
                               ("::ffff:8.8.8.8", 4028, "outside the networks"),
                               ("0.0.0.0", 4028, "outside the networks"),
                               ("example.com", 4028, "is not an IP address"),
                               ("localhost", 4028, "is not an IP address"),      # a name resolves anywhere later
                               ("10.0.0.5", 22, "is not 1024 to 65535")]:
        made = svc.call("POST", "/api/mining/devices", "root", json={**device, "api_host": host, "api_port": port})
        assert made.status_code == 400 and reason in made.json()["detail"], (host, made.text)
    assert svc.call("GET", "/api/mining/devices", "root").json() == []            # nothing was registered

    assert svc.call("POST", "/api/mining/devices", "root", json=device).status_code == 201   # not polled
    for body, status in [({"api_host": "8.8.8.8", "api_port": 4028}, 400), ({"api_host": "10.1.2.3"}, 400),
                         ({"api_host": "10.1.2.3", "api_port": 4028, "extra": 1}, 422)]:
        assert svc.call("PUT", "/api/mining/devices/S21-1/address", "root", json=body).status_code == status
    assert svc.call("PUT", "/api/mining/devices/NOPE/address", "root",
                    json={"api_host": "10.1.2.3", "api_port": 4028}).status_code == 404
    assert svc.call("PUT", "/api/mining/devices/S21-1/address", "aude",
                    json={"api_host": "10.1.2.3", "api_port": 4028}).status_code == 403
    moved = svc.call("PUT", "/api/mining/devices/S21-1/address", "root", json={"api_host": "10.1.2.3", "api_port": 4028})
    assert moved.status_code == 200 and moved.json()["api"] == "10.1.2.3:4028"
    assert svc.call("PUT", "/api/mining/devices/S21-1/address", "olga",
                    json={"api_host": "[fd00::7]", "api_port": 4028}).json()["api"] == "fd00::7:4028"
    with svc.sessions() as s:
        logged = [(e.actor, e.data) for e in s.scalars(select(EventLogEntry).where(
            EventLogEntry.kind == "mining.device_address_set").order_by(EventLogEntry.seq))]
    assert [(a, d) for a, d in logged] == [("root", '{"api":"10.1.2.3:4028","before":null}'),
                                           ("olga", '{"api":"fd00::7:4028","before":"10.1.2.3:4028"}')]

    monkeypatch.setenv("CUSTODY_MINER_NETWORKS", "203.0.113.0/24, 198.51.100.7/32")    # the farm's own list
    assert check_address("203.0.113.9", 4028) == ("203.0.113.9", 4028)
    with pytest.raises(TelemetryError, match="outside the networks"):
        check_address("10.1.2.3", 4028)                 # the list replaces the defaults
    monkeypatch.setenv("CUSTODY_MINER_NETWORKS", "not-a-network")
    with pytest.raises(TelemetryError, match="CUSTODY_MINER_NETWORKS"):
        check_address("10.1.2.3", 4028)


def test_poll_targets_are_registered_devices_only(app):
    svc, _ = app
    fleet(svc.sessions)
    for body in [{"host": "10.0.0.9", "port": 22}, {"api_host": "10.0.0.9", "api_port": 22},
                 {"address": "10.0.0.9:22"}]:                      # an address is never a poll's argument
        assert svc.call("POST", "/api/mining/telemetry/poll", "olga", json=body).status_code == 422
    unknown = svc.call("POST", "/api/mining/telemetry/poll", "olga", json={"device": "10.0.0.9:22"})
    assert unknown.status_code == 404 and "no fleet device with serial '10.0.0.9:22'" in unknown.json()["detail"]

    # a device registered before addresses were checked (or outside a narrowed list) is not connected to
    with svc.sessions.begin() as s:
        ms.device_add(s, "OLD-1", model="S9", account="acct", worker="old1", actor="root")
        s.execute(update(ms.MiningDevice).where(ms.MiningDevice.serial == "OLD-1")
                  .values(api_host="93.184.216.34", api_port=80))
    polled = svc.call("POST", "/api/mining/telemetry/poll", "olga", json={"device": "OLD-1"}).json()
    assert polled["answered"] == 0 and polled["failed"]["OLD-1"].startswith("not polled: API host 93.184.216.34")


def test_a_peer_that_is_no_miner_is_never_echoed(app, peers):
    svc, _ = app
    fleet(svc.sessions)
    banner = peers(SECRET)                                              # an SSH server, say
    status = peers(b'{"STATUS":[{"STATUS":"E","Msg":"SECRET-MSG-91c2"}]}\0')   # JSON, but an error status
    http = peers(b"HTTP/1.1 200 OK\r\nServer: SECRET-HTTP-44d1\r\n\r\n{}")
    miner = SimulatedMiner(100, "acct.rig4").start()
    try:
        with svc.sessions.begin() as s:
            for n, port in enumerate((banner.port, status.port, http.port, miner.port), 1):
                ms.device_add(s, f"S21-{n}", model="S21", account="acct", worker=f"rig{n}", api_host="127.0.0.1",
                              api_port=port, actor="root")
        polled = svc.call("POST", "/api/mining/telemetry/poll", "olga", json={})
        assert polled.status_code == 200
        assert "SECRET" not in polled.text and "SSH" not in polled.text and "HTTP" not in polled.text
        one = svc.call("POST", "/api/mining/telemetry/poll", "olga", json={"device": "S21-1"})
    finally:
        miner.stop()
    assert polled.json()["failed"] == {"S21-1": NO_ANSWER, "S21-2": NO_ANSWER, "S21-3": NO_ANSWER}
    assert polled.json()["answered"] == 1 and polled.json()["ok"]["S21-4"]["worker"] == "acct.rig4"
    assert one.status_code == 200 and one.json()["failed"] == {"S21-1": NO_ANSWER} and one.json()["polled"] == 1
    assert "SECRET" not in one.text


def test_refused_and_silent_look_the_same(sessions, peers, run_cli):
    fleet(sessions)
    silent = peers(None)                                  # accepts, never answers
    with sessions.begin() as s:
        ms.device_add(s, "OFF-1", model="S21", account="acct", worker="off1", api_host="127.0.0.1",
                      api_port=closed_port(), actor="root")
        ms.device_add(s, "MUTE-1", model="S21", account="acct", worker="mute1", api_host="127.0.0.1",
                      api_port=silent.port, actor="root")
    with sessions.begin() as s:
        report = ms.telemetry_poll(s, timeout=0.5)
    assert report["failed"] == {"OFF-1": NO_ANSWER, "MUTE-1": NO_ANSWER}
    took = {}
    for serial in ("OFF-1", "MUTE-1"):           # nor does the time it took: a refusal waits out the timeout
        began = time.monotonic()
        with sessions.begin() as s:
            assert ms.telemetry_poll(s, device=serial, timeout=0.5)["failed"] == {serial: NO_ANSWER}
        took[serial] = time.monotonic() - began
    assert took["OFF-1"] >= 0.5 and took["MUTE-1"] >= 0.5, took

    code, out, err = run_cli("telemetry", "poll", "--device", "OFF-1", "--timeout", "0.5")
    assert code == 0 and out["failed"] == {"OFF-1": NO_ANSWER}
    code, out, err = run_cli("telemetry", "poll", "--device", "MUTE-1", "--timeout", "0.5")
    assert code == 0 and out["failed"] == {"MUTE-1": NO_ANSWER}
    code, out, err = run_cli("telemetry", "poll", "--device", "127.0.0.1:22")
    assert code == 1 and "no fleet device with serial '127.0.0.1:22'" in err
    code, out, err = run_cli("device", "address", "OFF-1", "--host", "1.1.1.1", "--port", "4028", actor="root")
    assert code == 1 and "outside the networks" in err
    code, out, err = run_cli("device", "address", "OFF-1", "--clear", actor="root")
    assert code == 0 and out["api"] is None


@pytest.fixture
def run_cli(sessions, node, tmp_path, capsys):
    def call(*args, actor="olga"):
        import json
        code = main(["--db", f"sqlite:///{tmp_path}/custody.db", "--node", node.url, "--node-cookie", str(node.cookie_file), "--network", "regtest",
                     "--actor", actor, "--json", "mining", *args])
        out, err = capsys.readouterr()
        return code, (json.loads(out) if code == 0 and out.strip() else out), err
    return call


# -- 10a: download names -----------------------------------------------------------------------------------------
HEADER = re.compile(r"""attachment; filename="[A-Za-z0-9._\-+()@,=~!#$&^']+"; filename\*=UTF-8''[A-Za-z0-9!#$&+\-.^_`|~%]+""")


def saved_name(header: str) -> str:
    """The file name a client that follows RFC 6266 saves: filename* (RFC 8187) over filename. Splitting at
    ";" is sound once HEADER matched: neither parameter may hold one unencoded."""
    params = dict(part.strip().split("=", 1) for part in header.split(";")[1:])
    charset, _, encoded = params["filename*"].split("'", 2)
    return unquote(encoded, encoding=charset, errors="strict")


@pytest.mark.parametrize("name, saved", [
    ('vault "cold"; filename=evil.exe', 'vault "cold"; filename=evil.exe-core.json'),
    ("a;b", "a;b-core.json"),
    ("金庫", "金庫-core.json"),
    ("Trésor 🏦", "Trésor 🏦-core.json"),
    ("line\r\nSet-Cookie: x=1", "line__Set-Cookie: x=1-core.json"),     # a name stored before names were checked
    ("tab\there", "tab_here-core.json"),
])
def test_exports_have_a_valid_header_and_the_name_round_trips(app, name, saved):
    svc, _ = app
    with svc.sessions.begin() as s:
        policy = registry.create_policy(s, "placeholder", build_policy("wsh-sortedmulti", 2, hd_keys(3, seed_base=8800)))
        policy.name = name                                 # as an older database may hold it
    exported = svc.call("GET", f"/api/policies/{quote(name, safe='')}/export?format=core", "aude")
    assert exported.status_code == 200, exported.text
    header = exported.headers["content-disposition"]
    assert HEADER.fullmatch(header), header                # one line, ASCII, the two parameters only
    assert saved_name(header) == saved
    assert '"' not in header.split('filename="', 1)[1].split('"', 1)[0]


def test_policy_names_are_one_line_of_printable_text(app):
    svc, _ = app
    spec = build_policy("wsh-sortedmulti", 2, hd_keys(3, seed_base=8810))
    with svc.sessions.begin() as s:
        for bad in ("two\nlines", "cr\rhere", "nul\0", "tab\t", "sep\u2028arator", "bidi\u202eexe.txt"):
            with pytest.raises(CustodyError, match=r"cannot hold control characters or line breaks \(U\+"):
                registry.create_policy(s, bad, spec)
        assert registry.create_policy(s, "金庫 \"A\"; b", spec).name == "金庫 \"A\"; b"    # any printable text
    refused = svc.call("POST", "/api/policies/import", "root",
                       json={"text": build_policy("wsh-sortedmulti", 2, hd_keys(3, seed_base=8820)).descriptor(),
                             "name": "evil\r\nname"})
    assert refused.status_code == 400 and "U+000D at character 5" in refused.json()["detail"]


def test_every_content_disposition_comes_from_the_one_helper():
    coordinator = Path(__file__).parents[1] / "coordinator"
    writers = [p.name for p in coordinator.rglob("*.py") if p.name != "downloads.py"
               and re.search(r"content-disposition|filename=", p.read_text(), re.IGNORECASE)]
    assert writers == []
    assert content_disposition("spend-7.psbt") == "attachment; filename=\"spend-7.psbt\"; filename*=UTF-8''spend-7.psbt"


# -- 12b: deeply nested JSON is a 400 with the reason ---------------------------------------------------------------
def test_deeply_nested_json_is_refused_with_a_reason(app):
    svc, _ = app
    label = '{"type": "tx", "ref": "' + "ab" * 32 + '", "label": ' + NESTED + "}"
    for jsonl, reason in [(label, "labels line 1: a label record nests arrays and objects deeper than 4 levels"),
                          ('{"type": "tx", "ref": "x", "origin": {"a": 1}}', '"origin" must be a string'),
                          ('{"type": "tx", "ref": "' + "x" * 201 + '"}', '"ref" is 1 to 200 characters')]:
        refused = svc.call("POST", "/api/labels/import", "olga", json={"jsonl": jsonl})
        assert refused.status_code == 400 and reason in refused.json()["detail"], refused.text

    for jsonl in (NESTED, '{"seq": 1, "data": ' + NESTED + "}"):
        refused = svc.call("POST", "/api/log/verify", "aude", json={"jsonl": jsonl})
        assert refused.status_code == 400, refused.text
        assert "entry 1: line 1 is not valid JSON (JSON nests arrays and objects deeper than 64 levels)" \
            in refused.json()["detail"]
    assert not eventlog.verify_jsonl(NESTED).ok

    refused = svc.call("POST", "/api/policies/import", "root", json={"text": NESTED, "format": "core"})
    assert refused.status_code == 400 and "nests arrays and objects deeper than 64 levels" in refused.json()["detail"]
    fleet(svc.sessions)
    refused = svc.call("POST", "/api/mining/telemetry/import", "olga", json={"format": "cgminer", "text": NESTED})
    assert refused.status_code == 400 and "line 1: nests arrays and objects too deeply" in refused.json()["detail"]
    refused = svc.call("POST", "/api/mining/accounts/1/statements", "olga", json={"source": "braiins", "payload": NESTED})
    assert refused.status_code == 400 and "nests arrays and objects too deeply" in refused.json()["detail"]


def test_label_records_stay_flat_and_exact(sessions):
    with sessions.begin() as s:
        assert ledger.import_labels(s, '{"type": "tx", "ref": "t1", "label": "a [b] {c}", "origin": "wpkh([d34db33f/84h])"}\n') == 1
        assert ledger.export_labels(s) == '{"type": "tx", "ref": "t1", "label": "a [b] {c}", "origin": "wpkh([d34db33f/84h])"}\n'


# -- 12c: /api/derive on the policies' own multipath descriptors ----------------------------------------------------
def test_derive_a_multipath_descriptor(app):
    svc, _ = app
    spec = build_policy("wsh-sortedmulti", 2, hd_keys(3, seed_base=8830))
    descriptor = spec.descriptor()
    assert "<0;1>/*" in descriptor
    receive, change = derive_addresses(spec, 0, 0, 2), derive_addresses(spec, 1, 0, 2)
    both = svc.call("POST", "/api/derive", "vic", json={"descriptor": descriptor, "start": 0, "end": 2})
    assert both.status_code == 200 and both.json() == [receive, change]          # as Core's deriveaddresses
    for branch, expected in ((0, receive), (1, change)):
        one = svc.call("POST", "/api/derive", "vic", json={"descriptor": descriptor, "end": 2, "branch": branch})
        assert one.status_code == 200 and one.json() == expected
    refused = svc.call("POST", "/api/derive", "vic", json={"descriptor": descriptor, "branch": 2})
    assert refused.status_code == 400 and "it has 2 (0 to 1; in <0;1>, 0 is receive and 1 change)" in refused.json()["detail"]
    single = spec.embit(1).to_string()
    assert svc.call("POST", "/api/derive", "vic", json={"descriptor": single, "end": 2}).json() == change
    refused = svc.call("POST", "/api/derive", "vic", json={"descriptor": single, "branch": 0})
    assert refused.status_code == 400 and "this descriptor has one path" in refused.json()["detail"]


# -- 13: flash messages come from the server -----------------------------------------------------------------------
def test_a_flash_in_a_link_shows_nothing(app):
    _, console = app
    console.login("olga")
    lure = "Send funds to bc1qattackerxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx now"
    for page in ("/utxos", "/mining", "/reserves"):
        shown = console.client.get(page, params={"flash": lure})
        assert shown.status_code == 200 and "bc1qattacker" not in shown.text and 'class="flash"' not in shown.text

    made = console.post("/labels", {"type": "tx", "ref": "ab" * 32, "text": "rent", "back_to": "/utxos"})
    assert made.status_code == 303 and "flash=labelled" in made.headers["location"]
    followed = console.client.get(made.headers["location"])
    assert f'<p class="flash" role="status">labelled {"ab" * 32}</p>' in followed.text     # the server's own word
    again = console.client.get(made.headers["location"])
    assert 'class="flash"' not in again.text                                             # once
    # the pending message is the server's, for this browser: another text in the link is still not shown
    made = console.post("/labels", {"type": "tx", "ref": "cd" * 32, "text": "x", "back_to": "/utxos"})
    assert 'class="flash"' not in console.client.get("/utxos", params={"flash": lure}).text
