"""The JSON API under /api/: the custody operations, each behind its permission, with the CLI's checks.

Routes only translate HTTP to `custody.service` calls; nothing here knows Bitcoin. A refusal from the
core becomes 400 (404 for something that does not exist), and the transaction is rolled back.
"""
from __future__ import annotations

import base64
import threading
import time
from typing import Annotated, Literal

from fastapi import APIRouter, File, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from custody import accounts, eventlog, governance, ledger, registry, service, spends
from custody.errors import CustodyError

from .auth import route
from .context import actor, node, read, write
from .cpu_pool import in_thread, offload, take_spend_signatures
from . import refusals, visibility
from .downloads import attachment

router = APIRouter(prefix="/api")
ACCEPTED = {202: {"description": "proposed: the change waits for other admins' or officers' approval "
                                 "(custody.governance); the body is the proposal"}}


def proposed(s, proposal) -> JSONResponse:
    """The answer of a route that used to make a change and now proposes it: 202 with the proposal."""
    return JSONResponse(governance.proposal_json(s, proposal), status_code=202)

Amount = Annotated[StrictStr | StrictInt, Field(description="BTC as a decimal string (\"0.5\"), \"NNNsat\", or integer satoshis")]
Name = Annotated[str, Field(min_length=1, max_length=200)]
Id = Annotated[int, PathParam(ge=1, le=2**31 - 1)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- who am I --------------------------------------------------------------------------------------
@route(router, "GET", "/me", "me")
def me(request: Request) -> dict:
    p = request.state.principal
    return {"username": p.username, "role": p.role, "via": p.via}


class PasswordChange(Strict):
    password: str = Field(min_length=1, max_length=1000, description="the current password")
    code: str = Field("", max_length=10, description="a current authenticator code (when the account has TOTP)")
    new_password: str = Field(min_length=12, max_length=1000)


class TotpChange(Strict):
    password: str = Field(min_length=1, max_length=1000, description="the current password")
    code: str = Field("", max_length=10, description="a current code of the present secret (when there is one)")
    new_secret: str = Field(min_length=32, max_length=64, description="base32, 160 bits or more: the new secret")
    new_code: str = Field(min_length=6, max_length=10, description="the code the new secret gives now")


def _own_credentials(request: Request, change) -> dict:
    """Run `change(session, user, keep_session)` as the caller; a wrong current password or code counts
    as a failed login (custody.accounts commits that itself) and is answered 400."""
    from .auth import SESSION_COOKIE
    from fastapi import HTTPException
    p = request.state.principal
    keep = request.cookies.get(SESSION_COOKIE) if p.via == "session" else None
    with request.app.state.sessions() as s:
        user = s.get(accounts.User, p.user_id)
        if p.role != user.role:
            raise HTTPException(403, "a viewer-scope token cannot change credentials")
        try:
            change(s, user, keep)
        except accounts.AuthError as e:
            raise CustodyError(str(e)) from None
        s.commit()
        return accounts.user_json(s.get(accounts.User, p.user_id))


@route(router, "POST", "/me/password", "me")
def change_password(request: Request, body: PasswordChange) -> dict:
    """Change one's own password; one's other login sessions end."""
    return _own_credentials(request, lambda s, user, keep: accounts.change_password(
        s, user, body.password, body.code, body.new_password, keep_session=keep))


@route(router, "POST", "/me/totp", "me")
def change_totp(request: Request, body: TotpChange) -> dict:
    """Enroll a new TOTP secret (make one with 20 random bytes in base32, or take the account page's)."""
    return _own_credentials(request, lambda s, user, keep: accounts.change_totp(
        s, user, body.password, body.code, body.new_secret, body.new_code, keep_session=keep))


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
        shown = service.policy_show(s, name)
        return visibility.policy(visibility.reader(request, s), shown, registry.get_policy(s, name))


@route(router, "GET", "/policies/{name}/export", "policy.export", response_class=PlainTextResponse)
def export_policy(request: Request, name: str,
                  format: Literal["core", "bsms", "coldcard", "sparrow", "specter", "caravan"] = "core"):
    with read(request) as s:
        text = service.policy_export(s, name, format)
        visibility.require_xpubs(visibility.reader(request, s), [registry.get_policy(s, name)], "the export")
    extension = {"core": "json", "bsms": "bsms", "coldcard": "txt", "sparrow": "json", "specter": "json",
                 "caravan": "json"}[format]
    return PlainTextResponse(text, headers=attachment(f"{name}-{format}.{extension}"))


@route(router, "POST", "/policies/{name}/status", "policy.write", status_code=202, responses=ACCEPTED)
def set_policy_status(request: Request, name: str, body: StatusIn) -> dict:
    """Proposes the change (custody.governance): other admins or officers approve it."""
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
        return service.approval_rule_show(s, name)


@route(router, "PUT", "/policies/{name}/approval-rule", "rule.write", status_code=202, responses=ACCEPTED)
def set_rule(request: Request, name: str, body: RuleIn) -> dict:
    """Proposes the rule (custody.governance): other admins or officers approve it; a looser rule then waits."""
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


Outpoint = Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}:[0-9]{1,6}$")]


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
    records = await offload(request, ledger.parse_labels, body.jsonl)      # checked in a worker process

    def store() -> dict:
        with write(request) as s:
            return service.labels_store(s, records, actor=actor(request))
    return await in_thread(store)


