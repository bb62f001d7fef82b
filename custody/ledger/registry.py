"""Keys and policies in the database, and the addresses derived from each policy."""
from __future__ import annotations

import unicodedata

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from custody.bitcoin.derive import derive_scripts
from custody.bitcoin.keys import ExtendedKey, parse_key
from custody.bitcoin.policies import parse_policy, PolicySpec
from custody.errors import CustodyError, NotFound
from custody.eventlog.log import record
from custody.ledger.models import Address, Key, Organization, Policy, PolicyKey
from embit.networks import NETWORKS
from embit.script import Script

DEFAULT_ORGANIZATION = "default"
STATUS_FLOW = {"draft": {"active"}, "active": {"retiring"}, "retiring": {"retired", "active"}, "retired": set()}


def organization(session: Session, name: str = DEFAULT_ORGANIZATION) -> Organization:
    org = session.scalar(select(Organization).where(Organization.name == name))
    if org is None:
        org = Organization(name=name)
        session.add(org)
        session.flush()
    return org


def store_key(session: Session, key: ExtendedKey) -> Key:
    """The stored row for a key, added on first sight; the same xpub under another origin is refused."""
    row = session.scalar(select(Key).where(Key.xpub == key.xpub))
    if row is None:
        row = Key(fingerprint=key.fingerprint, path=key.path_str, xpub=key.xpub, network=key.network)
        session.add(row)
        session.flush()
    elif (row.fingerprint, row.path) != (key.fingerprint, key.path_str):
        raise CustodyError(f"key {key.xpub[:16]}… is already stored with origin [{row.fingerprint}{row.path[1:]}], "
                           f"not {key.origin}")
    return row


def import_key(session: Session, text: str, *, network: str = "regtest", fingerprint: str | None = None,
               path: str | None = None) -> Key:
    return store_key(session, parse_key(text, network=network, fingerprint=fingerprint, path=path))


# control and format characters (bidi overrides too), line and paragraph separators, surrogates
_NAME_UNSAFE = ("Cc", "Cf", "Cs", "Zl", "Zp")


def check_policy_name(name: str) -> str:
    """A policy's name is shown in the console, written into file names and headers and logged: one line of
    printable text, at most 200 characters (any script: "金庫" is a name)."""
    if not isinstance(name, str) or not name.strip():
        raise CustodyError("a policy needs a name")
    if len(name) > 200:
        raise CustodyError("a policy's name is at most 200 characters")
    for position, char in enumerate(name, 1):
        if unicodedata.category(char) in _NAME_UNSAFE:
            raise CustodyError(f"a policy's name cannot hold control characters or line breaks (U+{ord(char):04X} at "
                               f"character {position}): give it a name of printable text")
    return name


def create_policy(session: Session, name: str, spec: PolicySpec, *, gap_limit: int = 20,
                  actor: str = "coordinator") -> Policy:
    check_policy_name(name)
    if session.scalar(select(Policy).where(Policy.name == name)) is not None:
        raise CustodyError(f"a policy named {name!r} exists already")
    if not 1 <= gap_limit <= 10_000:
        raise CustodyError("gap limit must be between 1 and 10000")
    descriptor = spec.descriptor()
    if session.scalar(select(Policy).where(Policy.descriptor == descriptor)) is not None:
        raise CustodyError("a policy with exactly these keys and rules exists already")
    policy = Policy(organization_id=organization(session).id, name=name, kind=spec.kind, threshold=spec.threshold,
                    network=spec.network, descriptor=descriptor, recovery_threshold=spec.recovery_threshold,
                    recovery_after=spec.recovery_after, gap_limit=gap_limit, status="draft")
    for position, key in enumerate(spec.all_keys):
        role = "quorum" if position < len(spec.keys) else "recovery"
        policy.keys.append(PolicyKey(key_id=store_key(session, key).id, position=position, role=role))
    session.add(policy)
    session.flush()
    ensure_addresses(session, policy)
    record(session, "policy.created", actor, f"policy:{name}",
           {"descriptor": descriptor, "kind": spec.kind, "threshold": spec.threshold,
            "keys": [str(k) for k in spec.all_keys], "gap_limit": gap_limit})
    return policy


def get_policy(session: Session, name: str) -> Policy:
    policy = session.scalar(select(Policy).where(Policy.name == name))
    if policy is None:
        raise NotFound(f"no policy named {name!r}")
    return policy


def list_policies(session: Session) -> list[Policy]:
    return list(session.scalars(select(Policy).order_by(Policy.id)))


def spec_of(policy: Policy) -> PolicySpec:
    return parse_policy(policy.descriptor, network=policy.network)


def set_status(session: Session, policy: Policy, status: str, *, actor: str = "coordinator") -> Policy:
    if status not in STATUS_FLOW:
        raise CustodyError(f"unknown status {status!r}")
    if status not in STATUS_FLOW[policy.status]:
        raise CustodyError(f"policy {policy.name!r} is {policy.status}; it cannot become {status}")
    record(session, "policy.status", actor, f"policy:{policy.name}", {"from": policy.status, "to": status})
    policy.status = status
    return policy


def receive_address(session: Session, policy: Policy, index: int = 0) -> str:
    """The policy's receive address at `index` (derived when the policy was created)."""
    return session.scalar(select(Address.address).where(Address.policy_id == policy.id, Address.branch == 0,
                                                        Address.index == index))


def ensure_addresses(session: Session, policy: Policy, spec: PolicySpec | None = None, *,
                     upto: dict[int, int] | None = None) -> list[Address]:
    """Derive each branch up to its highest used index plus the gap limit (or, with `upto`, past a
    count of addresses known to be used); returns the new rows."""
    spec = spec or spec_of(policy)
    network = NETWORKS[policy.network]
    added = []
    for branch in (0, 1):
        have = session.scalar(select(func.count()).select_from(Address).where(
            Address.policy_id == policy.id, Address.branch == branch)) or 0
        last_used = session.scalar(select(func.max(Address.index)).where(
            Address.policy_id == policy.id, Address.branch == branch, Address.used.is_(True)))
        used = max(last_used + 1 if last_used is not None else 0, (upto or {}).get(branch, 0))
        want = used + policy.gap_limit
        if have >= want:
            continue
        scripts = derive_scripts(spec, branch, have, want - 1)
        session.execute(insert(Address), [
            {"policy_id": policy.id, "branch": branch, "index": have + i, "script_pubkey": spk,
             "address": Script(spk).address(network), "used": False} for i, spk in enumerate(scripts)])
        added += session.scalars(select(Address).where(Address.policy_id == policy.id, Address.branch == branch,
                                                       Address.index >= have)).all()
    session.flush()
    return added
