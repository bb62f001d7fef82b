"""What each role may read, field by field: the one table the read routes and the console pages apply.

`auth.PERMISSIONS` says who may call a route at all; `VISIBLE` says which parts of an answer a role
gets. Three things are worth more than the rest of what the routes return:

- **xpubs**: a policy's descriptor and every key's xpub, wherever they appear (policy views, key
  lists, exports, ceremony keys, the PSBT_GLOBAL_XPUB fields of PSBTs, proof-of-reserves packages).
  One xpub reveals every past and future address of a policy, hence its balance, its history and its
  counterparties, and lets anyone watch it forever. Admins (who set up keys and policies), officers
  (who build and check spends) and auditors (who read everything) see them all. A signatory sees them
  for the policies they hold a key of (custody.devices.holders: through their device or their key), which is
  what they need to check what their device registers and shows; no other policy's. Viewers never:
  they read balances, coins, history, spends and policies without them.
- **labels**: BIP-329 labels of coins and addresses (who paid, what for), in coin lists and in the coin
  search (a search that matched label text would answer "which coins are labelled X?"). Business
  records: the roles of the table's `label.read` (admin, officer, auditor), nobody else.
- **memos**: a spend's memo (invoice, payee, purpose), in spends, lists and the spend's timeline. A
  signatory sees it (a signature is an informed act: they must know what they sign); viewers do not.

Everything else a route returns is for every role the route admits: amounts, states, balances,
addresses, outpoints, txids, destinations, fees, approvals, freeze reasons (why a coin cannot move),
device fingerprints, registrations and their proofs. The event log's routes admit only roles that see
everything. A withheld field is left out of the answer, and the answer's `withheld` lists what was
left out ("label", "memo", "descriptor", "xpubs", "key"), so the console can say so.
"""
from __future__ import annotations

import copy

from embit.psbt import PSBT
from fastapi import HTTPException, Request
from sqlalchemy import select

from custody.devices import holders
from custody.ledger.models import Key, PolicyKey
from custody.ledger.registry import get_policy

from coordinator.auth import PERMISSIONS

EVERY, OWN, NONE = "every", "own", "none"

VISIBLE: dict[str, dict[str, str]] = {
    "xpubs": {"admin": EVERY, "officer": EVERY, "auditor": EVERY, "signatory": OWN, "viewer": NONE},
    "labels": {"admin": EVERY, "officer": EVERY, "auditor": EVERY, "signatory": NONE, "viewer": NONE},
    "memos": {"admin": EVERY, "officer": EVERY, "auditor": EVERY, "signatory": EVERY, "viewer": NONE},
}
# the table agrees with the role table: labels are label.read's, auditors read everything
assert {r for r, rule in VISIBLE["labels"].items() if rule == EVERY} == set(PERMISSIONS["label.read"])
assert all(rules["auditor"] == EVERY for rules in VISIBLE.values())


class Reader:
    """The caller as the table sees them; what they hold is looked up once, when first needed."""

    def __init__(self, session, role: str, username: str):
        self.s, self.role, self.username = session, role, username
        self._policies: set[int] | None = None
        self._keys: set[int] | None = None
        self._ceremonies: set[int] | None = None

    def rule(self, what: str) -> str:
        return VISIBLE[what].get(self.role, NONE)

    @property
    def policies(self) -> set[int]:
        if self._policies is None:
            self._policies = holders.policies_held(self.s, self.username) if self.role == "signatory" else set()
        return self._policies

    @property
    def keys(self) -> set[int]:
        if self._keys is None:
            self._keys = holders.keys_held(self.s, self.username) if self.role == "signatory" else set()
        return self._keys

    @property
    def ceremonies(self) -> set[int]:
        if self._ceremonies is None:
            self._ceremonies = holders.ceremonies_held(self.s, self.username) if self.role == "signatory" else set()
        return self._ceremonies

    def sees(self, what: str, *, policy_id: int | None = None, ceremony_id: int | None = None) -> bool:
        rule = self.rule(what)
        if rule != OWN:
            return rule == EVERY
        return (policy_id is not None and policy_id in self.policies) or \
            (ceremony_id is not None and ceremony_id in self.ceremonies)


def reader(request: Request, session) -> Reader:
    p = request.state.principal
    return Reader(session, p.role, p.username)


def _withheld(shown: dict, *fields: str) -> dict:
    return {**shown, "withheld": sorted(set(shown.get("withheld", [])) | set(fields))}


