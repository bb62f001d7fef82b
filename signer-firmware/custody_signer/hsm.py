"""The device's signing policy, after Coldcard's HSM mode: unattended signing under rules.

A policy is approved on the device itself (`custody-signer hsm-policy`), never over the coordinator's
connection. It holds approvers (name -> public key: an ed25519 or P-256 key file, or a passkey; see
`protocol`) and rules; each rule may set
- `wallet`: the registered wallet it applies to;
- `max_amount`: satoshis leaving the wallet in one transaction (change excluded);
- `per_period`: {"minutes", "max_amount"}: velocity, counted over a sliding window and kept on the device;
- `whitelist`: addresses every non-change output must pay;
- `to_wallets`: names of registered wallets (watch-only custody wallets, or wallets this device signs for)
  every non-change output must be proven an address of, by re-deriving its script (a mining fleet's payout
  wallet may pay custody only, without approvers: the destination is the coordinator's policy, not a list of
  addresses that a compromised coordinator could have filled);
- `min_approvers` of `approvers`: distinct approvers' valid approvals of `protocol.approval_message`, which the
  device rebuilds from the facts it proved (policy, txid, every output, fee), carried in the PSBT as
  proprietary fields (BIP-174 type 0xFC, identifier "custody").
The first rule every condition of which holds decides; no matching rule, no signature. Each decision,
either way, is appended to a hash-chained log on the device.

A proof of reserves moves no money, so the rules above do not judge it: it is allowed unless the policy
sets `"allow_proofs": false`, and every such decision is logged too (as event "proof").
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from .approvals import valid_approvers
from .durable import append, atomic_write
from .inspection import Facts
from .proofs import ProofFacts
from .protocol import Approval, ApprovalError, Approver, approval_message, approver_entry, parse_approver

GENESIS = "0" * 64
RULE_FIELDS = {"wallet", "max_amount", "per_period", "whitelist", "to_wallets", "min_approvers", "approvers"}


class PolicyError(ValueError):
    """A policy the device will not install."""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    rule: int | None                      # index of the rule that allowed it
    reasons: list[str]                    # why each rule did not match (when refused)


def check_policy(policy: dict) -> dict:
    """Validate a policy document before it is installed; returns it normalised."""
    if not isinstance(policy, dict):
        raise PolicyError("a policy is a JSON object with 'approvers' and 'rules'")
    approvers = policy.get("approvers", {})
    rules = policy.get("rules")
    if not isinstance(approvers, dict) or not isinstance(rules, list):
        raise PolicyError("a policy holds 'approvers' (name -> ed25519 key in hex, or {\"type\", \"key\", "
                          "\"rp_id\"}) and a list of 'rules'")
    parsed = _approvers(approvers)
    for n, rule in enumerate(rules):
        if not isinstance(rule, dict) or set(rule) - RULE_FIELDS:
            raise PolicyError(f"rule {n}: unknown fields {sorted(set(rule) - RULE_FIELDS) if isinstance(rule, dict) else rule}")
        if "wallet" in rule and not isinstance(rule["wallet"], str):
            raise PolicyError(f"rule {n}: wallet is the name of a registered wallet")
        # a bare string would be tested with `in` as a substring, a dict by its keys: lists of text only
        for field, of in (("whitelist", "addresses"), ("approvers", "names"), ("to_wallets", "wallet names")):
            if field in rule and not (isinstance(rule[field], list) and all(isinstance(a, str) for a in rule[field])):
                raise PolicyError(f"rule {n}: {field} is a list of {of}")
        for field in ("max_amount", "min_approvers"):
            if field in rule and (type(rule[field]) is not int or rule[field] < 0):
                raise PolicyError(f"rule {n}: {field} is a whole number of satoshis/approvers")
        period = rule.get("per_period")
        if period is not None and not (isinstance(period, dict) and type(period.get("minutes")) is int
                                       and 0 < period["minutes"] <= 366 * 24 * 60
                                       and type(period.get("max_amount")) is int):
            raise PolicyError(f"rule {n}: per_period is {{\"minutes\": N (at most a year), \"max_amount\": SATS}}")
        unknown = set(rule.get("approvers", [])) - set(approvers)
        if unknown:
            raise PolicyError(f"rule {n}: approvers {sorted(unknown)} are not registered")
        if rule.get("min_approvers", 0) > len(rule.get("approvers", approvers)):
            raise PolicyError(f"rule {n}: min_approvers exceeds the approvers it may count")
    if "allow_proofs" in policy and not isinstance(policy["allow_proofs"], bool):
        raise PolicyError("allow_proofs is true or false")
    extra = {"allow_proofs": policy["allow_proofs"]} if "allow_proofs" in policy else {}
    return {"approvers": {a.name: approver_entry(a) for a in parsed}, "rules": list(rules), **extra}


def _approvers(entries: dict) -> list[Approver]:
    """The policy's approvers, each readable, no key under two names (one holder would count as two, and
    the same point as a key file and as a passkey is still one holder)."""
    found, holders = [], {}
    for name, entry in entries.items():
        try:
            approver = parse_approver(name, entry)
        except ApprovalError as e:
            raise PolicyError(str(e)) from None
        if approver.key in holders:
            raise PolicyError(f"approvers {holders[approver.key]!r} and {name!r} share one key")
        holders[approver.key] = name
        found.append(approver)
    return found


class Hsm:
    """The installed policy, its velocity counters and its decision log, in the device's state directory."""

    def __init__(self, state: Path, clock=time.time):
        self.state, self.clock = Path(state), clock

    @property
    def policy(self) -> dict | None:
        path = self.state / "hsm_policy.json"
        return json.loads(path.read_text()) if path.exists() else None

    def install(self, policy: dict) -> None:
        checked = check_policy(policy)
        # logged before it takes effect: a power cut between the two leaves at worst a logged install that
        # did not happen, never a policy in force that the log does not show
        self._log({"event": "policy installed", "policy_sha256":
                   hashlib.sha256(json.dumps(policy, sort_keys=True).encode()).hexdigest()})
        atomic_write(self.state / "hsm_policy.json", json.dumps(checked, sort_keys=True, indent=1))

    def decide(self, facts: Facts, approvals: list[Approval]) -> Decision:
        """Apply the rules; an allowed spend is counted against its rule's velocity before returning."""
        policy = self.policy
        approved_by: set[str] = set()
        if policy is None:
            decision = Decision(False, None, ["no policy is installed: nothing is signed"])
        else:
            approved_by, refused = _judge(_approvers(policy["approvers"]), approvals, spend_message(facts))
            reasons, decision = [], None
            for n, rule in enumerate(policy["rules"]):
                why = self._mismatch(n, rule, facts, approved_by, refused, policy["approvers"])
                if why is None:
                    decision = Decision(True, n, [])
                    break
                reasons.append(f"rule {n}: {why}")
            decision = decision or Decision(False, None, reasons or ["the policy has no rules"])
        if decision.allowed:
            self._count(decision.rule, facts.spent)
        self._log({"event": "sign" if decision.allowed else "refuse", "txid": facts.txid,
                   "wallet": facts.wallet.name, "amount": facts.spent, "fee": facts.fee,
                   "destinations": facts.destinations, "destination_wallets": facts.destination_wallets,
                   "rule": decision.rule, "reasons": decision.reasons, "approved_by": sorted(approved_by)})
        return decision

    def decide_proof(self, proof: ProofFacts) -> Decision:
        """A proof of reserves spends nothing (it can never be mined), so no spend rule or velocity applies;
        only `allow_proofs` decides. The decision is logged either way with what the proof claims."""
        policy = self.policy or {}
        allowed = policy.get("allow_proofs", True)
        decision = Decision(allowed, None,
                            [] if allowed else ["this policy does not allow proofs of reserves (allow_proofs is false)"])
        self._log({"event": "proof", "allowed": allowed, "txid": proof.txid, "wallet": proof.wallet.name,
                   "message_sha256": proof.message_sha256, "total": proof.total, "coins": proof.coins,
                   "reasons": decision.reasons})
        return decision

    # -- rules ---------------------------------------------------------------------------------------------
    def _mismatch(self, n: int, rule: dict, facts: Facts, approved_by: set[str], refused: list[str],
                  approvers: dict) -> str | None:
        if "wallet" in rule and rule["wallet"] != facts.wallet.name:
            return f"for wallet {rule['wallet']!r}, not {facts.wallet.name!r}"
        if "max_amount" in rule and facts.spent > rule["max_amount"]:
            return f"{facts.spent} sat is over its maximum of {rule['max_amount']} sat"
        if "whitelist" in rule:
            outside = [a for a in facts.destinations if a not in rule["whitelist"]]
            if outside:
                return f"{outside[0]} is not on its allow-list"
        if "to_wallets" in rule:
            outside = [o for o in facts.outputs if not o.change and o.wallet not in rule["to_wallets"]]
            if outside:
                return (f"destination is not a custody address: {outside[0].address} is not proven to be an "
                        f"address of {' or '.join(map(repr, rule['to_wallets'])) or 'no wallet'}")
        if "per_period" in rule:
            used = self._used(n, rule["per_period"]["minutes"])
            if used + facts.spent > rule["per_period"]["max_amount"]:
                return (f"{used} sat already spent in the last {rule['per_period']['minutes']} min; "
                        f"{facts.spent} more exceeds its {rule['per_period']['max_amount']} sat")
        needed = rule.get("min_approvers", 0)
        counts = set(rule.get("approvers", approvers))
        counted = approved_by & counts
        if len(counted) < needed:
            others = [f"{name}'s approval does not count for this rule" for name in sorted(approved_by - counts)]
            return "; ".join([f"{len(counted)} valid approver signature(s), {needed} needed", *refused, *others])
        return None

    # -- velocity counters ---------------------------------------------------------------------------------
    def _spends(self) -> list[dict]:
        path = self.state / "hsm_velocity.json"
        return json.loads(path.read_text()) if path.exists() else []

    def _used(self, rule: int, minutes: int) -> int:
        since = self.clock() - minutes * 60
        return sum(s["amount"] for s in self._spends() if s["rule"] == rule and s["time"] > since)

    def _count(self, rule: int, amount: int) -> None:
        horizon = self.clock() - 366 * 86400           # periods are at most a year
        spends = [s for s in self._spends() if s["time"] > horizon] + [
            {"time": self.clock(), "rule": rule, "amount": amount}]
        atomic_write(self.state / "hsm_velocity.json", json.dumps(spends))

    # -- the decision log ----------------------------------------------------------------------------------
    def log(self) -> list[dict]:
        path = self.state / "hsm_log.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def _last(self) -> dict | None:
        """The log's last entry, read from the end of the file (the log only grows)."""
        path = self.state / "hsm_log.jsonl"
        if not path.exists() or path.stat().st_size == 0:
            return None
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            position, tail = f.tell(), b""
            while position > 0 and tail.count(b"\n") < 2:
                step = min(4096, position)
                position -= step
                f.seek(position)
                tail = f.read(step) + tail
        return json.loads(tail.rstrip(b"\n").rsplit(b"\n", 1)[-1])

    def _log(self, entry: dict) -> None:
        last = self._last()
        body = {"seq": last["seq"] + 1 if last else 0, "time": int(self.clock()), **entry,
                "prev": last["hash"] if last else GENESIS}
        body["hash"] = entry_hash(body)
        append(self.state / "hsm_log.jsonl", json.dumps(body, sort_keys=True) + "\n")