@route(router, "POST", "/sync", "sync")
def sync(request: Request) -> dict:
    return service.sync(request.app.state.sessions, node(request))


# -- spends ----------------------------------------------------------------------------------------
class Destination(Strict):
    address: str = Field(min_length=1, max_length=100)
    amount: Amount | None = Field(None, description="omit for a sweep")


class SpendIn(Strict):
    policy: Name
    to: list[Destination] = Field(min_length=1, max_length=500)
    fee_rate: float | None = Field(None, gt=0, le=10_000, description="sat/vB; default: the node's estimate")
    memo: str | None = Field(None, max_length=1000)
    coins: list[Outpoint] | None = Field(None, max_length=1000)
    sweep: bool = False


class PreviewIn(Strict):
    policy: Name
    to: list[Destination] = Field(min_length=1, max_length=500)
    fee_rate: float | None = Field(None, gt=0, le=10_000)
    coins: list[Outpoint] | None = Field(None, max_length=1000)
    sweep: bool = False


class FeeIn(Strict):
    fee_rate: float = Field(gt=0, le=10_000)
    cancel: bool = False


@route(router, "GET", "/spends", "spend.read")
def list_spends(request: Request, policy: str | None = None,
                state: Annotated[list[str] | None, Query(max_length=20)] = None,
                after: Annotated[int | None, Query(ge=0, description="only spends with a greater id (paging)")] = None,
                limit: Annotated[int, Query(ge=1, le=1000)] = 1000) -> list[dict]:
    """Spends in id order, a page at a time: pass the last id you got as `after` for the next page."""
    with read(request) as s:
        return visibility.spends(visibility.reader(request, s),
                                 service.spend_list(s, policy=policy, states=state, after=after, limit=limit))


@route(router, "POST", "/spends", "spend.request", status_code=201)
def request_spend(request: Request, body: SpendIn) -> dict:
    with write(request) as s:
        return service.spend_request(s, body.policy, requester=actor(request),
                                     to=[(d.address, d.amount) for d in body.to], fee_rate=body.fee_rate,
                                     client=node(request), memo=body.memo, coins=body.coins, sweep=body.sweep)


@route(router, "POST", "/spends/preview", "spend.request")
def preview_spend(request: Request, body: PreviewIn) -> dict:
    with read(request) as s:
        return service.fee_preview(s, body.policy, to=[(d.address, d.amount) for d in body.to],
                                   fee_rate=body.fee_rate, client=None if body.fee_rate else node(request),
                                   coins=body.coins, sweep=body.sweep)


@route(router, "GET", "/spends/{spend_id}", "spend.read")
def show_spend(request: Request, spend_id: Id) -> dict:
    with read(request) as s:
        return visibility.spend(visibility.reader(request, s),
                                {**service.spend_show(s, spend_id), "timeline": service.spend_timeline(s, spend_id)})


