"""The API of keys, policies and the coins they hold: policies and their approval rules, balances, coins,
freezing, labels (BIP-329), sync."""
from __future__ import annotations

import threading
import time
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import Field

from custody.governance import proposals as governance
from custody.ledger import service
from custody.spending import service as spend_service

from coordinator import refusals, visibility
from coordinator.api.common import ACCEPTED, Amount, Name, proposed, Strict
from coordinator.auth import route
from coordinator.context import actor, node, read, write
from coordinator.cpu_pool import in_thread, offload
from coordinator.downloads import attachment

router = APIRouter(prefix="/api")


# -- keys and policies -----------------------------------------------------------------------------
class KeyIn(Strict):
    key: str = Field(min_length=1, max_length=400, description="[fingerprint/path]xpub, or a bare key with fingerprint and path")
    fingerprint: str | None = Field(None, max_length=8)
    path: str | None = Field(None, max_length=200)


@route(router, "GET", "/keys", "key.read")
def list_keys(request: Request) -> list[dict]:
    with read(request) as s:
        return visibility.keys(visibility.reader(request, s), service.key_list(s))


@route(router, "POST", "/keys", "key.write", status_code=201)
def import_key(request: Request, body: KeyIn) -> dict:
    with write(request) as s:
        return service.key_import(s, body.key, network=request.app.state.network, fingerprint=body.fingerprint,
                                  path=body.path)


class PolicyIn(Strict):
    name: Name
    kind: Literal["wsh-sortedmulti", "wsh-multi", "tr-sortedmulti_a", "wsh-recovery"] = "wsh-sortedmulti"
    threshold: int = Field(ge=1, le=20)
    keys: list[str] = Field(min_length=1, max_length=20)
    recovery_keys: list[str] = Field(default_factory=list, max_length=20)
    recovery_threshold: int = Field(1, ge=1, le=20)
    recovery_after: int = Field(0, ge=0, le=65535)
    gap_limit: int = Field(20, ge=1, le=1000)


class PolicyImportIn(Strict):
    text: str = Field(min_length=1, max_length=100_000, description="the wallet file's contents")
    format: Literal["core", "bsms", "coldcard", "sparrow", "specter", "caravan"] | None = None
    name: str | None = Field(None, min_length=1, max_length=200)
    gap_limit: int = Field(20, ge=1, le=1000)


class StatusIn(Strict):
    status: Literal["active", "retiring", "retired"]


@route(router, "GET", "/policies", "policy.read")
def list_policies(request: Request) -> list[dict]:
    with read(request) as s:
        return service.policy_list(s)


@route(router, "POST", "/policies", "policy.write", status_code=201)
def create_policy(request: Request, body: PolicyIn) -> dict:
    with write(request) as s:
        return service.policy_create(s, body.name, kind=body.kind, threshold=body.threshold, keys=body.keys,
                                     network=request.app.state.network, recovery_keys=body.recovery_keys,
                                     recovery_threshold=body.recovery_threshold, recovery_after=body.recovery_after,
                                     gap_limit=body.gap_limit, actor=actor(request))


@route(router, "POST", "/policies/import", "policy.write", status_code=201)
def import_policy(request: Request, body: PolicyImportIn) -> dict:
    with write(request) as s:
        return service.policy_import(s, body.text, fmt=body.format, name=body.name, network=request.app.state.network,
                                     gap_limit=body.gap_limit, actor=actor(request))


@route(router, "GET", "/policies/{name}", "policy.read")
def show_policy(request: Request, name: str) -> dict:
    with read(request) as s:
        shown = spend_service.policy_show(s, name)
        return visibility.policy(visibility.reader(request, s), shown, name)


@route(router, "GET", "/policies/{name}/export", "policy.export", response_class=PlainTextResponse)
def export_policy(request: Request, name: str,
                  format: Literal["core", "bsms", "coldcard", "sparrow", "specter", "caravan"] = "core"):
    with read(request) as s:
        text = service.policy_export(s, name, format)
        visibility.require_xpubs(visibility.reader(request, s), [name], "the export")
    extension = {"core": "json", "bsms": "bsms", "coldcard": "txt", "sparrow": "json", "specter": "json",
                 "caravan": "json"}[format]
    return PlainTextResponse(text, headers=attachment(f"{name}-{format}.{extension}"))


@route(router, "POST", "/policies/{name}/status", "policy.write", status_code=202, responses=ACCEPTED)
def set_policy_status(request: Request, name: str, body: StatusIn) -> dict:
    """Proposes the change (custody.governance.proposals): other admins or officers approve it."""
    with write(request) as s:
        return proposed(s, governance.propose(s, "policy_status", name, {"status": body.status}, actor(request)))


@route(router, "GET", "/policies/{name}/addresses", "policy.read")
def policy_addresses(request: Request, name: str, branch: int = Query(0, ge=0, le=1), unused: bool = False) -> list[dict]:
    with read(request) as s:
        return service.addresses(s, name, branch=branch, unused=unused)


class RuleIn(Strict):
    approvals: int = Field(ge=1, le=20, description="distinct approving officers needed")
    per_request: Amount | None = None
    daily: Amount | None = None
    allow: list[str] | None = Field(None, max_length=1000, description="allowed destinations; null: any")
    delay_above: Amount | None = None
    delay: int = Field(0, ge=0, le=30 * 86400)


@route(router, "GET", "/policies/{name}/approval-rule", "policy.read")
def show_rule(request: Request, name: str) -> dict | None:
    with read(request) as s:
        return spend_service.approval_rule_show(s, name)


