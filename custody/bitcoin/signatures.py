"""Signatures coming back from signers: verified against the coordinator's own PSBT, then merged.

An upload is trusted for nothing but its signatures. Its unsigned transaction must be identical to
the stored one; every new partial signature must be by a key of the policy at the input's own
derivation (taken from the stored PSBT, so a signer that strips derivations is still fine), use
SIGHASH_ALL, and verify against the sighash computed from the stored PSBT with the coin's real
amount. Other fields of the upload are never used; a witness_utxo that contradicts the coin is
refused by name, since it shows the signer was shown a lie.
"""
from __future__ import annotations

from dataclasses import dataclass

from embit import ec
from embit.psbt import PSBT
from embit.script import Script, Witness
from embit.transaction import SIGHASH

from custody.bitcoin import ur
from custody.bitcoin.psbt_check import decode, PSBTError

class SignatureError(ValueError):
    """An upload refused; the message names the input and the problem."""


def decode_psbt(data: bytes | str) -> PSBT:
    """A PSBT from base64, hex or binary, or from the BC-UR frames an air-gapped signer shows as QR codes
    (`ur:crypto-psbt/…` or `ur:psbt/…`, one frame per line, any order): a signature scanned from a QR
    code enters exactly as an uploaded file does."""
    try:
        raw = _ur_frames(data) or decode(data)
    except (PSBTError, ur.URError) as e:
        raise SignatureError(str(e)) from None
    try:
        return PSBT.parse(raw)
    except Exception as e:
        raise SignatureError(f"malformed PSBT: {e}") from None


def _ur_frames(data: bytes | str) -> bytes | None:
    """The PSBT carried by UR text, or None when `data` is not UR text."""
    text = data.decode("ascii", "replace") if isinstance(data, bytes) else data
    frames = text.split()
    if not frames or not frames[0].lower().startswith("ur:"):
        return None
    ur_type = frames[0][3:].split("/")[0].lower()
    if ur_type not in ("crypto-psbt", "psbt"):
        raise SignatureError(f"ur:{ur_type} does not carry a PSBT: scan the signer's ur:crypto-psbt frames")
    return ur.decode(frames, ur_type=ur_type)


@dataclass
class MergeResult:
    psbt: PSBT
    new_signatures: list[tuple[int, str]]     # (input index, public key hex)
    signers: set[str]                         # fingerprints that signed something new


def merge_upload(stored: PSBT, upload: PSBT) -> MergeResult:
    """Verify every new signature in `upload`; only when all pass are they added to `stored`
    (in place, and returned). Nothing else is taken from the upload."""
    if upload.tx.serialize() != stored.tx.serialize() or len(upload.inputs) != len(stored.inputs) \
            or len(upload.outputs) != len(stored.outputs):
        raise SignatureError("the uploaded PSBT is for a different transaction (inputs, outputs, amounts "
                             "or locktime changed): refused")
    unsigned = stored.tx            # built once: it caches the BIP-143 hashes every input shares
    accepted, signers = [], set()
    tap_accepted = []
    for i, (ours, theirs) in enumerate(zip(stored.inputs, upload.inputs)):
        if ours.taproot_scripts:
            tap_accepted += _verify_taproot(stored, i, ours, theirs, signers)
            continue
        if theirs.witness_utxo is not None and ours.witness_utxo is not None and (
                theirs.witness_utxo.value != ours.witness_utxo.value
                or theirs.witness_utxo.script_pubkey != ours.witness_utxo.script_pubkey):
            raise SignatureError(f"input {i}: the upload's witness_utxo says {theirs.witness_utxo.value} sat, "
                                 f"the coin holds {ours.witness_utxo.value} sat: refused")
        expected = {pub.sec(): path for pub, path in ours.bip32_derivations.items()}
        have = {pub.sec(): sig for pub, sig in ours.partial_sigs.items()}
        for pub, sig in theirs.partial_sigs.items():
            sec = pub.sec()
            if sec in have:
                if have[sec] != sig:
                    raise SignatureError(f"input {i}: a second, different signature by the same key: refused")
                continue
            if sec not in expected:
                raise SignatureError(f"input {i}: signature by key {sec.hex()[:16]}… which is not a key of this "
                                     "policy at this input's derivation: refused")
            if not sig or sig[-1] != SIGHASH.ALL:
                raise SignatureError(f"input {i}: signature uses sighash 0x{sig[-1] if sig else 0:02x}; only "
                                     "SIGHASH_ALL is accepted: refused")
            digest = unsigned.sighash_segwit(i, _script_code(ours), ours.witness_utxo.value, SIGHASH.ALL)
            try:
                valid = ec.PublicKey.parse(sec).verify(ec.Signature.parse(sig[:-1]), digest)
            except Exception:
                valid = False
            if not valid:
                raise SignatureError(f"input {i}: signature by {expected[sec].fingerprint.hex()} does not verify "
                                     "for this transaction: refused")
            accepted.append((i, pub, sig))
            signers.add(expected[sec].fingerprint.hex())
    for i, pub, sig in accepted:
        stored.inputs[i].partial_sigs[pub] = sig
    for i, key, sig in tap_accepted:
        stored.inputs[i].taproot_sigs[key] = sig
    return MergeResult(stored, [(i, pub.sec().hex()) for i, pub, _ in accepted]
                       + [(i, key[0].xonly().hex()) for i, key, _ in tap_accepted], signers)


