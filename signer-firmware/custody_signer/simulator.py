"""`custody-signer simulate --state DIR`: the reference signer as a process on a local socket.

The device listens on a Unix socket named after its serial in the discovery directory (only local
processes reach it, and only its owner, by the file's permissions), where the HWI plugin looks for
devices (`discovery_dirs`). Each connection carries one JSON request line and gets one JSON reply line:
{"op": ..., ...} -> {"ok": true, "result": ...} or {"ok": false, "error": "..."}. Requests are served
one at a time, as a device with one screen would.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
from pathlib import Path

from .device import Device, DeviceError, decode_b64
# part of the simulator's public API: what a simulated device's screen showed (its holder's reading of it)
from .device import shown_first_address  # noqa: F401

MAX_SOCKET_PATH = 100                  # sun_path holds 108 bytes on Linux, fewer elsewhere
MAX_REQUEST = 8 * 1024 * 1024


def discovery_dirs() -> list[Path]:
    """Where simulators announce themselves: $CUSTODY_SIGNER_DISCOVERY (os.pathsep-separated), else a
    per-user directory under the system's temporary folder."""
    configured = os.environ.get("CUSTODY_SIGNER_DISCOVERY")
    if configured:
        return [Path(p) for p in configured.split(os.pathsep) if p]
    return [Path(tempfile.gettempdir()) / f"custody-signer-{os.getuid()}"]


def handle(device: Device, request: dict):
    """One request to the device; DeviceError carries the refusal."""
    op = request.get("op")
    if op == "info":
        return device.info()
    if op == "xpub":
        return device.xpub(_text(request, "path"))
    if op == "sign_message":
        return device.sign_message(_text(request, "message").encode(), _text(request, "path"))
    if op == "register":
        return device.register(_text(request, "name"), _text(request, "descriptor"))
    if op == "register_watch_only":
        return device.register_watch_only(_text(request, "name"), _text(request, "descriptor"))
    if op == "display_path":
        return device.display_path(request["path"])
    if op == "display_address":
        name = request.get("name") or device.wallet_for(_text(request, "descriptor")).name
        return device.display_address(name, _int(request, "branch"), _int(request, "index"))
    if op == "sign_psbt":
        return device.sign_psbt(_text(request, "psbt"))
    if op == "install_firmware":
        return device.install_firmware(decode_b64(_text(request, "image")))
    if op == "hsm_log":
        return device.hsm.log()
    raise DeviceError(f"unknown request {op!r}")


def _text(request: dict, field: str) -> str:
    value = request.get(field)
    if not isinstance(value, str):
        raise DeviceError(f"the request needs {field!r} as text")
    return value


def _int(request: dict, field: str) -> int:
    value = request.get(field)
    if type(value) is not int:
        raise DeviceError(f"the request needs {field!r} as a whole number")
    return value


class _Handler(socketserver.StreamRequestHandler):
    def handle(self):
        line = self.rfile.readline(MAX_REQUEST)
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise DeviceError("a request is a JSON object")
            reply = {"ok": True, "result": handle(self.server.device, request)}
        except (DeviceError, json.JSONDecodeError) as e:
            reply = {"ok": False, "error": str(e)}
        except Exception as e:                                 # a bug must not stop the device
            reply = {"ok": False, "error": f"internal error: {type(e).__name__}: {e}"}
        self.wfile.write(json.dumps(reply).encode() + b"\n")


class _Server(socketserver.UnixStreamServer):
    def __init__(self, path: str, device: Device):
        self.device = device
        super().__init__(path, _Handler)


def serve(state: Path) -> None:
    """Run the device until SIGTERM/SIGINT. Creates it (seed, factory firmware) on first start."""
    device = Device.open_or_create(Path(state))
    directory = discovery_dirs()[0]
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / f"{device.config['serial']}.sock"
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise DeviceError(f"socket path {path} is too long for a Unix socket; set CUSTODY_SIGNER_DISCOVERY "
                          "to a shorter directory")
    path.unlink(missing_ok=True)
    server = _Server(str(path), device)
    os.chmod(path, 0o600)
    signal.signal(signal.SIGTERM, _stop)
    print(json.dumps({"socket": str(path), **device.info()}), flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        path.unlink(missing_ok=True)


def spawn(state: Path, env: dict | None = None):
    """Start `custody-signer simulate --state STATE` as its own process; returns (process, device info)
    once the device listens. Stop it with `process.terminate()`."""
    process = subprocess.Popen([sys.executable, "-m", "custody_signer.cli", "simulate", "--state", str(state)],
                               stdout=subprocess.PIPE, text=True, env=env)
    line = process.stdout.readline()
    if not line:
        process.wait(timeout=10)
        raise RuntimeError(f"the simulator for {state} exited with status {process.returncode}")
    return process, json.loads(line)


def _stop(*_):
    raise KeyboardInterrupt


def call(path: str, request: dict, timeout: float = 60.0):
    """Send one request to a device socket; raises DeviceError with the device's message."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(path)
        except OSError as e:
            raise ConnectionError(f"no device answers at {path} ({e.strerror or e})") from None
        s.sendall(json.dumps(request).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    reply = json.loads(data)
    if not reply.get("ok"):
        raise DeviceError(reply.get("error", "the device refused"))
    return reply["result"]
