"""How a device counts officers' approvals of a spend against the approvers of its own policy.

What an approval is (the message, the approver entries, the PSBT fields, how one verifies) is agreed with
the coordinator and lives in `protocol`; the policy's rules that say how many must approve are `hsm`'s.
"""
from __future__ import annotations

from .protocol import Approval, Approver, verify
# the protocol's own, named here too for the tests and benchmarks that import them from this module


def valid_approvers(approvers: list[Approver], approvals: list[Approval], message: bytes) -> tuple[set[str], list[str]]:
    """The names whose approval of `message` verifies, and why each other approval by a policy key does not."""
    by_key = {(a.kind, a.key): a for a in approvers}
    valid, refused = set(), []
    for approval in approvals:
        approver = by_key.get((approval.kind, approval.key))
        if approver is None:
            continue
        why = verify(approver, approval, message)
        if why is None:
            valid.add(approver.name)
        else:
            refused.append(why)
    return valid, refused
