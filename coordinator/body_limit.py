"""Before a route reads a byte of its request body: who is asking, may they, and how much may they send.

One anonymous 200 MB JSON body took the server from 164 to 736 MB before it was answered 401, because
FastAPI reads and parses the body before it solves the route's dependencies (the permission check
among them), and nothing bounded a body's size. `RequestGate` is ASGI middleware in front of every
route: it finds the route the request is for (the table auth.route fills, ROUTE_ACCESS) and, before
anything reads the body:

1. Who: the caller is identified from the bearer token or the session cookie (auth.identified: the
   logic of auth.identify, in a thread), and a caller the route's permission does not admit is refused
   before any byte of the body is received: 401 for the API, the login redirect for a page, 403 for a
   role not allowed. The answer is kept for the route's own check (auth.authorize), which does not
   look the caller up again.
2. How much: a body declared (Content-Length) larger than the route's limit is refused with 413 naming
   the limit, nothing read; a body sent without a length (chunked) is counted as it arrives and refused
   with 413 as soon as it passes the limit. Limits are per route (LIMITS): a PSBT upload up to 16 MB as
   the routes say, other imports as their fields allow; everything else DEFAULT_LIMIT, and routes anyone
   may call (the login form) PUBLIC_LIMIT.
3. How many: a HEAVY route (it parses or verifies large inputs: coordinator/cpu_pool.py runs that work
   in worker processes) takes one of the caller's heavy slots for the whole request, before its body is
   read: a user's third at once is refused with 429 and Retry-After.
"""
from __future__ import annotations

import re
from contextlib import ExitStack
from dataclasses import dataclass

from fastapi import HTTPException, Request
from starlette.datastructures import Headers
from starlette.routing import compile_path

from coordinator import auth

MB = 1_000_000
DEFAULT_LIMIT = 1 * MB
PUBLIC_LIMIT = 64_000           # what anyone may send: the login form
FORM = 64_000                   # room for a form's boundaries, part headers and CSRF field around a file


@dataclass(frozen=True)
class Limit:
    bytes: int = DEFAULT_LIMIT
    heavy: bool = False


UPLOAD = Limit(16 * MB + FORM, heavy=True)        # the routes' own 16 MB PSBT limit, as a form upload
LIMITS: dict[tuple[str, str], Limit] = {
    ("POST", "/api/spends/{spend_id}/signatures"): UPLOAD,
    ("POST", "/spends/{spend_id}/signatures"): UPLOAD,
    ("POST", "/api/reserves/{run_id}/signatures"): UPLOAD,
    ("POST", "/reserves/{run_id}/signatures"): UPLOAD,
    ("POST", "/api/psbt/check"): Limit(20 * MB + FORM, heavy=True),     # 20M characters of base64 or hex
    ("POST", "/api/derive"): Limit(heavy=True),                          # up to 10,000 derivations
    # JSON Lines inside a JSON string: escaped quotes make the body larger than the field's characters
    ("POST", "/api/labels/import"): Limit(16 * MB, heavy=True),         # 10M characters
    ("POST", "/api/log/verify"): Limit(128 * MB, heavy=True),           # 100M characters
    ("GET", "/api/log/verify"): Limit(heavy=True),                       # the whole log, every signature
    ("POST", "/api/reserves/{run_id}/check"): Limit(heavy=True),         # the auditor's verification
    ("POST", "/reserves/{run_id}/check"): Limit(heavy=True),
    ("POST", "/api/firmware"): Limit(40 * MB + FORM, heavy=True),       # 40M characters of base64
    ("POST", "/firmware/add"): Limit(40 * MB + FORM, heavy=True),       # a 40 MB image, as a form upload
    ("POST", "/api/mining/accounts/{account_id}/statements"): Limit(24 * MB, heavy=True),   # 16M characters
    ("POST", "/api/mining/telemetry/import"): Limit(24 * MB, heavy=True),                   # 16M characters
    ("POST", "/enroll/{token}"): Limit(8_000),      # anyone with a link: two passwords, a secret and a code
}


class BodyTooLarge(HTTPException):
    def __init__(self, detail: str):
        super().__init__(413, detail)


def _declared_length(scope) -> int | None:
    value = Headers(scope=scope).get("content-length")
    if value is None:
        return None
    if not value.strip().isdigit():
        raise HTTPException(400, f"Content-Length {value!r} is not a number of bytes")
    return int(value)