class ApprovalIn(Strict):
    proof: dict = Field(description="the officer's approval of the spend's unsigned transaction: "
                        "{\"kind\": \"webauthn\", \"credential\": <PublicKeyCredential JSON>} from a passkey, or "
                        "{\"kind\": \"ed25519\"|\"p256\", \"public_key\": hex, \"signature\": hex} from a key file, "
                        "over the message of POST /spends/{id}/approval-request")


@route(router, "POST", "/spends/{spend_id}/approval-request", "spend.decide")
def approval_request(request: Request, spend_id: Id) -> dict:
    """The message to sign to approve this spend (its policy, unsigned transaction, outputs and fee)
    and, for a passkey, the options for navigator.credentials.get(). Makes the transaction first if the
    request has none yet."""
    with write(request) as s:
        return service.spend_approval_request(s, spend_id, officer=actor(request), client=node(request))


@route(router, "POST", "/spends/{spend_id}/approve", "spend.decide")
def approve(request: Request, spend_id: Id, body: ApprovalIn) -> dict:
    with write(request) as s:
        return service.spend_decide(s, spend_id, officer=actor(request), approve=True, proof=body.proof)


@route(router, "POST", "/spends/{spend_id}/reject", "spend.decide")
def reject(request: Request, spend_id: Id) -> dict:
    with write(request) as s:
        return service.spend_decide(s, spend_id, officer=actor(request), approve=False)


@route(router, "POST", "/spends/{spend_id}/psbt", "spend.operate")
def make_psbt(request: Request, spend_id: Id, v2: bool = False) -> dict:
    with write(request) as s:
        return {"id": spend_id, "psbt": service.spend_psbt(s, spend_id, client=node(request), v2=v2, actor=actor(request))}


@route(router, "GET", "/spends/{spend_id}/psbt", "psbt.download")
def download_psbt(request: Request, spend_id: Id, encoding: Literal["binary", "base64"] = "binary"):
    with read(request) as s:
        text = service.spend_psbt(s, spend_id, client=None)
        text = visibility.psbt(visibility.reader(request, s), text, [spends.get_spend(s, spend_id).policy_id])
    if encoding == "base64":
        return PlainTextResponse(text)
    return Response(base64.b64decode(text), media_type="application/octet-stream",
                    headers=attachment(f"spend-{spend_id}.psbt"))


@route(router, "POST", "/spends/{spend_id}/signatures", "psbt.upload")
async def upload_signatures(request: Request, spend_id: Id, file: UploadFile = File(...)) -> dict:
    data = await file.read(16_000_001)
    if len(data) > 16_000_000:
        raise CustodyError("a PSBT upload is at most 16 MB")
    return await take_spend_signatures(request, spend_id, data)     # verified in a worker process


@route(router, "POST", "/spends/{spend_id}/broadcast", "spend.operate")
def broadcast(request: Request, spend_id: Id) -> dict:
    return service.spend_broadcast(request.app.state.sessions, spend_id, client=node(request), actor=actor(request))


@route(router, "POST", "/spends/{spend_id}/track", "spend.operate")
def track(request: Request, spend_id: Id, confirmations: int = Query(1, ge=1, le=1000)) -> dict:
    with write(request) as s:
        return service.spend_track(s, spend_id, client=node(request), confirmations=confirmations)


@route(router, "POST", "/spends/{spend_id}/bump-fee", "spend.operate")
def bump_fee(request: Request, spend_id: Id, body: FeeIn) -> dict:
    with write(request) as s:
        return service.spend_bump_fee(s, spend_id, client=node(request), fee_rate=body.fee_rate, cancel=body.cancel,
                                      actor=actor(request))


@route(router, "POST", "/spends/{spend_id}/cpfp", "spend.operate", status_code=201)
def cpfp(request: Request, spend_id: Id, body: FeeIn) -> dict:
    with write(request) as s:
        return service.spend_cpfp(s, spend_id, client=node(request), fee_rate=body.fee_rate, requester=actor(request))