def spend_message(facts: Facts) -> bytes:
    """The approval message rebuilt from what the device proved, never from what the PSBT claims."""
    return approval_message(facts.wallet.policy_id, facts.txid,
                            [(o.address, o.value, o.change) for o in facts.outputs], facts.fee)


def _judge(approvers: list[Approver], approvals: list[Approval], message: bytes) -> tuple[set[str], list[str]]:
    """The names whose approval of `message` verifies, and why every other approval does not count."""
    valid, refused = valid_approvers(approvers, approvals, message)
    known, holders = {(a.kind, a.key) for a in approvers}, {a.key: a for a in approvers}
    for approval in approvals:
        if (approval.kind, approval.key) in known:
            continue
        holder = holders.get(approval.key)
        refused.append(f"{holder.name} approves with a {holder.kind} key, not a {approval.kind} approval" if holder
                       else f"a {approval.kind} approval by a key not in this policy ({approval.key.hex()[:16]}…)")
    return valid, refused


def entry_hash(entry: dict) -> str:
    return hashlib.sha256(json.dumps({k: v for k, v in entry.items() if k != "hash"}, sort_keys=True)
                          .encode()).hexdigest()


def verify_log(entries: list[dict]) -> str | None:
    """None when the chain is whole; else the first broken entry."""
    prev = GENESIS
    for n, entry in enumerate(entries):
        if entry.get("seq") != n or entry.get("prev") != prev or entry.get("hash") != entry_hash(entry):
            return f"entry {n} is altered or out of place"
        prev = entry["hash"]
    return None
