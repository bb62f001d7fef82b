"""What one request may cost the service (issue 16, findings 5 and 6), and /docs under the site's CSP.

- No body is read before the caller is known and admitted: an anonymous 50 MB body, one with an unknown
  token, or one for a role the route refuses is answered 401/403 (pages: the login redirect) with not one
  byte taken from it. A body over its route's limit is refused with 413: unread when its Content-Length
  says so, cut at the limit when it is sent without one.
- CPU-heavy work (PSBT checks, signature uploads) runs in worker processes: /health answers while four
  large ones are in progress, and a user's third at once is refused with 429.

Bodies are measured where the application takes them: a direct ASGI call whose `receive` counts the
bytes handed over (the test client would read a streamed body whole before the app asks), and once
through a real server on loopback, whose connection is closed instead of drained.
"""
from __future__ import annotations

import base64
import hashlib
import html.parser
import os
import struct
import threading

import anyio
import httpx
import pytest
from coincurve import PrivateKey
from fastapi.testclient import TestClient
from sqlalchemy import update

from coordinator import accounts
from coordinator.app import create_app, node_factory
from coordinator.auth import ROUTE_ACCESS, SESSION_COOKIE
from coordinator.body_limit import DEFAULT_LIMIT, LIMITS, Routes
from custody.spending.models import Spend
from custody.store.db import open_database

from .support import served, wait_until
from .test_api import _approve, _request, _signed_by, coins, service, vault  # noqa: F401 - coins, service, vault: fixtures
from .test_custody_spends import device
from .test_console_e2e import CHROMIUM, CHROMIUM_ARGS, REQUIRED

PASSWORD = "correct horse battery staple"
MB = 1_000_000
CHUNK = 65_536


# -- a service without a node, for what is refused before any route runs ---------------------------
@pytest.fixture
def gated(tmp_path):
    """The app on a fresh SQLite database (no node: nothing here gets that far), with API tokens and
    login sessions per user."""
    sessions = open_database(f"sqlite:///{tmp_path}/limits.db")
    tokens, cookies = {}, {}
    with sessions.begin() as s:
        for name, role in [("olga", "officer"), ("sina", "signatory"), ("vic", "viewer")]:
            user, _ = accounts.create_user(s, name, role, PASSWORD, second_factor=False)
            tokens[name], _ = accounts.create_token(s, user, "test")
            cookie, row = accounts.start_session(s, user)
            cookies[name] = (cookie, row.csrf_token)
    app = create_app(sessions, node_factory("http://127.0.0.1:9", user="u", password="p"), sync_interval=0)
    return app, tokens, cookies


class Body:
    """A request body handed to the app a chunk at a time, counting what the app took."""

    def __init__(self, size: int, start: bytes = b""):
        self.size, self.start, self.pulled = size, start, 0

    def next_chunk(self) -> bytes | None:
        if self.pulled >= self.size:
            return None
        chunk = (self.start if not self.pulled else b"") + b"x" * CHUNK
        chunk = chunk[:min(CHUNK, self.size - self.pulled)]
        self.pulled += len(chunk)
        return chunk


def call(app, method: str, path: str, body: Body | None = None, *, headers: dict | None = None):
    """One request straight to the ASGI app: (status, headers, response body)."""
    body = body or Body(0)
    answer = {"status": None, "headers": {}, "body": b""}

    async def receive():
        chunk = body.next_chunk()
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message):
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
            answer["headers"] = {k.decode().lower(): v.decode() for k, v in message.get("headers", [])}
        elif message["type"] == "http.response.body":
            answer["body"] += message.get("body", b"")

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
             "client": ("127.0.0.1", 50000), "server": ("testserver", 80)}
    anyio.run(app, scope, receive, send)
    return answer["status"], answer["headers"], answer["body"]


def bearer(token: str) -> dict:
    return {"authorization": f"Bearer {token}"}