@dataclass(frozen=True)
class Merged:
    """merge_upload's outcome as plain values: what a worker process hands back (`merge_encoded`)."""
    psbt: str | None                    # the merged PSBT (base64); None when the upload adds nothing
    new_signatures: int
    signers: list[str]                  # fingerprints that signed something new, sorted
    fingerprints: dict[str, int]        # signed_fingerprints of the merged PSBT
    complete: bool | None               # every input at `threshold` (None: no threshold given)


def merge_encoded(stored: str, upload: bytes | str, threshold: int | list[int | None] | None = None) -> Merged:
    """merge_upload on encoded PSBTs: the CPU-heavy half of taking signatures (parsing both PSBTs,
    verifying every new signature, writing the merged PSBT) in one call that touches no database, so
    a worker process can run it (coordinator/cpu_pool.py). Raises SignatureError as merge_upload does."""
    result = merge_upload(PSBT.from_string(stored), decode_psbt(upload))
    if not result.new_signatures:
        return Merged(None, 0, [], {}, None)
    return Merged(result.psbt.to_string(), len(result.new_signatures), sorted(result.signers),
                  signed_fingerprints(result.psbt),
                  None if threshold is None else is_complete(result.psbt, threshold))


def _verify_taproot(stored: PSBT, i: int, ours, theirs, signers: set) -> list:
    """Script-path Schnorr signatures (BIP-342) by policy keys, SIGHASH_DEFAULT or ALL only."""
    if theirs.witness_utxo is not None and (theirs.witness_utxo.value != ours.witness_utxo.value
                                            or theirs.witness_utxo.script_pubkey != ours.witness_utxo.script_pubkey):
        raise SignatureError(f"input {i}: the upload's witness_utxo says {theirs.witness_utxo.value} sat, "
                             f"the coin holds {ours.witness_utxo.value} sat: refused")
    expected = {pub.xonly(): (leaves, path) for pub, (leaves, path) in ours.taproot_bip32_derivations.items()}
    have = {(pub.xonly(), leaf): sig for (pub, leaf), sig in ours.taproot_sigs.items()}
    (control, script_and_version), = ours.taproot_scripts.items()
    script, leaf_version = script_and_version[:-1], script_and_version[-1]
    accepted = []
    for (pub, leaf), sig in theirs.taproot_sigs.items():
        x = pub.xonly()
        if (x, leaf) in have:
            if have[(x, leaf)] != sig:
                raise SignatureError(f"input {i}: a second, different signature by the same key: refused")
            continue
        if x not in expected or leaf not in expected[x][0]:
            raise SignatureError(f"input {i}: signature by key {x.hex()[:16]}… which is not a key of this "
                                 "policy at this input's derivation: refused")
        if len(sig) == 65 and sig[-1] != SIGHASH.ALL or len(sig) not in (64, 65):
            raise SignatureError(f"input {i}: signature uses sighash 0x{sig[-1]:02x}; only SIGHASH_DEFAULT and "
                                 "SIGHASH_ALL are accepted: refused")
        digest = stored.sighash(i, sighash=SIGHASH.DEFAULT if len(sig) == 64 else SIGHASH.ALL, ext_flag=1,
                                script=Script(script), leaf_version=leaf_version)
        try:
            valid = ec.PublicKey.from_xonly(x).schnorr_verify(ec.SchnorrSig.parse(sig[:64]), digest)
        except Exception:
            valid = False
        if not valid:
            raise SignatureError(f"input {i}: signature by {expected[x][1].fingerprint.hex()} does not verify "
                                 "for this transaction: refused")
        accepted.append((i, (pub, leaf), sig))
        signers.add(expected[x][1].fingerprint.hex())
    return accepted


