"""The mining treasury under /api/mining/: pools, accounts, devices, statement and telemetry imports,
reconciliation, discrepancies (list, show, resolve), sweeps, the fleet overview and the chart's data.

Routes translate HTTP to `custody.mining.service` calls only; refusals from the core become 4xx and the
transaction is rolled back, as in the other API modules.
"""
from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path as PathParam, Query, Request
from pydantic import Field

from custody.mining import service as ms

from coordinator.api.common import Id, Name, Strict
from coordinator.auth import route
from coordinator.context import actor, node, read, write

router = APIRouter(prefix="/api/mining")
MAX_STATEMENT = 16_000_000
Day = Annotated[str, Field(pattern=r"^\d{4}-\d{2}-\d{2}$", description="a UTC day, YYYY-MM-DD")]
AccountRef = Annotated[str, Field(min_length=1, max_length=200, description="POOL/ACCOUNT, or the name when unique")]


# -- pools, accounts, devices ----------------------------------------------------------------------------------
class PoolIn(Strict):
    name: str = Field(min_length=1, max_length=80)
    kind: Literal[ms.POOL_KINDS] = Field(description="its statement format (generic: CSV only)")


@route(router, "GET", "/pools", "mining.read")
def list_pools(request: Request) -> list[dict]:
    with read(request) as s:
        return ms.pools(s)


@route(router, "POST", "/pools", "mining.configure", status_code=201)
def create_pool(request: Request, body: PoolIn) -> dict:
    with write(request) as s:
        return ms.pool_create(s, body.name, body.kind, actor=actor(request))


class AccountIn(Strict):
    pool: Name
    name: str = Field(min_length=1, max_length=80)
    scheme: Literal[ms.SCHEMES]
    pool_fee_bps: int = Field(ge=0, le=10_000, description="250 = 2.5 %")
    fee_method: Literal[ms.FEE_METHODS] = "foundry"
    payout_threshold: int = Field(0, ge=0, le=ms.MAX_SATS, description="satoshis")
    schedule: Literal[ms.SCHEDULES] = "daily"
    payout_addresses: list[Annotated[str, Field(min_length=1, max_length=100)]] = Field(default_factory=list,
                                                                                        max_length=100)
    fleet_policy: Name | None = Field(None, description="the fleet payout wallet (a wpkh policy)")


@route(router, "GET", "/accounts", "mining.read")
def list_accounts(request: Request) -> list[dict]:
    with read(request) as s:
        return ms.accounts(s)


@route(router, "POST", "/accounts", "mining.configure", status_code=201)
def create_account(request: Request, body: AccountIn) -> dict:
    with write(request) as s:
        return ms.account_create(s, body.pool, body.name, scheme=body.scheme, pool_fee_bps=body.pool_fee_bps,
                                 fee_method=body.fee_method, payout_threshold=body.payout_threshold,
                                 schedule=body.schedule, payout_addresses=body.payout_addresses,
                                 fleet_policy=body.fleet_policy, network=request.app.state.network,
                                 actor=actor(request))


@route(router, "GET", "/accounts/{account_id}", "mining.read")
def show_account(request: Request, account_id: Id, days: int = Query(31, ge=1, le=366)) -> dict:
    with read(request) as s:
        return ms.account_show(s, account_id, days=days)


class DeviceIn(Strict):
    serial: str = Field(min_length=1, max_length=80)
    model: str = Field(min_length=1, max_length=80)
    account: AccountRef
    worker: str = Field(min_length=1, max_length=120)
    api_host: str | None = Field(None, min_length=1, max_length=200,
                                 description="the miner's IP address on the farm's network, to poll it")
    api_port: int | None = Field(None, ge=1, le=65535, description="its CGMiner API port (4028)")


@route(router, "GET", "/devices", "mining.read")
def list_devices(request: Request, account: str | None = Query(None, min_length=1, max_length=200)) -> list[dict]:
    with read(request) as s:
        return ms.devices(s, account)


@route(router, "POST", "/devices", "mining.configure", status_code=201)
def add_device(request: Request, body: DeviceIn) -> dict:
    with write(request) as s:
        return ms.device_add(s, body.serial, model=body.model, account=body.account, worker=body.worker,
                             api_host=body.api_host, api_port=body.api_port, actor=actor(request))


class AddressIn(Strict):
    api_host: str | None = Field(None, min_length=1, max_length=200,
                                 description="an IP address on the farm's networks; null (with api_port) to stop polling")
    api_port: int | None = Field(None, ge=1, le=65535, description="its CGMiner API port (4028)")


@route(router, "PUT", "/devices/{serial}/address", "mining.configure")
def set_device_address(request: Request, body: AddressIn,
                       serial: str = PathParam(min_length=1, max_length=80)) -> dict:
    """Where a registered device's CGMiner API is polled (logged: it decides where the coordinator connects)."""
    with write(request) as s:
        return ms.device_address(s, serial, api_host=body.api_host, api_port=body.api_port, actor=actor(request))


