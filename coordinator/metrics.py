"""Prometheus metrics: what the ledger holds, where spends stand, how far the ledger lags the node,
what the latest proof of reserves of each audit proved, the mining treasury's open findings, paid and
expected earnings and unswept fleet coins, and how long requests take. Ledger, reserve and mining
figures are read from the database at scrape time."""
from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import select

from custody.ledger import coins as ledger
from custody.spending import service as spend_service
from custody.mining import service as mining_service
from custody.reserves.models import ReserveRun, ReserveSchedule

from custody.reserves.service import overdue

log = logging.getLogger("coordinator.metrics")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
VERDICTS = ("valid", "invalid", "inconclusive", "unchecked")


class LedgerCollector:
    def __init__(self, sessions, node_factory):
        self.sessions = sessions
        self.node_factory = node_factory

    def collect(self):
        balance = GaugeMetricFamily("custody_balance_sats", "Coins held, by policy and state (satoshis)",
                                    labels=["policy", "state"])
        spends = GaugeMetricFamily("custody_spends", "Spends by state", labels=["state"])
        missing = GaugeMetricFamily("custody_signatures_outstanding",
                                    "Signatures still needed by spends collecting them")
        synced = GaugeMetricFamily("custody_ledger_height", "Last block the ledger has synced")
        node_height = GaugeMetricFamily("custody_node_height", "The node's best block height")
        lag = GaugeMetricFamily("custody_ledger_lag_blocks", "Blocks the ledger is behind the node")
        up = GaugeMetricFamily("custody_node_up", "1 if the node answered the last scrape")
        with self.sessions() as s:
            for b in ledger.balances(s):
                for state in ("confirmed", "unconfirmed", "immature", "frozen", "reserved"):
                    balance.add_metric([b.policy, state], getattr(b, state))
            by_state = spend_service.spends_by_state(s)
            for state in ("requested", "approved", "signing", "signed", "broadcasting", "broadcast", "confirmed",
                          "rejected", "cancelled", "replaced", "conflicted"):
                spends.add_metric([state], by_state.get(state, 0))
            missing.add_metric([], spend_service.signatures_outstanding(s))
            tip = ledger.tip_height(s)
        if tip is not None:
            synced.add_metric([], tip)
        try:
            height = self.node_factory().getblockcount()
            node_height.add_metric([], height)
            up.add_metric([], 1)
            if tip is not None:
                lag.add_metric([], max(height - tip, 0))
        except Exception as e:       # the scrape still reports the ledger
            log.warning("node unavailable for metrics: %s", e)
            up.add_metric([], 0)
        yield from (balance, spends, missing, synced, node_height, lag, up)
        yield from self.reserves()
        yield from self.mining()

    def reserves(self):
        """The latest finalized run of each audit, and the re-proofs past due."""
        proven = GaugeMetricFamily("custody_reserves_proven_sats",
                                   "Satoshis proven by the latest finalized proof of reserves", labels=["audit"])
        coins = GaugeMetricFamily("custody_reserves_coins", "Coins in the latest finalized proof", labels=["audit"])
        verdict = GaugeMetricFamily("custody_reserves_verdict",
                                    "1 for the latest finalized proof's self-check verdict", labels=["audit", "verdict"])
        height = GaugeMetricFamily("custody_reserves_height", "Height the latest finalized proof is at",
                                   labels=["audit"])
        late = GaugeMetricFamily("custody_reserves_schedule_overdue", "Scheduled re-proofs past their due date")
        with self.sessions() as s:
            latest = {}
            for row in s.execute(select(ReserveRun.audit, ReserveRun.total, ReserveRun.coins, ReserveRun.verdict,
                                        ReserveRun.height).where(ReserveRun.state == "complete")
                                 .order_by(ReserveRun.id)):
                latest[row.audit] = row
            due = list(s.scalars(select(ReserveSchedule.next_due)))
        for audit, row in sorted(latest.items()):
            proven.add_metric([audit], row.total)
            coins.add_metric([audit], row.coins)
            height.add_metric([audit], row.height)
            for name in VERDICTS:
                verdict.add_metric([audit, name], 1 if (row.verdict or "unchecked") == name else 0)
        late.add_metric([], sum(overdue(d) for d in due))
        yield from (proven, coins, verdict, height, late)

    def mining(self):
        """Open discrepancies, each account's latest reconciled day, and what each fleet wallet holds unswept
        (from the database and the reconciliation reports in the event log: the node is not asked)."""
        found = GaugeMetricFamily("custody_mining_open_discrepancies", "Open mining reconciliation findings",
                                  labels=["category", "severity"])
        paid = GaugeMetricFamily("custody_mining_paid_sats", "Earnings the pool credited on the latest reconciled day",
                                 labels=["account"])
        expected = GaugeMetricFamily("custody_mining_expected_sats",
                                     "Earnings expected from the node on the latest reconciled day", labels=["account"])
        unswept = GaugeMetricFamily("custody_mining_fleet_unswept_sats",
                                    "Satoshis in a fleet payout wallet not yet swept into custody", labels=["policy"])
        with self.sessions() as s:
            figures = mining_service.metrics(s)
        for row in figures["open"]:
            found.add_metric([row["category"], row["severity"]], row["count"])
        for row in figures["days"]:
            paid.add_metric([row["account"]], row["paid"])
            if row["expected"] is not None:
                expected.add_metric([row["account"]], row["expected"])
        for row in figures["unswept"]:
            unswept.add_metric([row["policy"]], row["sats"])
        yield from (found, paid, expected, unswept)


def make_registry(sessions, node_factory) -> tuple[CollectorRegistry, Histogram]:
    registry = CollectorRegistry()
    registry.register(LedgerCollector(sessions, node_factory))
    latency = Histogram("custody_http_request_duration_seconds", "HTTP request latency",
                        ["method", "route", "status"], buckets=LATENCY_BUCKETS, registry=registry)
    return registry, latency
