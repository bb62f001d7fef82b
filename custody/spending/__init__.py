"""Spend requests: approvals, the PSBT from request to broadcast, fee bumps and cancellations."""
