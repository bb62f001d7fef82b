"""The tamper-evident event log: hash-chained entries, signed checkpoints kept outside the host."""