@route(router, "POST", "/spends/{spend_id}/cancel", "spend.operate")
def cancel(request: Request, spend_id: Id) -> dict:
    with write(request) as s:
        return service.spend_cancel(s, spend_id, actor=actor(request))


class PsbtIn(Strict):
    psbt: str = Field(min_length=1, max_length=20_000_000, description="base64 or hex")


@route(router, "POST", "/psbt/check", "psbt.tools")
async def check_psbt(request: Request, body: PsbtIn) -> dict:
    summary = await offload(request, service.psbt_check_json, body.psbt, network=request.app.state.network)
    return Response(summary, media_type="application/json")        # JSON written by the worker process


# -- event log -------------------------------------------------------------------------------------
@route(router, "GET", "/log", "log.read")
def log_entries(request: Request, subject: str | None = Query(None, max_length=200),
                offset: int = Query(0, ge=0, le=10_000_000), limit: int = Query(100, ge=1, le=1000)) -> dict:
    with read(request) as s:
        return service.log_entries(s, subject=subject, offset=offset, limit=limit)


@route(router, "GET", "/log/verify", "log.read")
def log_verify(request: Request) -> dict:
    with read(request) as s:
        return service.log_status(s)


class LogFileIn(Strict):
    jsonl: str = Field(max_length=100_000_000, description="an exported log (JSON Lines)")
    keys: list[Annotated[str, Field(pattern="^[0-9a-f]{64}$")]] | None = Field(
        None, max_length=20, description="accepted coordinator public keys (hex); default: this coordinator's")
    checkpoints: list[dict] | None = Field(None, max_length=1000, description="signed checkpoints "
                                           "({\"checkpoint\", \"signature\"}) the copy must still agree with")


@route(router, "POST", "/log/verify", "log.read")
async def log_verify_file(request: Request, body: LogFileIn) -> dict:
    """Verify an exported copy of the log, as `custody log verify --file` does; 400 names the first problem."""
    keys = set(body.keys) if body.keys else {(await in_thread(eventlog.coordinator_key)).public_hex}
    kept = service.log_checkpoint_documents(body.checkpoints, keys=keys) if body.checkpoints else None
    return await offload(request, service.log_verify, None, keys=keys, jsonl=body.jsonl,   # in a worker process
                         checkpoints=kept)


class CheckpointsIn(Strict):
    checkpoints: list[dict] = Field(min_length=1, max_length=1000, description="signed checkpoints "
                                    "({\"checkpoint\", \"signature\"}) the log must still agree with")


@route(router, "POST", "/log/verify/checkpoints", "log.read")
def log_verify_checkpoints(request: Request, body: CheckpointsIn) -> dict:
    """Verify the database's log and that it was neither cut below nor rewritten at any of the auditor's
    checkpoints, as `custody log verify --checkpoint` does; 400 names the first problem."""
    with read(request) as s:
        return service.log_verify(s, checkpoints=service.log_checkpoint_documents(body.checkpoints))


@route(router, "GET", "/log/checkpoint", "log.read", response_class=JSONResponse,
       responses=refusals.body("application/json"))
def log_checkpoint_latest(request: Request):
    """The latest signed checkpoint of the log's head, for the auditor to keep (404 before the first)."""
    with read(request) as s:
        signed = service.log_checkpoint_latest(s)
    return JSONResponse(signed, headers=attachment(f"event-log-checkpoint-{signed['checkpoint']['seq']}.json"))


@route(router, "GET", "/log/export", "log.read", response_class=PlainTextResponse,
       responses=refusals.body("application/jsonl"))
def log_export(request: Request):
    with read(request) as s:
        return PlainTextResponse(service.log_export(s), media_type="application/jsonl",
                                 headers=attachment("event-log.jsonl"))


# -- accounts and tokens ---------------------------------------------------------------------------
class UserIn(Strict):
    username: str = Field(min_length=1, max_length=64)
    role: Literal["admin", "officer", "signatory", "auditor", "viewer"]
    second_factor: bool = Field(False, description="require a second factor of a role that does not need one")


