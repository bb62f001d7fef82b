"""Address derivation for custody policies (interim: plain embit derivation)."""
from __future__ import annotations

from embit.networks import NETWORKS
from embit.script import Script

from .policies import PolicySpec


def derive_scripts(spec: PolicySpec, branch: int, start: int, end: int, *, workers: int | None = None) -> list[bytes]:
    if start < 0 or end < start:
        raise ValueError(f"bad range {start}..{end}")
    desc = spec.embit(branch)
    return [desc.derive(i).script_pubkey().data for i in range(start, end + 1)]


def derive_addresses(spec: PolicySpec, branch: int, start: int, end: int, *, workers: int | None = None) -> list[str]:
    network = NETWORKS[spec.network]
    return [Script(s).address(network) for s in derive_scripts(spec, branch, start, end, workers=workers)]
