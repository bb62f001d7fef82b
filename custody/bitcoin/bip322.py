"""BIP-322 generic message signing, "simple" format, for single-key P2WPKH and P2TR.

A signature is the witness that would spend a virtual output paying to the address (``to_spend``)
in a virtual transaction that can never be mined (``to_sign``). Only the pieces this toolkit needs
are here: signing for P2WPKH, and verifying P2WPKH and P2TR key-path witnesses. Every other script
type is refused (``False``) rather than reported as "inconclusive", because a caller asking "did
this key sign this?" must not mistake "could not check" for a yes.

The finalized BIP (1.0.0) prefixes simple signatures with ``smp``; older tools and the BIP's first
test vectors do not. ``verify_simple`` accepts both; ``sign_p2wpkh`` emits the unprefixed form
unless asked.
"""
from __future__ import annotations

import base64

from embit import ec, hashes, script
from embit.networks import NETWORKS
from embit.script import Script, Witness
from embit.transaction import SIGHASH, Transaction, TransactionInput, TransactionOutput

TAG = "BIP0322-signed-message"
PREFIX = "smp"
_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141  # secp256k1 order


def message_hash(message: bytes) -> bytes:
    """sha256_tag(message): the tag keeps a message hash from ever equalling a real sighash."""
    return hashes.tagged_hash(TAG, message)


def to_spend(script_pubkey: bytes, message: bytes) -> Transaction:
    """The virtual transaction whose only output the signature spends; commits to the message."""
    vin = TransactionInput(b"\x00" * 32, 0xFFFFFFFF, Script(b"\x00\x20" + message_hash(message)), sequence=0)
    return Transaction(version=0, vin=[vin], vout=[TransactionOutput(0, Script(script_pubkey))], locktime=0)


def to_sign(to_spend_tx: Transaction) -> Transaction:
    """The virtual spend of to_spend:0; its only output is OP_RETURN, so it moves no coins."""
    vin = TransactionInput(to_spend_tx.txid(), 0, sequence=0)
    return Transaction(version=0, vin=[vin], vout=[TransactionOutput(0, Script(b"\x6a"))], locktime=0)


def _p2wpkh_sighash(script_pubkey: bytes, message: bytes) -> bytes:
    # BIP-143 scriptCode for P2WPKH is the matching P2PKH script; the spent amount is 0.
    tx = to_sign(to_spend(script_pubkey, message))
    return tx.sighash_segwit(0, script.p2pkh_from_p2wpkh(Script(script_pubkey)), 0, SIGHASH.ALL)


def sign_p2wpkh(private_key: ec.PrivateKey, message: bytes, prefixed: bool = False) -> str:
    """Simple signature for the key's P2WPKH address: SIGHASH_ALL, RFC 6979 nonce, low-S, low-R.

    embit grinds R like Bitcoin Core (RFC 6979 with a counter as extra data until the DER is at
    most 70 bytes), so the output is deterministic and byte-identical to Core's.
    """
    if not private_key.compressed:
        raise ValueError("P2WPKH needs a compressed public key")
    pub = private_key.get_public_key()
    spk = script.p2wpkh(pub).data
    sig = private_key.sign(_p2wpkh_sighash(spk, message))
    encoded = base64.b64encode(script.witness_p2wpkh(sig, pub).serialize()).decode()
    return PREFIX + encoded if prefixed else encoded


def _decode_witness(signature_b64: str) -> list[bytes]:
    # "smp" decodes to a stack count of 178, which no accepted witness has, so stripping is safe.
    if signature_b64.startswith(PREFIX):
        signature_b64 = signature_b64[len(PREFIX):]
    raw = base64.b64decode(signature_b64, validate=True)
    witness = Witness.parse(raw)
    # embit does not notice truncated items or non-minimal lengths; a round trip does.
    if witness.serialize() != raw:
        raise ValueError("non-canonical witness encoding")
    return witness.items