class UserChange(Strict):
    role: Literal["admin", "officer", "signatory", "auditor", "viewer"] | None = None
    disabled: bool | None = None
    unlock: bool = False


class TokenIn(Strict):
    name: str = Field(min_length=1, max_length=100)
    role: Literal["admin", "officer", "signatory", "auditor", "viewer"] | None = None
    expires_in_days: int = Field(90, ge=1, le=3650)


@route(router, "GET", "/users", "user.admin")
def list_users(request: Request) -> list[dict]:
    with read(request) as s:
        return [accounts.user_json(u) for u in accounts.list_users(s)]


def enrollment_shown(request: Request, token: str, link) -> dict:
    """The one-time link for the admin to hand over (its token is in no log and no database)."""
    return {"enrollment_link": str(request.base_url).rstrip("/") + f"/enroll/{token}",
            "enrollment_expires_at": link.expires_at.isoformat()}


@route(router, "POST", "/users", "user.admin", status_code=201)
def create_user(request: Request, body: UserIn) -> dict:
    """The account and its one-time enrollment link: its holder sets their own password and second factor.
    An admin or officer starts as a viewer and the role is proposed (`proposal`): others approve it."""
    with write(request) as s:
        user, token, link, proposal = governance.invite(s, body.username, body.role, second_factor=body.second_factor,
                                                        actor=actor(request))
        answer = {**accounts.user_json(user), **enrollment_shown(request, token, link)}
        return {**answer, "proposal": governance.proposal_json(s, proposal)} if proposal else answer


@route(router, "POST", "/users/{username}/reset", "user.admin")
def reset_user(request: Request, username: str) -> dict:
    """Clear the user's password and second factor, end their sessions and tokens, and give a new link."""
    with write(request) as s:
        user = accounts.get_user(s, username)
        token, link = accounts.reset_credentials(s, user, actor=actor(request),
                                                 by=s.get(accounts.User, request.state.principal.user_id))
        return {**accounts.user_json(user), **enrollment_shown(request, token, link)}


@route(router, "PATCH", "/users/{username}", "user.admin", responses=ACCEPTED)
def change_user(request: Request, username: str, body: UserChange) -> dict:
    """Disabling and unlocking take effect at once; a new role is proposed (custody.governance), and then the
    answer is 202 with the proposal."""
    with write(request) as s:
        user = accounts.get_user(s, username)
        if user.id == request.state.principal.user_id and (body.disabled or (body.role and body.role != "admin")):
            raise CustodyError("an admin cannot disable or demote their own account")
        proposal = None
        if body.role is not None and body.role != user.role:
            proposal = governance.propose(s, "user_role", user.username, {"role": body.role}, actor(request))
        if body.disabled is not None:
            accounts.set_disabled(s, user, body.disabled, actor=actor(request))
        if body.unlock:
            accounts.unlock(s, user, actor=actor(request))
        return proposed(s, proposal) if proposal is not None else accounts.user_json(user)


@route(router, "GET", "/tokens", "token.self")
def list_tokens(request: Request) -> list[dict]:
    p = request.state.principal
    with read(request) as s:
        return accounts.list_tokens(s, None if p.role == "admin" else s.get(accounts.User, p.user_id))


@route(router, "POST", "/tokens", "token.write", status_code=201)
def create_token(request: Request, body: TokenIn) -> dict:
    p = request.state.principal
    with write(request) as s:
        user = s.get(accounts.User, p.user_id)
        # a token makes tokens of its own role or viewer only (custody.accounts.create_token)
        token, row = accounts.create_token(s, user, body.name, role=body.role or p.role,
                                           expires_in_days=body.expires_in_days,
                                           scope=p.role if p.via == "token" else None)
        return {"token": token, "id": row.id, "name": row.name, "role": row.role,
                "expires_at": row.expires_at.isoformat() if row.expires_at else None}


@route(router, "DELETE", "/tokens/{token_id}", "token.write", status_code=204)
def revoke_token(request: Request, token_id: Id):
    p = request.state.principal
    with write(request) as s:
        accounts.revoke_token(s, token_id, by=s.get(accounts.User, p.user_id), role=p.role)
    return Response(status_code=204)