def limit_for(method: str, path: str, action: str | None) -> Limit:
    found = LIMITS.get((method, path))
    if found is not None:
        return found
    return Limit(PUBLIC_LIMIT) if action == "public" else Limit()


@dataclass(frozen=True)
class Target:
    """What the gate knows of the route a request is for."""
    path: str                   # the route's template, e.g. /api/spends/{spend_id}/signatures
    action: str | None          # its permission (auth.PERMISSIONS); None: a path no route of ours serves
    page: bool
    limit: Limit


class Routes:
    """auth.ROUTE_ACCESS as matchers: the route a method and path are for, as the router will find it
    (where two templates match, the one with more literal segments: the router's order puts it first,
    or the other would never be reached)."""

    def __init__(self, access: dict[tuple[str, str], tuple[str, bool]]):
        self.by_method: dict[str, list[tuple[int, re.Pattern, Target]]] = {}
        for (method, path), (action, page) in access.items():
            literal = sum(1 for part in path.split("/") if part and "{" not in part)
            regex = compile_path(path)[0]
            self.by_method.setdefault(method, []).append(
                (literal, regex, Target(path, action, page, limit_for(method, path, action))))
        for candidates in self.by_method.values():
            candidates.sort(key=lambda c: -c[0])
        self.size = len(access)

    def find(self, method: str, path: str) -> Target | None:
        for _, regex, target in self.by_method.get(method, ()):
            if regex.match(path):
                return target
        return None


UNROUTED = Target("unmatched", None, False, Limit())


class RequestGate:
    """ASGI middleware (see the module's docstring). Its refusals are answered by the app's own
    exception handlers, as the route's would be: JSON for the API, the error page or the login
    redirect for the console."""

    def __init__(self, app, *, slots):
        self.app, self.slots = app, slots
        self.routes: Routes | None = None

    def _target(self, scope) -> Target:
        if self.routes is None or self.routes.size != len(auth.ROUTE_ACCESS):
            self.routes = Routes(dict(auth.ROUTE_ACCESS))
        return self.routes.find(scope["method"], scope["path"]) or UNROUTED

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        target = self._target(scope)
        request = Request(scope)            # without `receive`: nothing here can read the body
        state = {"received": 0, "done": not _has_body(scope)}

        async def answered(message):
            # A body left unread is not drained by the server either: the connection is closed instead.
            if message["type"] == "http.response.start" and not state["done"]:
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
                message = {**message, "headers": headers + [(b"connection", b"close")]}
            await send(message)

        principal = None
        held = ExitStack()
        try:
            if target.action is not None:
                principal = await auth.identified(request)
                auth.permit(target.action, principal, page=target.page)
            limit = target.limit.bytes
            declared = _declared_length(scope)
            if declared is not None and declared > limit:
                raise BodyTooLarge(f"the request body is {declared:,} bytes; {scope['method']} {target.path} "
                                   f"accepts at most {limit:,}")
            if target.limit.heavy:
                who, name = (principal.user_id, principal.username) if principal else ("anonymous", "anonymous")
                held.enter_context(self.slots.hold(who, name))
        except Exception as refusal:        # noqa: BLE001 - answered as the app answers it, or raised
            return await self._refuse(scope, receive, answered, refusal, target, principal)

        async def counted():
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                state["done"] = not message.get("more_body", False)
                if state["received"] > limit:
                    state["done"] = False
                    # raised inside the app: FastAPI passes an HTTPException met while reading a body
                    # on to the app's handlers, which answer 413
                    raise BodyTooLarge(f"the request body passed {limit:,} bytes, the most {scope['method']} "
                                       f"{target.path} accepts; it was not read further")
            elif message["type"] == "http.disconnect":
                state["done"] = True
            return message

        with held:
            await self.app(scope, counted, answered)

    async def _refuse(self, scope, receive, send, refusal: Exception, target: Target, principal) -> None:
        app = scope.get("app")
        handlers = getattr(app, "exception_handlers", {})
        handler = next((handlers[cls] for cls in type(refusal).__mro__ if cls in handlers), None)
        if handler is None:
            raise refusal
        scope.setdefault("state", {})["principal"] = principal     # the error page's header; the request log
        scope["route"] = target                                      # the request log's route template
        response = await handler(Request(scope), refusal)
        await response(scope, receive, send)


def _has_body(scope) -> bool:
    headers = Headers(scope=scope)
    return headers.get("content-length", "0").strip() not in ("", "0") or "transfer-encoding" in headers
