"""`custody serve`: the coordinator's web service on uvicorn, configured from arguments or environment."""
from __future__ import annotations

import json
import os
import socket

from coordinator.jsonlog import setup_json_logging
from custody.store.db import open_database

from coordinator.app import create_app, node_factory

_CONFIG_ENV = "CUSTODY_SERVE_CONFIG"


def app_from_environment():
    """The application factory uvicorn calls in each worker process."""
    config = json.loads(os.environ[_CONFIG_ENV])
    setup_json_logging()
    sessions = open_database(config["db_url"])
    return create_app(sessions, node_factory(config["node_url"], **config["node_options"]),
                      network=config["node_options"].get("network") or "regtest",
                      sync_interval=config["sync_interval"])


def serve(*, db_url: str | None, node_url: str, node_options: dict, host: str = "127.0.0.1", port: int = 8000,
          sync_interval: float = 2.0, workers: int = 1, tls_cert: str | None = None, tls_key: str | None = None) -> None:
    import uvicorn
    if bool(tls_cert) != bool(tls_key):
        raise ValueError("TLS needs both --tls-cert and --tls-key")
    open_database(db_url)                 # migrate once, before any worker starts
    os.environ[_CONFIG_ENV] = json.dumps({"db_url": db_url, "node_url": node_url, "node_options": node_options,
                                          "sync_interval": sync_interval})
    setup_json_logging()
    config = uvicorn.Config("coordinator.server:app_from_environment", factory=True, host=host, port=port,
                            workers=workers, log_config=None, access_log=False, proxy_headers=True,
                            ssl_certfile=tls_cert, ssl_keyfile=tls_key)
    if workers <= 1:
        uvicorn.Server(config).run()
        return
    # Several processes share one listening socket. uvicorn binds it with protocol 0, so asyncio in the
    # workers does not recognise it as TCP and never sets TCP_NODELAY: every response then waits ~40 ms
    # for a delayed ACK. Re-opening the descriptor lets the kernel report IPPROTO_TCP.
    from uvicorn.supervisors import Multiprocess
    sock = config.bind_socket()
    sock = socket.socket(fileno=sock.detach())
    Multiprocess(config, sockets=[sock]).run()
