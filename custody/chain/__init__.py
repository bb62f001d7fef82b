"""The chain, as Bitcoin Core's JSON-RPC gives it: the one client every capability reads the chain through."""