JSON = {"content-type": "application/json", "transfer-encoding": "chunked"}
FORM = {"content-type": "multipart/form-data; boundary=xyz", "transfer-encoding": "chunked"}
FILE_PART = (b'--xyz\r\ncontent-disposition: form-data; name="file"; filename="s.psbt"\r\n'
             b"content-type: application/octet-stream\r\n\r\n")           # then the file, never ending


# -- 5: nothing is read for a caller who is refused -------------------------------------------------
@pytest.mark.parametrize("method, path, headers", [
    ("POST", "/api/psbt/check", JSON),                          # JSON, a heavy route
    ("POST", "/api/spends/1/signatures", FORM),                 # a file upload
    ("POST", "/api/spends", JSON),                              # an ordinary route
    ("POST", "/api/log/verify", JSON),                          # the largest limit (128 MB)
])
def test_an_anonymous_50_mb_body_is_refused_unread(gated, method, path, headers):
    app, _, _ = gated
    body = Body(50 * MB)
    status, answered, text = call(app, method, path, body, headers=headers)
    assert status == 401 and b"log in, or send an API token" in text
    assert body.pulled == 0
    assert answered["connection"] == "close"                   # the server closes rather than drains it
    assert "script-src 'self'" in answered["content-security-policy"]   # refusals carry the site's headers


def test_a_console_upload_without_a_session_goes_to_the_login_page_unread(gated):
    app, _, _ = gated
    body = Body(50 * MB)
    status, answered, _ = call(app, "POST", "/spends/1/signatures", body, headers=FORM)
    assert status == 303 and answered["location"].startswith("/login?next=/spends/1/signatures")
    assert body.pulled == 0


def test_unknown_tokens_and_refused_roles_send_no_body(gated):
    app, tokens, _ = gated
    body = Body(50 * MB)
    status, _, text = call(app, "POST", "/api/spends/1/signatures", body,
                           headers={**FORM, **bearer("cst_nonsense")})
    assert status == 401 and b"unknown, expired or revoked" in text and body.pulled == 0
    body = Body(50 * MB)
    status, _, text = call(app, "POST", "/api/spends/1/signatures", body, headers={**FORM, **bearer(tokens["vic"])})
    assert status == 403 and b"the viewer role may not do this (psbt.upload)" in text and body.pulled == 0


def test_a_declared_length_over_the_limit_is_refused_unread(gated):
    app, tokens, _ = gated
    body = Body(50 * MB)
    status, answered, text = call(app, "POST", "/api/spends", body, headers={
        "content-type": "application/json", "content-length": str(50 * MB), **bearer(tokens["olga"])})
    assert status == 413 and body.pulled == 0
    assert b"50,000,000 bytes" in text and b"POST /api/spends accepts at most 1,000,000" in text
    assert answered["connection"] == "close"


@pytest.mark.parametrize("path, limit", [("/api/spends", DEFAULT_LIMIT),
                                         ("/api/psbt/check", LIMITS[("POST", "/api/psbt/check")].bytes)])
def test_a_chunked_body_is_cut_at_its_routes_limit(gated, path, limit):
    app, tokens, _ = gated
    body = Body(50 * MB)
    status, answered, text = call(app, "POST", path, body, headers={**JSON, **bearer(tokens["olga"])})
    assert status == 413 and f"passed {limit:,} bytes".encode() in text
    assert limit < body.pulled <= limit + CHUNK                 # read up to the limit, not a chunk further
    assert answered["connection"] == "close"


def test_a_console_upload_over_16_mb_is_cut_at_the_limit(gated):
    """A signatory's session, with its CSRF token in the header: the form is read up to the upload's
    limit (16 MB and room for the form around it), and the console shows the refusal."""
    app, _, cookies = gated
    cookie, csrf = cookies["sina"]
    limit = LIMITS[("POST", "/spends/{spend_id}/signatures")].bytes
    assert 16 * MB < limit < 17 * MB
    body = Body(50 * MB, FILE_PART)
    status, answered, text = call(app, "POST", "/spends/1/signatures", body, headers={
        **FORM, "cookie": f"{SESSION_COOKIE}={cookie}", "x-csrf-token": csrf})
    assert status == 413 and answered["content-type"].startswith("text/html")
    assert limit < body.pulled <= limit + CHUNK


