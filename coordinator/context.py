"""What a route needs from the running service: a database transaction, the node, the acting user."""
from __future__ import annotations

from contextlib import contextmanager

from fastapi import Request

from custody.chain.node_client import NodeClient


@contextmanager
def read(request: Request):
    """A session for reading; nothing it does is committed."""
    with request.app.state.sessions() as session:
        yield session


@contextmanager
def write(request: Request):
    """A transaction: committed when the block ends normally, rolled back on any refusal."""
    with request.app.state.sessions.begin() as session:
        yield session


def node(request: Request) -> NodeClient:
    return request.app.state.node()


def actor(request: Request) -> str:
    """The logged-in user's name: what the event log records and what approvals count."""
    return request.state.principal.username