def _script_code(scope) -> Script:
    """BIP-143's scriptCode: the witness script, or for P2WPKH the P2PKH script of the key hash."""
    if scope.witness_script is not None:
        return scope.witness_script
    spk = scope.witness_utxo.script_pubkey.data
    if len(spk) != 22 or spk[:2] != b"\x00\x14":
        raise SignatureError("an input without a witness script must be P2WPKH")
    return Script(b"\x76\xa9\x14" + spk[2:] + b"\x88\xac")


def signed_fingerprints(psbt: PSBT) -> dict[str, int]:
    """How many inputs each key (by master fingerprint) has signed."""
    counts: dict[str, int] = {}
    for scope in psbt.inputs:
        paths = {pub.sec(): path for pub, path in scope.bip32_derivations.items()}
        paths.update({pub.xonly(): path for pub, (_, path) in scope.taproot_bip32_derivations.items()})
        signed = [pub.sec() for pub in scope.partial_sigs] + [pub.xonly() for pub, _ in scope.taproot_sigs]
        for key in signed:
            fp = paths[key].fingerprint.hex()
            counts[fp] = counts.get(fp, 0) + 1
    return counts


def _thresholds(psbt: PSBT, threshold: int | list[int | None]) -> list[int | None]:
    return threshold if isinstance(threshold, list) else [threshold] * len(psbt.inputs)


def is_complete(psbt: PSBT, threshold: int | list[int | None]) -> bool:
    """Every input has its threshold of signatures (a list gives one per input; None: not ours to sign)."""
    return all(m is None or len(scope.partial_sigs) + len(scope.taproot_sigs) >= m
               for scope, m in zip(psbt.inputs, _thresholds(psbt, threshold)))


def finalize(psbt: PSBT, threshold: int | list[int | None]) -> bytes:
    """The signed transaction: for each wsh multisig input (alone or as a miniscript's first branch),
    the dummy element, `threshold` signatures in the script's key order, and the witness script.
    Inputs whose threshold is None (a proof of reserves' commitment) are left as they are."""
    tx = psbt.tx
    for i, (scope, threshold) in enumerate(zip(psbt.inputs, _thresholds(psbt, threshold))):
        if threshold is None:
            continue
        if scope.taproot_scripts:
            tx.vin[i].witness = _taproot_witness(i, scope, threshold)
            continue
        sigs = {pub.sec(): sig for pub, sig in scope.partial_sigs.items()}
        if scope.witness_script is None:         # P2WPKH: the signature and the key
            if threshold != 1 or len(sigs) != 1:
                raise SignatureError(f"input {i}: {len(sigs)} of 1 signature")
            (pub, sig), = sigs.items()
            tx.vin[i].witness = Witness([sig, pub])
            continue
        order = _multisig_keys(scope.witness_script.data)
        chosen = [sigs[k] for k in order if k in sigs][:threshold]
        if len(chosen) < threshold:
            raise SignatureError(f"input {i}: {len(chosen)} of {threshold} signatures")
        tx.vin[i].witness = Witness([b""] + chosen + [scope.witness_script.data])
    return tx.serialize()


def _taproot_witness(i: int, scope, threshold: int) -> Witness:
    """multi_a checks keys in script order, popping one stack item per key: the witness lists the
    signatures for the last key first, an empty item for each key that does not sign."""
    (control, script_and_version), = scope.taproot_scripts.items()
    script = script_and_version[:-1]
    keys, j = [], 0
    while j < len(script) and script[j] == 32:
        keys.append(script[j + 1:j + 33])
        j += 34                       # push, key, OP_CHECKSIG / OP_CHECKSIGADD
    sigs = {pub.xonly(): sig for (pub, _), sig in scope.taproot_sigs.items()}
    chosen = set([k for k in keys if k in sigs][:threshold])
    if len(chosen) < threshold:
        raise SignatureError(f"input {i}: {len(chosen)} of {threshold} signatures")
    items = [sigs[k] if k in chosen else b"" for k in reversed(keys)]
    return Witness(items + [script, control])


def _multisig_keys(script: bytes) -> list[bytes]:
    """The keys of the script's first CHECKMULTISIG, in script order."""
    keys, i = [], 1       # skip OP_m
    while i < len(script) and script[i] == 33:
        keys.append(script[i + 1:i + 34])
        i += 34
    if not keys:
        raise SignatureError("witness script is not a multisig this coordinator finalizes")
    return keys
