"""`custody governance ...`: governance proposals on the command line. Each command acts as one named
person (`--as NAME`, an admin or officer in the users table), checked by `custody.governance.proposals` exactly as
the API checks the logged-in user; a refusal rolls the transaction back (see `main`)."""
from __future__ import annotations

from custody.errors import CustodyError
from custody.governance import proposals as governance


def add_commands(sub, command, tx, client=None) -> None:
    """Register the subcommands; `command` and `tx(fn)` (run `fn(session, args)` in one transaction) come from cli."""
    gov = sub.add_parser("governance", help="proposals to change rules, statuses and roles, under a quorum"
                         ).add_subparsers(dest="governance_command", required=True)
    c = command("list", tx(lambda s, a: governance.list_proposals(s, states=a.state)), "proposals, newest first", gov)
    c.add_argument("--state", action="append", choices=list(governance.STATES), help="only these states; repeat")
    c = command("show", tx(lambda s, a: governance.proposal_json(s, governance.get(s, a.id))), "one proposal", gov)
    c.add_argument("id", type=int)
    command("settings", tx(lambda s, a: governance.settings(s)), "the quorum and the loosening delay", gov)

    c = command("propose", tx(_propose), "propose a change; other admins or officers approve it", gov)
    c.add_argument("kind", choices=[k.replace("_", "-") for k in governance.KINDS])
    c.add_argument("target", nargs="?", default=governance.SETTINGS_TARGET,
                   help="the policy, device serial or username (settings: none)")
    _as(c)
    c.add_argument("--approvals", type=int, help="approval-rule: distinct approving officers")
    c.add_argument("--per-request", help="approval-rule: limit per request (BTC, or NNNsat)")
    c.add_argument("--daily", help="approval-rule: limit per rolling 24 hours")
    c.add_argument("--allow", action="append", help="approval-rule: an allowed destination; repeat (none: any)")
    c.add_argument("--delay-above", help="approval-rule: spends of this much or more wait --delay")
    c.add_argument("--delay", type=int, default=0, help="approval-rule: seconds")
    c.add_argument("--status", help="policy-status or device-status: the new status")
    c.add_argument("--reason", default="", help="device-status: why")
    c.add_argument("--role", help="user-role: the new role")
    c.add_argument("--quorum", type=int, help="settings: approvals needed besides the proposer")
    c.add_argument("--loosen-delay", type=int, help="settings: seconds a loosening change waits")

    c = command("approve", _approve,
                "approve a proposal (a tightening change takes effect at once with the quorum)", gov)
    c.add_argument("id", type=int)
    _as(c)
    c = command("reject", tx(lambda s, a: governance.proposal_json(s, governance.reject(s, a.id, a.person,
                                                                                        note=a.note))),
                "reject a proposal (one rejection ends it)", gov)
    c.add_argument("id", type=int)
    _as(c)
    c.add_argument("--note", default="")
    c = command("cancel", tx(lambda s, a: governance.proposal_json(s, governance.cancel(s, a.id, a.person))),
                "withdraw one's own proposal before it is executed", gov)
    c.add_argument("id", type=int)
    _as(c)
    command("run-due", lambda a: governance.run_due(_sessions(a), actor=a.actor),
            "execute the approved changes whose delay has passed", gov)


def _as(parser) -> None:
    parser.add_argument("--as", dest="person", required=True, metavar="NAME",
                        help="who acts: an admin or officer of the users table")


def _sessions(args):
    from custody.store.db import open_database
    return open_database(args.db)


def _approve(a) -> dict:
    """The approval is committed first; a change due at once is then executed in a transaction of its own
    (as the API does), so that a crash in between leaves it scheduled for `run-due` or the leader loop."""
    sessions = _sessions(a)
    with sessions.begin() as s:
        governance.approve(s, a.id, a.person)
    governance.run_due(sessions, only=a.id, actor=a.person)
    with sessions() as s:
        return governance.proposal_json(s, governance.get(s, a.id))


def _propose(s, a) -> dict:
    kind = a.kind.replace("-", "_")
    if kind == "approval_rule":
        if a.approvals is None:
            raise CustodyError("an approval-rule proposal needs --approvals")
        change = governance.rule_change(approvals=a.approvals, per_request=a.per_request, daily=a.daily,
                                        allow=a.allow, delay_above=a.delay_above, delay=a.delay)
    elif kind == "policy_status":
        change = {"status": a.status}
    elif kind == "device_status":
        change = {"status": a.status, "reason": a.reason}
    elif kind == "user_role":
        change = {"role": a.role}
    else:
        change = {k: v for k, v in (("quorum", a.quorum), ("loosen_delay", a.loosen_delay)) if v is not None}
    return governance.proposal_json(s, governance.propose(s, kind, a.target, change, a.person))