# -- statements, telemetry, reconciliation ---------------------------------------------------------------------
class StatementIn(Strict):
    source: Literal[ms.SOURCES]
    payload: str = Field(min_length=1, max_length=MAX_STATEMENT, description="the pool's JSON, or the generic CSV, "
                         "as the file holds it (its SHA-256 is recorded)")


@route(router, "POST", "/accounts/{account_id}/statements", "mining.operate", status_code=201)
def import_statement(request: Request, account_id: Id, body: StatementIn) -> dict:
    with write(request) as s:
        return ms.statement_import(s, account_id, body.source, body.payload, actor=actor(request))


class PollIn(Strict):
    account: AccountRef | None = Field(None, description="default: the whole fleet")
    device: str | None = Field(None, min_length=1, max_length=80, description="one registered device's serial")


@route(router, "POST", "/telemetry/poll", "mining.operate")
def poll(request: Request, body: PollIn) -> dict:
    """Poll registered devices at their registered addresses (never an address given here); a device that
    does not answer is listed in `failed`, always as "the device did not answer with CGMiner API data"."""
    with write(request) as s:
        return ms.telemetry_poll(s, body.account, device=body.device)


class TelemetryIn(Strict):
    format: Literal["cgminer", "braiins"]
    text: str = Field(min_length=1, max_length=MAX_STATEMENT)


@route(router, "POST", "/telemetry/import", "mining.operate", status_code=201)
def import_telemetry(request: Request, body: TelemetryIn) -> dict:
    with write(request) as s:
        return ms.telemetry_import(s, body.text, body.format, actor=actor(request))


class ReconcileIn(Strict):
    first_day: Day
    last_day: Day
    sweep_fee_rate: float | None = Field(None, gt=0, le=10_000, description="sat/vB; default: the node's estimate")


@route(router, "POST", "/accounts/{account_id}/reconcile", "mining.operate")
def reconcile(request: Request, account_id: Id, body: ReconcileIn) -> dict:
    with write(request) as s:
        return ms.reconcile(s, node(request), account_id, body.first_day, body.last_day, actor=actor(request),
                            sweep_fee_rate=body.sweep_fee_rate)


# -- discrepancies ---------------------------------------------------------------------------------------------
@route(router, "GET", "/discrepancies", "mining.read")
def list_discrepancies(request: Request, category: str | None = Query(None, max_length=40),
                       severity: Literal[ms.SEVERITIES] | None = None,
                       account: str | None = Query(None, max_length=200),
                       state: Literal[ms.STATES] = "open") -> list[dict]:
    with read(request) as s:
        return ms.discrepancies(s, category=category, severity=severity, account=account, state=state)


@route(router, "GET", "/discrepancies/{discrepancy_id}", "mining.read")
def show_discrepancy(request: Request, discrepancy_id: Id) -> dict:
    with read(request) as s:
        return ms.discrepancy_show(s, discrepancy_id)


class ResolveIn(Strict):
    note: str = Field(min_length=1, max_length=1000, description="why it is resolved")


@route(router, "POST", "/discrepancies/{discrepancy_id}/resolve", "mining.operate")
def resolve(request: Request, discrepancy_id: Id, body: ResolveIn) -> dict:
    with write(request) as s:
        return ms.discrepancy_resolve(s, discrepancy_id, note=body.note, actor=actor(request))


# -- sweeps, overview, chart -----------------------------------------------------------------------------------
class SweepIn(Strict):
    fleet: Name
    custody: Name
    fee_rate: float | None = Field(None, gt=0, le=10_000, description="sat/vB; default: the node's estimate")
    max_fee_rate: float = Field(ms.DEFAULT_MAX_FEE_RATE, gt=0, le=10_000, description="above it, coins wait")
    max_inputs: int = Field(ms.DEFAULT_MAX_INPUTS, ge=1, le=2000)


@route(router, "GET", "/sweeps", "mining.read")
def list_sweeps(request: Request, fleet: str | None = Query(None, min_length=1, max_length=200)) -> list[dict]:
    with read(request) as s:
        return ms.sweep_history(s, fleet)


@route(router, "POST", "/sweeps", "mining.sweep", status_code=201)
def sweep(request: Request, body: SweepIn) -> dict:
    with write(request) as s:
        return ms.sweep_run(s, node(request), body.fleet, body.custody, actor=actor(request), fee_rate=body.fee_rate,
                            max_fee_rate=body.max_fee_rate, max_inputs=body.max_inputs)


@route(router, "GET", "/overview", "mining.read")
def overview(request: Request) -> list[dict]:
    with read(request) as s:
        return ms.overview(s)


@route(router, "GET", "/chart", "mining.read")
def chart(request: Request, days: int = Query(30, ge=1, le=366)) -> list[dict]:
    """Per pool and day: paid (the statements' earnings) and expected (the latest reconciliation's)."""
    with read(request) as s:
        return ms.chart_data(s, days=days)
