"""M-of-N custody policies as output descriptors (BIP-380/389).

Four shapes, the ones an institution asks for, and a single-key one for hot receiving wallets:
  wsh-sortedmulti  wsh(sortedmulti(M, K1/<0;1>/*, ...))            the default multisig
  wsh-multi        wsh(multi(M, ...))                               key order fixed by the policy
  tr-sortedmulti_a tr(NUMS, sortedmulti_a(M, ...))                  taproot, script path only
  wsh-recovery     wsh(or_d(multi(M, ...), and_v(v:<recovery>, older(N))))
                   the quorum now, or the recovery key(s) after N blocks (miniscript)
  wpkh             wpkh(K/<0;1>/*)                                  one key: a mining fleet's payout wallet,
                   swept into custody (its key in a signer whose policy pays custody only)
"""
from __future__ import annotations

from dataclasses import dataclass, field

from embit.descriptor import Descriptor
from embit.networks import NETWORKS

from custody.bitcoin.keys import ExtendedKey, KeyImportError, parse_key
from embit.descriptor.checksum import checksum as _checksum

# BIP-341's provably unspendable internal key (H = lift_x(sha256(G))): no key path spend.
NUMS_KEY = "50929b74c1a04954b78b4b6035e97a5e078a5a0f28ec96d547bfee9ace803ac0"
KINDS = ("wsh-sortedmulti", "wsh-multi", "tr-sortedmulti_a", "wsh-recovery", "wpkh")
MAX_MULTISIG_KEYS = 20          # CHECKMULTISIG's limit
MAX_TAPROOT_KEYS = 999          # sortedmulti_a's limit
MAX_P2WSH_SCRIPT = 3600         # standard witness script size
MAX_RELATIVE_BLOCKS = 0xFFFF    # BIP-68 block-based lock
NETWORK_PARAMS = {"main": NETWORKS["main"], "test": NETWORKS["test"], "testnet4": NETWORKS["test"],
                  "signet": NETWORKS["signet"], "regtest": NETWORKS["regtest"]}


class PolicyError(ValueError):
    """A policy that cannot be built; the message names the rule it breaks."""


def add_checksum(body: str) -> str:
    return f"{body}#{_checksum(body)}"


def check_and_strip_checksum(descriptor: str) -> str:
    body, sep, given = descriptor.partition("#")
    if sep and given != _checksum(body):
        raise PolicyError(f"descriptor checksum {given!r} does not match the computed {_checksum(body)!r}")
    return body


@dataclass(frozen=True)
class PolicySpec:
    kind: str
    threshold: int
    keys: tuple[ExtendedKey, ...]
    network: str = "regtest"
    recovery_keys: tuple[ExtendedKey, ...] = field(default=())
    recovery_threshold: int = 0
    recovery_after: int = 0     # blocks, for older(N)

    def descriptor(self, branch: int | None = None) -> str:
        """With checksum; `<0;1>/*` (BIP-389) by default, `/0/*` or `/1/*` for one branch."""
        suffix = "/<0;1>/*" if branch is None else f"/{branch}/*"
        keys = ",".join(f"{k}{suffix}" for k in self.keys)
        if self.kind == "wsh-sortedmulti":
            body = f"wsh(sortedmulti({self.threshold},{keys}))"
        elif self.kind == "wsh-multi":
            body = f"wsh(multi({self.threshold},{keys}))"
        elif self.kind == "wpkh":
            body = f"wpkh({keys})"
        elif self.kind == "tr-sortedmulti_a":
            body = f"tr({NUMS_KEY},sortedmulti_a({self.threshold},{keys}))"
        else:
            rkeys = [f"{k}{suffix}" for k in self.recovery_keys]
            recovery = (f"v:pkh({rkeys[0]})" if len(rkeys) == 1
                        else f"v:multi({self.recovery_threshold},{','.join(rkeys)})")
            body = f"wsh(or_d(multi({self.threshold},{keys}),and_v({recovery},older({self.recovery_after}))))"
        return add_checksum(body)

    @property
    def all_keys(self) -> tuple[ExtendedKey, ...]:
        return self.keys + self.recovery_keys

    @property
    def label(self) -> str:
        extra = f", recovery {self.recovery_threshold}-of-{len(self.recovery_keys)} after {self.recovery_after} blocks" \
            if self.kind == "wsh-recovery" else ""
        return f"{self.threshold}-of-{len(self.keys)} {self.kind}{extra}"

    def embit(self, branch: int | None = None) -> Descriptor:
        return Descriptor.from_string(self.descriptor(branch).split("#")[0])


