"""A mining fleet's treasury: pool statements, telemetry, expected revenue, reconciliation, payout sweeps."""