@route(router, "PUT", "/policies/{name}/approval-rule", "rule.write", status_code=202, responses=ACCEPTED)
def set_rule(request: Request, name: str, body: RuleIn) -> dict:
    """Proposes the rule (custody.governance.proposals): other admins or officers approve it; a looser rule then waits."""
    with write(request) as s:
        change = governance.rule_change(approvals=body.approvals, per_request=body.per_request, daily=body.daily,
                                        allow=body.allow, delay_above=body.delay_above, delay=body.delay)
        return proposed(s, governance.propose(s, "approval_rule", name, change, actor(request)))


class DeriveIn(Strict):
    descriptor: str = Field(min_length=1, max_length=5000)
    start: int = Field(0, ge=0)
    end: int = Field(0, ge=0)
    branch: int | None = Field(None, ge=0, le=255, description="one path of a multipath (<0;1>) descriptor: "
                               "0 receive, 1 change; default: every path")


@route(router, "POST", "/derive", "psbt.tools")
async def derive(request: Request, body: DeriveIn) -> list[str] | list[list[str]]:
    """As Bitcoin Core's deriveaddresses: a list of addresses, or for a multipath descriptor one list per path
    (receive, then change) unless `branch` picks one."""
    return await offload(request, service.derive, body.descriptor, body.start, body.end,     # in a worker process
                         network=request.app.state.network, branch=body.branch)


# -- ledger ----------------------------------------------------------------------------------------
@route(router, "GET", "/balances", "ledger.read")
def balances(request: Request, policy: str | None = None) -> list[dict]:
    with read(request) as s:
        return service.balance(s, policy)


@route(router, "GET", "/policies/{name}/balance-history", "ledger.read")
def balance_history(request: Request, name: str) -> list[dict]:
    with read(request) as s:
        return service.balance_history(s, name)


@route(router, "GET", "/policies/{name}/history", "ledger.read")
def history(request: Request, name: str) -> list[dict]:
    with read(request) as s:
        return service.history(s, name)


class _RecentTotals:
    """Counts remembered for a second, per process."""

    def __init__(self, seconds: float = 1.0):
        self.seconds, self.values, self.lock = seconds, {}, threading.Lock()

    def get(self, key) -> int | None:
        found = self.values.get(key)
        return found[1] if found and time.monotonic() - found[0] < self.seconds else None

    def put(self, key, total: int) -> None:
        with self.lock:
            if len(self.values) > 10_000:
                self.values.clear()
            self.values[key] = (time.monotonic(), total)


_totals = _RecentTotals()
State = Literal["unconfirmed", "confirmed", "immature", "frozen", "reserved", "spent"]


@route(router, "GET", "/utxos", "ledger.read")
def utxos(request: Request, policy: str | None = None, state: Annotated[list[State] | None, Query()] = None,
          q: str | None = Query(None, max_length=100), sort: Literal["height", "value", "outpoint"] = "height",
          order: Literal["asc", "desc"] = "asc", offset: int = Query(0, ge=0, le=10_000_000),
          limit: int = Query(50, ge=1, le=1000)) -> dict:
    """One page of coins. `total` is counted at most once a second per filter and process: paging
    through 100,000 coins needs each page's rows, not a fresh count of all of them."""
    with read(request) as s:
        who = visibility.reader(request, s)
        key = (policy, tuple(state or ()), q, visibility.search_labels(who))
        page = service.utxo_page(s, policy=policy, states=state, search=q, sort=sort, descending=order == "desc",
                                 offset=offset, limit=limit, known_total=_totals.get(key),
                                 search_labels=visibility.search_labels(who))
        page = visibility.utxo_page(who, page)
    _totals.put(key, page["total"])
    return JSONResponse(page)      # plain JSON already: skip FastAPI's slower re-encoding of 1,000 rows


class FreezeIn(Strict):
    reason: str = Field(min_length=1, max_length=500)




@route(router, "POST", "/utxos/{outpoint}/freeze", "utxo.write")
def freeze(request: Request, outpoint: str, body: FreezeIn) -> dict:
    with write(request) as s:
        return service.freeze(s, outpoint, body.reason, actor=actor(request))


@route(router, "POST", "/utxos/{outpoint}/unfreeze", "utxo.write")
def unfreeze(request: Request, outpoint: str) -> dict:
    with write(request) as s:
        return service.unfreeze(s, outpoint, actor=actor(request))


class LabelIn(Strict):
    type: Literal["tx", "addr", "pubkey", "input", "output", "xpub"]
    ref: str = Field(min_length=1, max_length=200)
    label: str = Field(max_length=1000)


class LabelsIn(Strict):
    jsonl: str = Field(max_length=10_000_000, description="BIP-329 JSON Lines")


@route(router, "GET", "/labels", "label.read", response_class=PlainTextResponse,
       responses=refusals.body("application/jsonl"))
def export_labels(request: Request):
    with read(request) as s:
        return PlainTextResponse(service.labels_export(s), media_type="application/jsonl")


@route(router, "POST", "/labels", "label.write")
def set_label(request: Request, body: LabelIn) -> dict:
    with write(request) as s:
        return service.label_set(s, body.type, body.ref, body.label, actor=actor(request))


@route(router, "POST", "/labels/import", "label.write")
async def import_labels(request: Request, body: LabelsIn) -> dict:
    records = await offload(request, service.labels_parse, body.jsonl)      # checked in a worker process

    def store() -> dict:
        with write(request) as s:
            return service.labels_store(s, records, actor=actor(request))
    return await in_thread(store)


@route(router, "POST", "/sync", "sync")
def sync(request: Request) -> dict:
    return service.sync(request.app.state.sessions, node(request))