# -- policies and keys -------------------------------------------------------------------------------------
def policy(r: Reader, shown: dict, name: str) -> dict:
    """A policy as `spend_service.policy_show` shows it: without its descriptor and xpubs (the keys by their
    origins only) for whoever may not see them."""
    row = get_policy(r.s, name)
    if r.sees("xpubs", policy_id=row.id):
        return shown
    out = {k: v for k, v in shown.items() if k != "descriptor"}
    if isinstance(shown.get("keys"), list):
        out["keys"] = [f"{pk.role}: [{pk.key.fingerprint}{pk.key.path[1:]}]" for pk in row.keys]
    return _withheld(out, "descriptor", "xpubs")


def require_xpubs(r: Reader, names: list[str], what: str) -> None:
    """403 unless the caller may see the xpubs of every one of these policies (for files that carry them
    whole: exports, proof-of-reserves packages)."""
    rows = [get_policy(r.s, name) for name in names]
    hidden = [p.name for p in rows if not r.sees("xpubs", policy_id=p.id)]
    if hidden:
        raise HTTPException(403, f"{what} carries the descriptor and xpubs of {', '.join(hidden)}, which the "
                                 f"{r.role} role sees only for policies they hold a key of")


def keys(r: Reader, rows: list[dict]) -> list[dict]:
    """`service.key_list` rows the caller may see."""
    if r.rule("xpubs") != OWN:
        return rows if r.rule("xpubs") == EVERY else []
    ids = set(r.keys)
    if r.policies:
        ids |= set(r.s.scalars(select(PolicyKey.key_id).where(PolicyKey.policy_id.in_(r.policies))))
    visible = set(r.s.scalars(select(Key.xpub).where(Key.id.in_(ids)))) if ids else set()
    return [row for row in rows if row.get("xpub") in visible]


def visible_xpubs(r: Reader, policy_ids) -> set[str] | None:
    """The xpubs of these policies the caller may see; None for all of them."""
    if r.rule("xpubs") == EVERY:
        return None
    seen = [i for i in policy_ids if r.sees("xpubs", policy_id=i)]
    return set(r.s.scalars(select(Key.xpub).join(PolicyKey, PolicyKey.key_id == Key.id)
                           .where(PolicyKey.policy_id.in_(seen)))) if seen else set()


def psbt(r: Reader, text: str, names: list[str]) -> str:
    """A PSBT (base64) of these policies without the PSBT_GLOBAL_XPUB entries the caller may not see.
    Signing needs only the inputs' own derivations, which stay."""
    allowed = visible_xpubs(r, [get_policy(r.s, name).id for name in names])
    if allowed is None:
        return text
    parsed = PSBT.from_string(text)
    hidden = [k for k in parsed.xpubs if k.to_base58() not in allowed]
    if not hidden:
        return text
    for k in hidden:
        del parsed.xpubs[k]
    return parsed.to_string()


def ceremony(r: Reader, status: dict) -> dict:
    """A ceremony as `ceremony.status` shows it: without the devices' keys (xpubs) for a signatory
    whose device is not part of it, and for roles that see no xpubs."""
    if r.sees("xpubs", ceremony_id=status["id"]):
        return status
    out = copy.deepcopy(status)
    out["devices"] = [_withheld({k: v for k, v in d.items() if k != "key"}, "key") for d in out["devices"]]
    return out


# -- coins -------------------------------------------------------------------------------------------------
def search_labels(r: Reader) -> bool:
    """May the coin search match label text?"""
    return r.sees("labels")


def utxo_page(r: Reader, page: dict) -> dict:
    """`service.utxo_page`'s answer without labels for whoever may not see them."""
    if r.sees("labels"):
        return page
    return _withheld({**page, "rows": [{k: v for k, v in row.items() if k != "label"} for row in page["rows"]]},
                     "label")


# -- spends ------------------------------------------------------------------------------------------------
def spend(r: Reader, shown: dict) -> dict:
    """A spend (`spend_service.spend_show`, optionally with its timeline) without its memo, in its fields and in
    its timeline's events, for whoever may not see memos."""
    if r.sees("memos"):
        return shown
    out = {k: v for k, v in shown.items() if k != "memo"}
    if "timeline" in shown:
        out["timeline"] = timeline(r, shown["timeline"])
    return _withheld(out, "memo")


def spends(r: Reader, rows: list[dict]) -> list[dict]:
    return rows if r.sees("memos") else [spend(r, row) for row in rows]


def timeline(r: Reader, events: list[dict]) -> list[dict]:
    if r.sees("memos"):
        return events
    out = []
    for e in events:
        data = e.get("data")
        if isinstance(data, dict) and "memo" in data:
            e = {**e, "data": {k: v for k, v in data.items() if k != "memo"}}
        out.append(e)
    return out
