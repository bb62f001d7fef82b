"""Proofs of reserves (BIP-127 style) and the liabilities they are set against."""