def build_policy(kind: str, threshold: int, keys: list[ExtendedKey | str], *, network: str = "regtest",
                 recovery_keys: list[ExtendedKey | str] = (), recovery_threshold: int = 1,
                 recovery_after: int = 0) -> PolicySpec:
    """Check every rule a coordinator must enforce before anyone sends coins to a policy."""
    if kind not in KINDS:
        raise PolicyError(f"unknown policy kind {kind!r}; choose one of {', '.join(KINDS)}")
    parsed = tuple(_key(k, network) for k in keys)
    recovery = tuple(_key(k, network) for k in recovery_keys)
    n = len(parsed)
    if n == 0:
        raise PolicyError("a policy needs at least one key")
    if not 1 <= threshold <= n:
        raise PolicyError(f"threshold {threshold} is not between 1 and the number of keys ({n})")
    limit = {"tr-sortedmulti_a": MAX_TAPROOT_KEYS, "wpkh": 1}.get(kind, MAX_MULTISIG_KEYS)
    if kind == "wpkh" and n != 1:
        raise PolicyError(f"a wpkh wallet has exactly one key, not {n}")
    if n > limit:
        raise PolicyError(f"{kind} takes at most {limit} keys, not {n}")
    seen: dict[str, int] = {}
    for i, k in enumerate(parsed + recovery):
        previous = seen.setdefault(k.xpub, i)
        if previous != i:
            raise PolicyError(f"key {i + 1} repeats key {previous + 1} ({k.origin}): every key must be distinct")
    fingerprints = [k.fingerprint for k in parsed + recovery]
    if len(set(fingerprints)) != len(fingerprints):
        raise PolicyError("two keys come from the same master fingerprint: each signatory needs their own device")
    if kind == "wsh-recovery":
        if not recovery:
            raise PolicyError("a recovery policy needs at least one recovery key")
        if not 1 <= recovery_threshold <= len(recovery):
            raise PolicyError(f"recovery threshold {recovery_threshold} is not between 1 and {len(recovery)}")
        if not 1 <= recovery_after <= MAX_RELATIVE_BLOCKS:
            raise PolicyError(f"recovery delay must be 1 to {MAX_RELATIVE_BLOCKS} blocks, not {recovery_after}")
    elif recovery:
        raise PolicyError(f"{kind} has no recovery path; use wsh-recovery")
    spec = PolicySpec(kind, threshold, parsed, network, recovery, recovery_threshold if recovery else 0,
                      recovery_after if recovery else 0)
    _check_script_size(spec)
    return spec


def _key(k: ExtendedKey | str, network: str) -> ExtendedKey:
    if isinstance(k, ExtendedKey):
        family = "main" if network in ("main", "mainnet") else "test"
        if k.network != family:
            raise PolicyError(f"key {k.origin} is for another network than {network}")
        return k
    try:
        return parse_key(k, network=network)
    except KeyImportError as e:
        raise PolicyError(f"key {k[:24]}…: {e}") from None


def _check_script_size(spec: PolicySpec) -> None:
    if spec.kind.startswith("wsh"):
        script = spec.embit(0).derive(0).witness_script()
        if len(script.data) > MAX_P2WSH_SCRIPT:
            raise PolicyError(f"witness script of {len(script.data)} bytes exceeds the standard {MAX_P2WSH_SCRIPT}")


def parse_policy(descriptor: str, *, network: str = "regtest") -> PolicySpec:
    """The PolicySpec of a descriptor in one of the four shapes (checksum checked when present)."""
    try:
        body = check_and_strip_checksum(descriptor.strip())
    except ValueError as e:
        raise PolicyError(str(e)) from None
    body = body.replace("'", "h")
    import re
    key_re = r"(\[[0-9a-fA-F]{8}(?:/[0-9]+h?)*\][A-Za-z0-9]+)(?:/<0;1>/\*|/0/\*|/1/\*)"
    patterns = [
        ("wsh-sortedmulti", r"^wsh\(sortedmulti\((\d+),(.+)\)\)$"),
        ("wsh-multi", r"^wsh\(multi\((\d+),(.+)\)\)$"),
        ("tr-sortedmulti_a", rf"^tr\({NUMS_KEY},sortedmulti_a\((\d+),(.+)\)\)$"),
        ("wpkh", r"^wpkh\(()(.+)\)$"),
    ]
    for kind, pattern in patterns:
        m = re.match(pattern, body)
        if m:
            keys = re.findall(key_re, m.group(2))
            if len(keys) != m.group(2).count(",") + 1:
                raise PolicyError("every key needs an origin and a /<0;1>/* (or /0/*) derivation")
            return build_policy(kind, int(m.group(1) or 1), keys, network=network)
    m = re.match(r"^wsh\(or_d\(multi\((\d+),(.+?)\),and_v\(v:(pkh|multi)\((.+)\),older\((\d+)\)\)\)\)$", body)
    if m:
        keys = re.findall(key_re, m.group(2))
        if m.group(3) == "pkh":
            rthreshold, rkeys = 1, re.findall(key_re, m.group(4))
        else:
            first, _, rest = m.group(4).partition(",")
            rthreshold, rkeys = int(first), re.findall(key_re, rest)
        return build_policy("wsh-recovery", int(m.group(1)), keys, network=network, recovery_keys=rkeys,
                            recovery_threshold=rthreshold, recovery_after=int(m.group(5)))
    raise PolicyError("descriptor is not one of the supported policy shapes "
                      "(wsh(sortedmulti), wsh(multi), tr(NUMS, sortedmulti_a), wsh recovery miniscript, wpkh)")
