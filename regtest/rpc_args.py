"""Bitcoin Core's RPC argument handling: positional or named parameters, types and defaults."""
from __future__ import annotations

import json
from decimal import Decimal, InvalidOperation

from .errors import RPC_INVALID_PARAMETER, RPC_MISC_ERROR, RPC_TYPE_ERROR, RPCError
from .serialize import COIN

REQUIRED = object()

_JSON_TYPE = {str: "string", bool: "bool", int: "number", float: "number", Decimal: "number",
              list: "array", dict: "object", type(None): "null"}


def json_type(value) -> str:
    return _JSON_TYPE.get(type(value), "unknown")


def type_error(value, expected: str) -> RPCError:
    return RPCError(RPC_TYPE_ERROR, f"JSON value of type {json_type(value)} is not of expected type {expected}")


def bind(method: str, spec: list[tuple[str, str, object]], params) -> list:
    """Bind params (list or dict) to spec [(name, type, default)]; types: str, int, bool, amount,
    array, object, any, or 'a|b' unions. Raises Core's errors, in Core's order: the argument count,
    then every argument's JSON type at once (RPCHelpMan::HandleRequest), then each value."""
    if params is None:
        params = []
    if isinstance(params, dict):
        names = {name for name, _, _ in spec}
        for key in params:
            if key not in names:
                raise RPCError(RPC_INVALID_PARAMETER, f"Unknown named parameter {key}")
        values = [params.get(name, None) for name, _, _ in spec]
    elif isinstance(params, list):
        required = sum(1 for _, _, default in spec if default is REQUIRED)
        if not required <= len(params) <= len(spec):
            raise RPCError(RPC_MISC_ERROR, usage(method, spec))
        values = list(params) + [None] * (len(spec) - len(params))
    else:
        raise RPCError(-32600, "Params must be an array or object")
    mismatches = {}
    for position, ((name, kind, default), value) in enumerate(zip(spec, values), 1):
        expected = _CHECKED_TYPE.get(kind)
        if expected is None or (value is None and default is not REQUIRED):
            continue
        if json_type(value) != expected:
            mismatches[f"Position {position} ({name})"] = (f"JSON value of type {json_type(value)} "
                                                          f"is not of expected type {expected}")
    if mismatches:
        raise RPCError(RPC_TYPE_ERROR, "Wrong type passed:\n" + json.dumps(mismatches, indent=4))
    out = []
    for (name, kind, default), value in zip(spec, values):
        if value is None and default is REQUIRED:
            raise RPCError(RPC_MISC_ERROR, usage(method, spec))
        out.append(default if value is None else check_type(value, kind))
    return out


# The types Core checks before a method runs (RPCArg's ExpectedType); amounts, ranges and the
# arguments Core marks skip_type_check (here: unions) are checked by the method itself.
_CHECKED_TYPE = {"str": "string", "int": "number", "bool": "bool", "array": "array", "object": "object"}


def check_type(value, kind: str):
    kinds = kind.split("|")
    for k in kinds:
        if k == "any":
            return value
        if k == "str" and isinstance(value, str):
            return value
        if k == "bool" and isinstance(value, bool):
            return value
        if k == "int" and isinstance(value, int) and not isinstance(value, bool):
            return value
        if k == "int" and isinstance(value, Decimal) and value == value.to_integral_value():
            return int(value)
        if k == "amount" and (isinstance(value, (int, Decimal, str)) and not isinstance(value, bool)):
            return value
        if k == "array" and isinstance(value, list):
            return value
        if k == "object" and isinstance(value, dict):
            return value
    if kinds == ["int"] and isinstance(value, Decimal):
        raise RPCError(RPC_TYPE_ERROR, "JSON integer out of range")
    expected = {"str": "string", "int": "number", "amount": "number", "bool": "bool",
                "array": "array", "object": "object"}[kinds[0]]
    raise type_error(value, expected)


def amount_to_sats(value) -> int:
    """Core's AmountFromValue: a number or numeric string with at most 8 decimals, in range."""
    try:
        d = Decimal(str(value)) if not isinstance(value, Decimal) else value
    except InvalidOperation:
        raise RPCError(RPC_TYPE_ERROR, "Invalid amount") from None
    if not d.is_finite():
        raise RPCError(RPC_TYPE_ERROR, "Invalid amount")
    sats = d * COIN
    if sats != sats.to_integral_value():
        raise RPCError(RPC_TYPE_ERROR, "Invalid amount")
    sats = int(sats)
    if not 0 <= sats <= 21_000_000 * COIN:
        raise RPCError(RPC_TYPE_ERROR, "Amount out of range")
    return sats


def sats_to_amount(sats: int) -> Decimal:
    return (Decimal(sats) / COIN).quantize(Decimal("0.00000001"))


def usage(method: str, spec) -> str:
    args = " ".join(name if default is REQUIRED else f"( {name} )" for name, _, default in spec)
    return f"{method} {args}".rstrip()


def parse_hash(value: str, name: str) -> bytes:
    """Core's ParseHashV: 64 hex characters, returned in internal byte order."""
    if not isinstance(value, str):
        raise type_error(value, "string")
    if len(value) != 64:
        raise RPCError(RPC_INVALID_PARAMETER, f"{name} must be of length 64 (not {len(value)}, for '{value}')")
    try:
        return bytes.fromhex(value)[::-1]
    except ValueError:
        raise RPCError(RPC_INVALID_PARAMETER, f"{name} must be hexadecimal string (not '{value}')") from None
