"""Sweeping a mining fleet's payout wallet into custody, in batches, without burning fees.

A fleet receives hundreds of small payouts a year per account; some are coinbase outputs that cannot be
spent for 100 blocks. A sweep takes the matured coins of the fleet's single-key wallet (a `wpkh` policy)
and pays them to fresh receive addresses of the active custody policy:
- the fee rate is the node's estimate (or the one given), and nothing is swept above the cap: the coins
  wait for a fee window;
- a coin worth less than what its own input costs at that rate (stranded) is left, with the reason;
- immature coinbase payouts are left until they mature;
- at most `max_inputs` coins per transaction, the largest first;
- the destination must re-derive from an active custody policy, and the PSBT carries that policy's
  derivations on the output, so the fleet's signer can prove for itself that it pays custody.
Each batch is a spend of the fleet policy, recorded in the event log and tracked to confirmation like
any other; it needs no officer's approval because it can only pay custody (checked here, and by the
signer's own policy), which is what makes daily sweeping practical.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from math import floor

from embit.psbt import PSBT
from sqlalchemy import select
from sqlalchemy.orm import Session

from custody.bitcoin.psbt_builder import describe_output, input_vbytes
from custody.chain.node_client import NodeClient
from custody.errors import CustodyError
from custody.eventlog.log import record
from custody.ledger.coins import COINBASE_MATURITY, tip_height, utxo_state
from custody.ledger.models import Address, Policy, Utxo
from custody.ledger.registry import get_policy, spec_of
from custody.mining.models import Sweep
from custody.spending import spends
from custody.spending.models import Spend

CUSTODY_KINDS = ("wsh-sortedmulti", "wsh-multi", "tr-sortedmulti_a", "wsh-recovery")
DEFAULT_MAX_INPUTS = 200
DEFAULT_MAX_FEE_RATE = 20.0             # sat/vB: above this, sweeps wait


@dataclass
class SweepPlan:
    fee_rate: float
    batches: list[list[Utxo]] = field(default_factory=list)
    deferred: dict[str, str] = field(default_factory=dict)          # outpoint -> reason


def plan(session: Session, fleet: Policy, *, fee_rate: float, max_fee_rate: float = DEFAULT_MAX_FEE_RATE,
         max_inputs: int = DEFAULT_MAX_INPUTS) -> SweepPlan:
    """Which coins go in which batch, and why the others wait."""
    if fleet.kind != "wpkh":
        raise CustodyError(f"policy {fleet.name!r} is a {fleet.kind} custody policy, not a fleet payout wallet")
    if not 1 <= max_inputs <= 2000:
        raise CustodyError("a sweep takes 1 to 2,000 inputs per transaction")
    result = SweepPlan(fee_rate)
    tip = tip_height(session)
    coins = session.scalars(select(Utxo).where(Utxo.policy_id == fleet.id, Utxo.spent_txid.is_(None))
                            .order_by(Utxo.value.desc(), Utxo.txid, Utxo.vout)).all()
    per_input = input_vbytes(spec_of(fleet)) * fee_rate
    ready = []
    for utxo in coins:
        outpoint, state = f"{utxo.txid}:{utxo.vout}", utxo_state(utxo, tip)
        if state == "immature":
            result.deferred[outpoint] = f"immature coinbase: spendable at height {utxo.height + COINBASE_MATURITY}"
        elif state != "confirmed":
            result.deferred[outpoint] = state
        elif fee_rate > max_fee_rate:
            result.deferred[outpoint] = (f"waiting for a fee window: {fee_rate:g} sat/vB is above the cap of "
                                         f"{max_fee_rate:g}")
        elif utxo.value < per_input:
            result.deferred[outpoint] = (f"stranded: {utxo.value} sat is less than its input costs at "
                                         f"{fee_rate:g} sat/vB ({floor(per_input)} sat)")
        else:
            ready.append(utxo)
    result.batches = [ready[i:i + max_inputs] for i in range(0, len(ready), max_inputs)]
    return result


def custody_destination(session: Session, custody: Policy, taken: set[str]) -> Address:
    """The lowest unused receive address of the custody policy that no pending spend pays already."""
    if custody.kind not in CUSTODY_KINDS or custody.status != "active":
        raise CustodyError(f"policy {custody.name!r} ({custody.kind}, {custody.status}) is not an active custody "
                           "policy: sweeps pay only into one")
    for address in session.scalars(select(Address).where(Address.policy_id == custody.id, Address.branch == 0,
                                                         Address.used.is_(False)).order_by(Address.index)):
        if address.address not in taken:
            return address
    raise CustodyError(f"custody policy {custody.name!r} has no unused receive address left: run a sync")


def _pending_destinations(session: Session) -> set[str]:
    pending = session.scalars(select(Spend.destinations).where(
        Spend.state.in_(("requested", "approved", "signing", "signed", "broadcasting", "broadcast"))))
    return {d["address"] for text in pending for d in json.loads(text)}


def check_custody_address(session: Session, address: str) -> tuple[Policy, Address]:
    """The custody policy and address row `address` re-derives from; SWEEP_DEST_NOT_CUSTODY otherwise."""
    row = session.scalar(select(Address).where(Address.address == address))
    policy = session.get(Policy, row.policy_id) if row is not None else None
    if policy is None or policy.kind not in CUSTODY_KINDS or policy.status != "active":
        raise CustodyError(f"destination {address} is not an address of an active custody policy")
    derived = spec_of(policy).embit(row.branch).derive(row.index).script_pubkey().data
    if derived != row.script_pubkey:
        raise CustodyError(f"destination {address} does not re-derive from policy {policy.name!r}")
    return policy, row


def sweep(session: Session, client: NodeClient, fleet_name: str, custody_name: str, *, actor: str,
          fee_rate: float | None = None, max_fee_rate: float = DEFAULT_MAX_FEE_RATE,
          max_inputs: int = DEFAULT_MAX_INPUTS) -> list[Sweep]:
    """Plan, then for each batch: a sweep spend of the fleet policy to a fresh custody address, approved
    as a custody sweep, with its PSBT built (the fleet's signer signs it next)."""
    fleet, custody = get_policy(session, fleet_name), get_policy(session, custody_name)
    custody_destination(session, custody, set())          # refuse a destination that is not custody, even idle
    rate = spends.estimate_fee_rate(client) if fee_rate is None else fee_rate
    planned = plan(session, fleet, fee_rate=rate, max_fee_rate=max_fee_rate, max_inputs=max_inputs)
    taken = _pending_destinations(session)
    made = []
    for batch in planned.batches:
        destination = custody_destination(session, custody, taken)
        taken.add(destination.address)
        spend = spends.request_spend(session, fleet, actor, [(destination.address, 0)], fee_rate=rate,
                                     coins=[f"{u.txid}:{u.vout}" for u in batch], sweep=True,
                                     memo=f"fleet sweep into {custody.name}")
        approve_custody_sweep(session, spend, actor=actor)
        spends.prepare_psbt(session, spend, client, actor=actor)
        spends.open_signing(session, spend, actor=actor)
        vsize = _describe_destination(spend, custody, destination)
        row = Sweep(fleet_policy_id=fleet.id, spend_id=spend.id, destination=destination.address,
                    inputs=len(batch), amount=spend.amount - spend.fee, fee=spend.fee,
                    vsize=vsize, deferred=json.dumps(planned.deferred))
        session.add(row)
        session.flush()
        record(session, "mining.sweep", actor, f"spend:{spend.id}",
               {"fleet": fleet.name, "custody": custody.name, "destination": destination.address,
                "inputs": len(batch), "amount": row.amount, "fee": row.fee, "fee_rate_milli": round(rate * 1000),
                "deferred": len(planned.deferred)})
        made.append(row)
    if not made and planned.deferred:
        record(session, "mining.sweep_deferred", actor, f"policy:{fleet.name}",
               {"fee_rate_milli": round(rate * 1000), "deferred": planned.deferred})
    return made


def approve_custody_sweep(session: Session, spend: Spend, *, actor: str) -> None:
    """A fleet sweep whose every destination is custody is approved by that fact, not by officers."""
    fleet = session.get(Policy, spend.policy_id)
    if fleet.kind != "wpkh" or not spend.sweep:
        raise CustodyError(f"spend #{spend.id} is not a sweep of a fleet payout wallet")
    for d in json.loads(spend.destinations):
        check_custody_address(session, d["address"])
    spend.state = "approved"
    record(session, "spend.approved", actor, f"spend:{spend.id}",
           {"officer": None, "reason": "fleet sweep into custody", "approvals": 0})


def _describe_destination(spend: Spend, custody: Policy, destination: Address) -> int:
    """Put the custody keys' derivations (and witness script) on the output so a signer can re-derive it;
    returns the finished transaction's vsize (72-byte signatures assumed)."""
    psbt = PSBT.from_string(spend.psbt)
    tx = psbt.tx
    for scope, out in zip(psbt.outputs, tx.vout):
        if out.script_pubkey.data == destination.script_pubkey:
            describe_output(scope, spec_of(custody), destination.branch, destination.index)
    spend.psbt = psbt.to_string()
    weight = len(tx.serialize()) * 4 + 2 + len(psbt.inputs) * (1 + 1 + 73 + 1 + 33)
    return (weight + 3) // 4
