"""Start-up options in Bitcoin Core's syntax and meaning: `-name=value`, `-name` (true), `-noname`
(false), with one or two dashes. An option Core does not know is refused with Core's own error; one
this node cannot honour is refused by name, never silently ignored."""
from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path

from .mempool import DEFAULT_MEMPOOL_EXPIRY, Policy
from .node import Options
from .script import MAX_OP_RETURN_RELAY
from .serialize import COIN

DEFAULT_RPC_PORT = 18443
# Regtest's buried deployments and their heights in Core 29's chain parameters, which
# libbitcoinkernel's regtest context fixes (its C API takes no -testactivationheight).
BURIED_HEIGHTS = {"segwit": 0, "bip34": 1, "dersig": 1, "cltv": 1, "csv": 1}

# Core options this node honours: name -> kind (bool, int, str, amount, list).
KNOWN = {
    "regtest": "bool", "chain": "str", "datadir": "str", "rpcport": "int", "rpcuser": "str",
    "rpcpassword": "str", "rpcbind": "list", "rpcallowip": "list", "server": "bool", "listen": "bool",
    "txindex": "bool", "printtoconsole": "bool", "debug": "list", "persistmempool": "bool",
    "acceptnonstdtxn": "bool", "datacarrier": "bool", "datacarriersize": "int", "minrelaytxfee": "amount",
    "incrementalrelayfee": "amount", "mempoolexpiry": "int", "mocktime": "int",
    "testactivationheight": "list", "fastprune": "bool", "disablewallet": "bool", "fallbackfee": "amount",
    "reindex": "bool", "reindex-chainstate": "bool",
}
LOCAL_ADDRESSES = {"127.0.0.1", "localhost", "::1", "127.0.0.1/32"}


class OptionError(Exception):
    """Printed as Core prints an init error: `Error: MESSAGE`, exit code 1."""


@dataclass
class Settings:
    datadir: Path
    rpcport: int = DEFAULT_RPC_PORT
    rpcuser: str | None = None
    rpcpassword: str | None = None
    debug: bool = False
    node: Options = field(default_factory=Options)


def parse(argv: list[str]) -> Settings:
    values: dict[str, list[str]] = {}
    for token in argv:
        if not token.startswith("-"):
            raise OptionError(f"Command line contains unexpected token '{token}', "
                              "see custody-regtest -h for a list of options.")
        name, has_value, value = token.lstrip("-").partition("=")
        negated = name.startswith("no") and name[2:] in KNOWN and name not in KNOWN
        if negated:                      # -nofoo is foo=0, -nofoo=0 is foo=1 (as Core reads them)
            name, value = name[2:], "1" if has_value and value == "0" else "0"
        elif not has_value:
            value = "1"
        if name not in KNOWN:
            raise OptionError(f"Error parsing command line arguments: Invalid parameter {token}")
        values.setdefault(name, []).append(value)

    def last(name, default=None):
        return values[name][-1] if name in values else default

    def flag(name, default: bool) -> bool:
        return _bool(last(name, "1" if default else "0"))

    if last("chain", "regtest") != "regtest" or not flag("regtest", True):
        raise OptionError("this node runs regtest only (-regtest, or -chain=regtest)")
    if last("datadir") is None:
        raise OptionError("-datadir is required")
    if not flag("server", True):
        raise OptionError("-server=0 cannot be honoured: this node is only its RPC server")
    if flag("listen", False):
        raise OptionError("-listen cannot be honoured: this node has no peer-to-peer network (use -listen=0)")
    if not flag("disablewallet", True):
        raise OptionError("-disablewallet=0 cannot be honoured: this node has no wallet")
    if flag("fastprune", False):
        raise OptionError("-fastprune cannot be honoured: libbitcoinkernel's C API sets no block file size")
    for address in values.get("rpcbind", []) + values.get("rpcallowip", []):
        if address.split(":")[0] not in LOCAL_ADDRESSES:
            raise OptionError(f"-rpcbind/-rpcallowip={address} cannot be honoured: RPC is served on 127.0.0.1 only")
    for arg in values.get("testactivationheight", []):
        _check_activation_height(arg)
    user, password = last("rpcuser"), last("rpcpassword")
    if bool(user) != bool(password):
        raise OptionError("-rpcuser and -rpcpassword go together")
    datacarrier_size = _int("datacarriersize", last("datacarriersize", str(MAX_OP_RETURN_RELAY)))
    policy = Policy(require_standard=not flag("acceptnonstdtxn", False),
                    datacarrier_size=datacarrier_size if flag("datacarrier", True) else None,
                    min_relay_fee=_feerate("minrelaytxfee", last("minrelaytxfee"), Policy.min_relay_fee),
                    incremental_relay_fee=_feerate("incrementalrelayfee", last("incrementalrelayfee"),
                                                   Policy.incremental_relay_fee),
                    expiry=_int("mempoolexpiry", last("mempoolexpiry", str(DEFAULT_MEMPOOL_EXPIRY // 3600))) * 3600)
    mocktime = _int("mocktime", last("mocktime", "0"))
    if mocktime < 0:
        raise OptionError(f"Mocktime cannot be negative: {mocktime}.")
    return Settings(datadir=Path(last("datadir")).expanduser(), rpcport=_port(last("rpcport", str(DEFAULT_RPC_PORT))),
                    rpcuser=user, rpcpassword=password, debug=bool(values.get("debug")) and last("debug") != "0",
                    node=Options(policy=policy, mocktime=mocktime, txindex=flag("txindex", False),
                                 persist_mempool=flag("persistmempool", True), reindex=flag("reindex", False),
                                 reindex_chainstate=flag("reindex-chainstate", False)))


def _bool(text: str) -> bool:
    """Core's InterpretBool: an empty value is true, otherwise the number's truth."""
    if text == "":
        return True
    try:
        return int(text) != 0
    except ValueError:
        return False


def _int(name: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise OptionError(f"Invalid value for -{name}=<n>: '{text}'") from None


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise OptionError(f"Invalid port specified in -rpcport: '{text}'")
    return port


def _feerate(name: str, text: str | None, default: int) -> int:
    """A BTC/kvB amount, as Core's ParseMoney: sat/kvB."""
    if text is None:
        return default
    try:
        sats = Decimal(text) * COIN
    except InvalidOperation:
        sats = Decimal(-1)
    if sats < 0 or sats != sats.to_integral_value():
        raise OptionError(f"Invalid amount for -{name}=<amount>: '{text}'")
    return int(sats)


def _check_activation_height(arg: str) -> None:
    name, found, value = arg.partition("@")
    if not found:
        raise OptionError(f"Invalid format ({arg}) for -testactivationheight=name@height.")
    try:
        height = int(value)
    except ValueError:
        height = -1
    if not 0 <= height < 2**31 - 1:
        raise OptionError(f"Invalid height value ({arg}) for -testactivationheight=name@height.")
    if name not in BURIED_HEIGHTS:
        raise OptionError(f"Invalid name ({arg}) for -testactivationheight=name@height.")
    if height != BURIED_HEIGHTS[name]:
        raise OptionError(f"-testactivationheight={arg} cannot be honoured: libbitcoinkernel's regtest "
                          f"parameters fix {name} at height {BURIED_HEIGHTS[name]}")