def _verify_p2wpkh(script_pubkey: bytes, message: bytes, items: list[bytes]) -> bool:
    if len(items) != 2 or not items[0]:
        return False
    sig_item, pub = items
    # Compressed keys only (segwit policy); the key must be the one the script commits to.
    if len(pub) != 33 or pub[0] not in (2, 3) or hashes.hash160(pub) != script_pubkey[2:]:
        return False
    if sig_item[-1] != SIGHASH.ALL:  # BIP-322: SIGHASH_ALL only
        return False
    der = sig_item[:-1]
    sig = ec.Signature.parse(der)
    if sig.serialize() != der:  # strict DER: exactly the canonical encoding
        return False
    # Canonical DER is 30 len 02 rlen R 02 slen S; a high-S twin is malleated and is refused.
    # (libsecp256k1 refuses it too; the BIP's rule is stated here rather than inherited.)
    rlen = der[3]
    if int.from_bytes(der[6 + rlen:], "big") > _N // 2:
        return False
    return ec.PublicKey.parse(pub).verify(sig, _p2wpkh_sighash(script_pubkey, message))


def _verify_p2tr(script_pubkey: bytes, message: bytes, items: list[bytes]) -> bool:
    # Key path only: one item, a 64-byte BIP-340 signature (SIGHASH_DEFAULT) or 65 with ALL.
    # Two items would be an annex or a script path, which we do not evaluate.
    if len(items) != 1 or len(items[0]) not in (64, 65):
        return False
    sig = items[0]
    sighash = SIGHASH.DEFAULT
    if len(sig) == 65:
        if sig[64] != SIGHASH.ALL:  # 0x00 explicit is invalid per BIP-341; others not ALL
            return False
        sighash = SIGHASH.ALL
    spk = Script(script_pubkey)
    tx = to_sign(to_spend(script_pubkey, message))
    digest = tx.sighash_taproot(0, [spk], [0], sighash=sighash)
    return ec.PublicKey.from_xonly(script_pubkey[2:]).schnorr_verify(ec.SchnorrSig(sig[:64]), digest)


def _require_bytes(message) -> None:
    # A str would hash as nothing sensible and silently never verify; make the mistake loud.
    if not isinstance(message, (bytes, bytearray)):
        raise TypeError("message must be bytes")


def verify_simple(script_pubkey: bytes, message: bytes, signature_b64: str) -> bool:
    """True only for a valid simple signature by a single-key P2WPKH or P2TR (key path) script.

    Never raises for a bad signature: anything malformed, unsupported or suspicious is False.
    A message that is not bytes is the caller's bug and raises TypeError.
    """
    _require_bytes(message)
    if isinstance(script_pubkey, Script):
        script_pubkey = script_pubkey.data
    try:
        items = _decode_witness(signature_b64)
        if len(script_pubkey) == 22 and script_pubkey[:2] == b"\x00\x14":
            return _verify_p2wpkh(script_pubkey, message, items)
        if len(script_pubkey) == 34 and script_pubkey[:2] == b"\x51\x20":
            return _verify_p2tr(script_pubkey, message, items)
        return False
    except Exception:
        # embit and libsecp256k1 report malformed input with many exception types (ValueError,
        # EmbitError, AssertionError, IndexError, ...); a verifier fails closed on all of them.
        return False


def verify_address(address: str, message: bytes, signature_b64: str, network) -> bool:
    """verify_simple for an address, which must belong to ``network`` (a name or embit dict)."""
    _require_bytes(message)
    try:
        if isinstance(network, str):
            network = NETWORKS["test" if network == "testnet4" else network]
        spk = script.address_to_scriptpubkey(address)
        # embit ignores the network when decoding; re-encoding catches a testnet address on main.
        if spk.address(network) != address:
            return False
    except Exception:  # unknown network name, unparsable address, not a str, ...
        return False
    return verify_simple(spk.data, message, signature_b64)