def test_a_real_server_closes_a_refused_connection_instead_of_draining_it(gated):
    """Through uvicorn on loopback: the anonymous 50 MB upload is answered 401 and the client stops
    sending long before its end (what it did send sits in the sockets' buffers)."""
    app, _, _ = gated
    sent = 0

    def chunks():
        nonlocal sent
        for _ in range(50 * MB // CHUNK):
            sent += CHUNK
            yield b"x" * CHUNK
    with served(app) as base:
        response = httpx.post(f"{base}/api/psbt/check", content=chunks(), headers={"content-type": "application/json"},
                              timeout=60)
    assert response.status_code == 401
    assert sent < 25 * MB


def test_every_limit_names_a_route_and_the_gate_finds_each_route(gated):
    assert set(LIMITS) <= set(ROUTE_ACCESS), sorted(set(LIMITS) - set(ROUTE_ACCESS))
    routes = Routes(dict(ROUTE_ACCESS))
    for method, path in ROUTE_ACCESS:
        concrete = "/".join("7" if part.startswith("{") else part for part in path.split("/"))
        found = routes.find(method, concrete)
        assert found is not None and found.path == path, (method, path, found)


# -- 6: heavy work off the event loop, a few per user ----------------------------------------------
KEYS = [PrivateKey(bytes([i + 1]) * 32).public_key.format() for i in range(3)]
WITNESS_SCRIPT = b"\x52" + b"".join(b"\x21" + k for k in KEYS) + b"\x53\xae"
SCRIPT = b"\x00\x20" + hashlib.sha256(WITNESS_SCRIPT).digest()


def _compact(n: int) -> bytes:
    return bytes([n]) if n < 0xFD else b"\xfd" + n.to_bytes(2, "little") if n <= 0xFFFF else b"\xfe" + n.to_bytes(4, "little")


def _kv(key: bytes, value: bytes) -> bytes:
    return _compact(len(key)) + key + _compact(len(value)) + value


def big_psbt(inputs: int) -> bytes:
    """A well-formed PSBT spending `inputs` 2-of-3 P2WSH coins (witness UTXO, witness script and three
    derivations each): some 390 bytes an input."""
    tx = struct.pack("<i", 2) + _compact(inputs) + b"".join(
        hashlib.sha256(i.to_bytes(4, "little")).digest() + bytes(4) + b"\x00" + struct.pack("<I", 0xFFFFFFFD)
        for i in range(inputs)) + _compact(1) + struct.pack("<q", 1000) + _compact(len(SCRIPT)) + SCRIPT + bytes(4)
    path = b"".join(struct.pack("<I", x) for x in (0x80000030, 0x80000001, 0x80000000, 0x80000002, 0, 7))
    each = (_kv(b"\x01", struct.pack("<q", 100_000) + _compact(len(SCRIPT)) + SCRIPT) + _kv(b"\x05", WITNESS_SCRIPT)
            + b"".join(_kv(b"\x06" + k, bytes([j]) * 4 + path) for j, k in enumerate(KEYS)) + b"\x00")
    return b"psbt\xff" + _kv(b"\x00", tx) + b"\x00" + each * inputs + b"\x00"


CHECK_INPUTS = 30_000          # ~12 MB, 16 M characters of base64: 1-2 s of checking
UPLOAD_INPUTS = 5_000          # ~3 s of parsing and merging


def _in_background(calls: dict) -> tuple[list[threading.Thread], dict]:
    """Start each name -> call in a thread; results[name] is set when its response has arrived."""
    results: dict = {}
    threads = [threading.Thread(target=lambda n=name, c=fn: results.__setitem__(n, c())) for name, fn in calls.items()]
    for t in threads:
        t.start()
    return threads, results


def test_health_answers_while_four_large_checks_and_uploads_run(service, vault):
    """Two signatories upload a 5,000-input PSBT and two other users check a 30,000-input one, at
    once: all four are in the worker processes when /health is asked, and /health answers before any
    of them has."""
    sid = _request(service).json()["id"]
    assert _approve(service, sid, "omar").status_code == 200
    assert service.call("POST", f"/api/spends/{sid}/psbt", "omar").status_code == 200
    upload = big_psbt(UPLOAD_INPUTS)
    with service.sessions.begin() as s:       # a spend collecting signatures on that large PSBT
        s.execute(update(Spend).where(Spend.id == sid).values(psbt=base64.b64encode(upload).decode()))
    check = base64.b64encode(big_psbt(CHECK_INPUTS)).decode()
    assert DEFAULT_LIMIT < len(check) < 20_000_000
    pool = service.client.app.state.cpu_pool

    def uploading(who):
        return lambda: service.call("POST", f"/api/spends/{sid}/signatures", who, files={"file": ("s.psbt", upload)})

    def checking(who):
        return lambda: service.call("POST", "/api/psbt/check", who, json={"psbt": check})
    threads, results = _in_background({"sina": uploading("sina"), "sam": uploading("sam"),
                                       "vic": checking("vic"), "aude": checking("aude")})
    wait_until(lambda: pool.in_flight == 4, what="four jobs in the worker processes")
    health = service.call("GET", "/health")
    finished_first = sorted(results)
    for t in threads:
        t.join()
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert finished_first == [], f"{finished_first} answered before /health"
    for who in ("vic", "aude"):
        assert results[who].status_code == 200, results[who].text
        assert len(results[who].json()["inputs"]) == CHECK_INPUTS
    for who in ("sina", "sam"):                # merged and verified in full: nothing new to store
        assert results[who].status_code == 400 and "adds no new signature" in results[who].json()["detail"]


def test_a_users_third_heavy_request_at_once_is_refused(service):
    check = base64.b64encode(big_psbt(CHECK_INPUTS)).decode()
    small = base64.b64encode(big_psbt(2)).decode()
    pool = service.client.app.state.cpu_pool
    threads, results = _in_background({n: (lambda: service.call("POST", "/api/psbt/check", "vic", json={"psbt": check}))
                                       for n in ("first", "second")})
    wait_until(lambda: pool.in_flight == 2, what="the viewer's two checks in the worker processes")
    third = service.call("POST", "/api/psbt/check", "vic", json={"psbt": small})
    still_running = not results
    other = service.call("POST", "/api/psbt/check", "aude", json={"psbt": small})   # waits for a worker
    for t in threads:
        t.join()
    assert still_running                                         # refused at once, not queued
    assert third.status_code == 429 and int(third.headers["retry-after"]) >= 1
    assert "vic already has 2 uploads or checks in progress" in third.json()["detail"]
    assert other.status_code == 200                              # another user is not held up
    assert [r.status_code for r in results.values()] == [200, 200]
    again = service.call("POST", "/api/psbt/check", "vic", json={"psbt": small})
    assert again.status_code == 200 and len(again.json()["inputs"]) == 2


def test_two_signatures_uploaded_at_once_are_both_kept(service, vault):
    """Both are merged in worker processes from the same stored PSBT; the second to be stored finds
    the PSBT changed and merges again from the first's, so neither signature is lost."""
    sid = _request(service).json()["id"]
    assert _approve(service, sid, "omar").status_code == 200
    assert service.call("POST", f"/api/spends/{sid}/psbt", "omar").status_code == 200
    unsigned = service.call("GET", f"/api/spends/{sid}/psbt", "sina").content
    signed = {"sina": _signed_by(vault, unsigned), "sam": _signed_by(vault + 1, unsigned)}
    start = threading.Barrier(2)

    def upload(who):
        def run():
            start.wait()
            return service.call("POST", f"/api/spends/{sid}/signatures", who, files={"file": ("s.psbt", signed[who])})
        return run
    threads, results = _in_background({who: upload(who) for who in signed})
    for t in threads:
        t.join()
    assert [results[w].status_code for w in signed] == [200, 200], [results[w].text for w in signed]
    shown = service.call("GET", f"/api/spends/{sid}", "vic").json()
    assert shown["state"] == "signed"
    assert sorted(shown["signed_by"]) == sorted(device(n).my_fingerprint.hex() for n in (vault, vault + 1))
    assert [e["kind"] for e in shown["timeline"]].count("psbt.signed") == 2


POOL_USER = """
import asyncio, os, sys
from coordinator.cpu_pool import CpuPool

async def main():
    pool = CpuPool(workers=2)
    pids = await asyncio.gather(*(pool.run(os.getpid) for _ in range(6)))
    print(" ".join(str(p) for p in sorted(set(pids))), flush=True)
    await asyncio.sleep(600)
asyncio.run(main())
"""


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"     # a zombie has ended
    except FileNotFoundError:
        return False


def test_a_killed_server_leaves_no_worker_processes():
    """SIGKILL gives the server no chance to stop its pool: the workers (and the fork server they
    came from) notice it is gone and end by themselves."""
    import signal
    import subprocess
    import sys
    from pathlib import Path
    server = subprocess.Popen([sys.executable, "-c", POOL_USER], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parent.parent)
    try:
        workers = [int(p) for p in server.stdout.readline().split()]
        assert workers and all(_running(p) for p in workers)
        with open(f"/proc/{workers[0]}/stat") as f:
            fork_server = int(f.read().rsplit(")", 1)[1].split()[1])
        assert fork_server != server.pid and _running(fork_server)
    finally:
        server.send_signal(signal.SIGKILL)
        server.wait()
    wait_until(lambda: not any(_running(p) for p in workers + [fork_server]),
               what="the killed server's workers and fork server to end")


# -- /docs under the content security policy --------------------------------------------------------
class _Assets(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.scripts, self.inline, self.links = [], [], []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script":
            self._in_script = True
            self.scripts.append(attrs.get("src"))
        if tag == "link":
            self.links.append(attrs.get("href"))

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script and data.strip():
            self.inline.append(data)


def _same_origin(url: str | None) -> bool:
    return bool(url) and url.startswith("/") and not url.startswith("//")


def test_docs_loads_only_scripts_its_csp_allows(gated):
    """script-src 'self': no inline script, no other origin; every script and stylesheet is served here."""
    app, _, _ = gated
    with TestClient(app) as client:
        page = client.get("/docs")
        assert page.status_code == 200
        csp = page.headers["content-security-policy"]
        assert "script-src 'self';" in csp and "style-src 'self';" in csp
        assets = _Assets()
        assets.feed(page.text)
        assert assets.scripts and all(_same_origin(src) for src in assets.scripts), assets.scripts
        assert assets.inline == []
        assert assets.links and all(_same_origin(href) for href in assets.links), assets.links
        for src in assets.scripts:
            script = client.get(src)
            assert script.status_code == 200 and "javascript" in script.headers["content-type"], src
        for href in assets.links:
            assert client.get(href).status_code == 200, href
        assert client.get("/openapi.json").status_code == 200
        assert client.get("/redoc").status_code == 404          # ReDoc needs inline styles and blob workers


@pytest.mark.skipif(not os.path.exists(CHROMIUM) and not REQUIRED, reason=f"no Chromium at {CHROMIUM}")
def test_docs_renders_in_a_browser_under_the_csp(gated):
    """Swagger UI, in Chromium, draws every operation with nothing refused by the CSP."""
    if REQUIRED:
        from playwright.sync_api import sync_playwright
    else:
        sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    app, _, _ = gated
    with served(app) as base, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            problems = []
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(f"{base}/docs")
            page.wait_for_selector(".opblock")
            assert page.locator(".opblock").count() >= 60
            assert "Custody coordinator" in page.locator(".info .title").inner_text()
            assert problems == []
        finally:
            browser.close()
