"""BIP-322 simple signatures: the BIP's own test vectors, and every forgery we can think of refused.

Vectors are from bitcoin/bips bip-0322/basic-test-vectors.json and generated-test-vectors.json
(BIP-322 1.0.0). The finalized BIP prefixes simple signatures with "smp"; its first vectors predate
that and are unprefixed, so both forms appear below.
"""
from __future__ import annotations

import base64

import pytest
from embit import ec, hashes, script
from embit.networks import NETWORKS
from embit.script import Script, Witness
from embit.transaction import SIGHASH

from custody.bitcoin.bip322 import (message_hash, sign_p2wpkh, to_sign, to_spend, verify_address,
                            verify_simple)

WIF = "L3VFeEujGtevx9w18HD1fhRbCH67Az2dpCymeRE1SoPK6XQtaN2k"
ADDRESS = "bc1q9vza2e8x573nczrlzms0wvx3gsqjx7vavgkx0l"
KEY = ec.PrivateKey.from_wif(WIF)
SPK = script.address_to_scriptpubkey(ADDRESS).data
N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141

# message -> (low-R signature, high-R signature); both are valid, the BIP lists both.
SIGS = {
    b"": (
        "AkcwRAIgM2gBAQqvZX15ZiysmKmQpDrG83avLIT492QBzLnQIxYCIBaTpOaD20qRlEylyxFSeEA2ba9YOixpX8z46TSDtS40ASECx/EgAxlkQpQ9hYjgGu6EBCPMVPwVIVJqO4XCsMvViHI=",
        "AkgwRQIhAPkJ1Q4oYS0htvyuSFHLxRQpFAY56b70UvE7Dxazen0ZAiAtZfFz1S6T6I23MWI2lK/pcNTWncuyL8UL+oMdydVgzAEhAsfxIAMZZEKUPYWI4BruhAQjzFT8FSFSajuFwrDL1Yhy",
    ),
    b"Hello World": (
        "AkcwRAIgZRfIY3p7/DoVTty6YZbWS71bc5Vct9p9Fia83eRmw2QCICK/ENGfwLtptFluMGs2KsqoNSk89pO7F29zJLUx9a/sASECx/EgAxlkQpQ9hYjgGu6EBCPMVPwVIVJqO4XCsMvViHI=",
        "AkgwRQIhAOzyynlqt93lOKJr+wmmxIens//zPzl9tqIOua93wO6MAiBi5n5EyAcPScOjf1lAqIUIQtr3zKNeavYabHyR8eGhowEhAsfxIAMZZEKUPYWI4BruhAQjzFT8FSFSajuFwrDL1Yhy",
    ),
}
EMPTY_SIG = SIGS[b""][0]

P2TR_ADDRESS = "bc1pss0zhytly75awhm6x2hhvd5lnzv3vssgrf9axfheq8ldyzn88ges79fler"
P2TR_WIF = "KyrSGCFPhqZMjCe5fNTYddiLMp4tMj4gLKuJ26TsB2rvr1VJGPbt"
P2TR_SIG = "AUCJYOwOjxYAvatTAGYaVlNXBVyFuc4MwNQkOuK2tl8xhfKDONd0NjfYyNSYcRqeCp8hsAnCEPHAVEkO9h6vbQ/R"
P2TR_MESSAGE = b"No prefix fallback"

P2WSH_ADDRESS = "bc1qp0ahvfh83088w49k405szqgg4f3pptr7p2g06tdxfjcd40z4lh4q95lsz9"
P2WSH_SIG = "smpBQBHMEQCIFX9aaqPJWq2Ff2kpen5bFDTid+ehgUOpHV0LfjncXy4AiA3GNicF7aKPzdpa9PCpmaYQs3pHd+qbvvhXdxOCKCAMAFIMEUCIQD/ELXg6CNYyUQijCg96JtgvgjZb9dsl1Ctof4QAeyTcQIgVM/1AAblFl/DCt6A1gJg+T/i2qU5SQD09+chFJzolRwBSDBFAiEAlqRfSFyWNVQhvaCnmeV5tyneiCWMTcFbuujoD/pFa3wCIGnZjfQb8NolSYq9asV+ZeBSkCGHJcqnaV4JYS5MYPEGAWlTIQJ1aLEfEi/4p7wcV+XHZCBVvGGJZ7L3v+jhH+mZA8lN0yECCovfec+kIdllXpKCgA8RX/HZ2x5yHOtCSKP8/sf6pnwhAwxSng6kCgCXXSAmJOOZFdr3vdK3HzGqCFloOHgc5fM6U64="


def _witness(sig_b64: str) -> list[bytes]:
    return Witness.parse(base64.b64decode(sig_b64)).items


def _encode(items: list[bytes]) -> str:
    return base64.b64encode(Witness(items).serialize()).decode()


def _der_int(x: int) -> bytes:
    b = x.to_bytes((x.bit_length() + 7) // 8, "big")
    return b"\x00" + b if b[0] & 0x80 else b


def _der(r: int, s: int) -> bytes:
    body = b"\x02" + bytes([len(_der_int(r))]) + _der_int(r) + b"\x02" + bytes([len(_der_int(s))]) + _der_int(s)
    return b"\x30" + bytes([len(body)]) + body


def _r_s(der: bytes) -> tuple[int, int]:
    rlen = der[3]
    return int.from_bytes(der[4:4 + rlen], "big"), int.from_bytes(der[6 + rlen:], "big")


# --- the BIP's vectors ------------------------------------------------------------------------

@pytest.mark.parametrize("message, expected", [
    (b"", "c90c269c4f8fcbe6880f72a721ddfbf1914268a794cbb21cfafee13770ae19f1"),
    (b"Hello World", "f0eb03b1a75ac6d9847f55c624a99169b5dccba2a31f5b23bea77ba270de0a7a"),
    ("UTF-8 support: öäüéàè 测试文本 😄".encode(), "43936b237ea38c7794eb5d755e0d220b6db92ebfc5c8f482759d22b1286376d7"),
])
def test_message_hash(message, expected):
    assert message_hash(message).hex() == expected


@pytest.mark.parametrize("message, spend_txid, sign_txid", [
    (b"", "c5680aa69bb8d860bf82d4e9cd3504b55dde018de765a91bb566283c545a99a7",
     "1e9654e951a5ba44c8604c4de6c67fd78a27e81dcadcfe1edf638ba3aaebaed6"),
    (b"Hello World", "b79d196740ad5217771c1098fc4a4b51e0535c32236c71f1ea4d61a2d603352b",
     "88737ae86f2077145f93cc4b153ae9a1cb8d56afa511988c149c5c8c9d93bddf"),
    ("UTF-8 support: öäüéàè 测试文本 😄".encode(), "c8f4f525fe8afb1bc09b44175bd2096f079c98425e8a1be676b712add1fb62f0",
     "8f488e06b89eafd019ec528109eafaf7f1d1811fd617aa1eeb9658f1c1be6586"),
])
def test_transaction_hashes(message, spend_txid, sign_txid):
    spend = to_spend(SPK, message)
    assert spend.txid().hex() == spend_txid
    assert to_sign(spend).txid().hex() == sign_txid


def test_vector_key_is_the_vector_address():
    assert script.p2wpkh(KEY.get_public_key()).address() == ADDRESS


@pytest.mark.parametrize("message", list(SIGS))
def test_p2wpkh_vectors_verify(message):
    for sig in SIGS[message]:
        assert verify_simple(SPK, message, sig)
        assert verify_simple(SPK, message, "smp" + sig)
        assert verify_address(ADDRESS, message, sig, "main")
        assert verify_simple(Script(SPK), message, sig)


@pytest.mark.parametrize("message", list(SIGS))
def test_the_devices_own_signing_reproduces_the_bip(message):
    """The reference signer signs with its own implementation (it stands apart from the coordinator's)."""
    from custody_signer import bip322 as device
    assert device.message_hash(message) == message_hash(message)
    assert device.to_sign(device.to_spend(SPK, message)).txid() == to_sign(to_spend(SPK, message)).txid()
    assert device.sign_p2wpkh(KEY, message) == SIGS[message][0]


@pytest.mark.parametrize("message", list(SIGS))
def test_signing_reproduces_the_bip(message):
    # The BIP does not say how its nonces were made, but its first signature of each pair is
    # exactly what RFC 6979 plus Bitcoin Core's low-R grinding gives, and so what embit gives.
    ours = sign_p2wpkh(KEY, message)
    assert ours == SIGS[message][0]
    assert sign_p2wpkh(KEY, message) == ours
    assert sign_p2wpkh(KEY, message, prefixed=True) == "smp" + ours


def test_generated_p2wpkh_vector():
    # Made by btcd without low-R grinding, so ours differs in bytes; both verify.
    message = b"2V6TUTMSH4VQ3Z7WZWKYD7DFNH"
    address = "bc1qqthe0hz8klx90e7stf6shclhsvqd5ly96pn53v"
    theirs = "smpAkgwRQIhALC6hdfxNy1n45d7UXSskRBdfZW0Al259E1kDMpipdYkAiAJPfZqb+WurZuf1apU5xeE6Igui9dvt5tihQLDvxlY1AEhAqbnruyo677ktQjio7XOchO3w51Dh9AbRVngha5jtNfT"
    key = ec.PrivateKey.from_wif("KySmn2yeCukjHXnSu3M6vX7tNok4weu1FKbNEuVvm2b3ZidKhB4L")
    assert verify_address(address, message, theirs, "main")
    ours = sign_p2wpkh(key, message, prefixed=True)
    assert ours != theirs
    assert verify_address(address, message, ours, "main")


@pytest.mark.parametrize("address, message, sig", [
    (P2TR_ADDRESS, P2TR_MESSAGE, P2TR_SIG),
    ("bc1pcquvhrqv0q68t4m0hfq6tpn006qrskyc7yrqnp2uyrf2emg3wynsdjyk38", b"PURVOQ544B6HUATVBJZN5EZJUU",
     "smpAUB6B2Rbupzua8LTQIF06516wzl+cwKy1be8RgoiW0riyXdKwe6GTz/5Hnb37m67pJwIKCh+D5jDueG6KpvYpmu8"),
])
def test_p2tr_vectors_verify(address, message, sig):
    assert verify_address(address, message, sig, "main")
    assert not verify_address(address, message + b"!", sig, "main")


def test_p2wsh_is_refused_not_checked():
    # A valid 3-of-3 P2WSH vector: we do not evaluate scripts, so we must not say yes.
    message = b"This will be a p2wsh 3-of-3 multisig BIP 322 signed message"
    assert not verify_address(P2WSH_ADDRESS, message, P2WSH_SIG, "main")


# --- P2TR sighash handling --------------------------------------------------------------------

def _p2tr_signed(sighash_byte: int, sign_with: int) -> tuple[bytes, str]:
    tweaked = ec.PrivateKey.from_wif(P2TR_WIF).taproot_tweak()
    spk = script.address_to_scriptpubkey(P2TR_ADDRESS)
    assert tweaked.xonly() == spk.data[2:]
    digest = to_sign(to_spend(spk.data, P2TR_MESSAGE)).sighash_taproot(0, [spk], [0], sighash=sign_with)
    sig = tweaked.schnorr_sign(digest).serialize() + bytes([sighash_byte])
    return spk.data, _encode([sig])


def test_p2tr_sighash_all_is_accepted():
    spk, sig = _p2tr_signed(SIGHASH.ALL, SIGHASH.ALL)
    assert verify_simple(spk, P2TR_MESSAGE, sig)


@pytest.mark.parametrize("byte, signed", [
    (SIGHASH.DEFAULT, SIGHASH.DEFAULT),  # explicit 0x00 is invalid under BIP-341
    (SIGHASH.NONE, SIGHASH.NONE),
    (SIGHASH.ALL | SIGHASH.ANYONECANPAY, SIGHASH.ALL | SIGHASH.ANYONECANPAY),
    # A signature over the ALL digest relabelled: the byte is part of what BIP-341 signs.
    (SIGHASH.DEFAULT, SIGHASH.ALL),
    (SIGHASH.NONE, SIGHASH.ALL),
])
def test_p2tr_other_sighash_refused(byte, signed):
    spk, sig = _p2tr_signed(byte, signed)
    assert not verify_simple(spk, P2TR_MESSAGE, sig)


def test_p2tr_annex_or_script_path_refused():
    items = _witness(P2TR_SIG)
    spk = script.address_to_scriptpubkey(P2TR_ADDRESS).data
    assert not verify_simple(spk, P2TR_MESSAGE, _encode(items + [b"\x50"]))


# --- attacks on P2WPKH ------------------------------------------------------------------------

def test_signature_for_another_message():
    assert not verify_simple(SPK, b"Hello World", EMPTY_SIG)
    assert not verify_simple(SPK, b"Wrong message that was not signed", EMPTY_SIG)


def test_signature_for_another_address():
    other = script.p2wpkh(ec.PrivateKey(b"\x01" * 32).get_public_key()).data
    assert not verify_simple(other, b"", EMPTY_SIG)
    assert not verify_address(P2WSH_ADDRESS, b"", EMPTY_SIG, "main")
    # Same key hash in a P2SH or P2PKH script: not the address that was signed for.
    assert not verify_simple(b"\xa9\x14" + SPK[2:] + b"\x87", b"", EMPTY_SIG)
    assert not verify_simple(b"\x76\xa9\x14" + SPK[2:] + b"\x88\xac", b"", EMPTY_SIG)


def test_address_on_another_network():
    testnet = script.p2wpkh(KEY.get_public_key()).address(NETWORKS["test"])
    assert not verify_address(ADDRESS, b"", EMPTY_SIG, "test")
    assert not verify_address(testnet, b"", EMPTY_SIG, "main")
    assert verify_address(testnet, b"", EMPTY_SIG, "test")
    assert not verify_address(ADDRESS, b"", EMPTY_SIG, "no-such-network")


def test_every_flipped_byte_fails():
    raw = base64.b64decode(EMPTY_SIG)
    for i in range(len(raw)):
        for mask in (0x01, 0x80):
            bad = bytearray(raw)
            bad[i] ^= mask
            assert not verify_simple(SPK, b"", base64.b64encode(bytes(bad)).decode()), (i, mask)


@pytest.mark.parametrize("sig", [
    "", "smp", "not-valid-base64!!!", "fooAA==", "smpAA==", "AA==", "====", "A", "smp====",
    EMPTY_SIG[:-4], EMPTY_SIG + "AA==", EMPTY_SIG.replace("=", ""), " " + EMPTY_SIG, "ful" + EMPTY_SIG,
    "fulAUDZwFXUp+adN+/UZj5dVrGAbB3zKs1Vcalz5fCF9srxS63eSWNGvH1NYbrBkPt1BJDUyWUz9zgUxfc63/QheT6M",
])
def test_garbage_is_false(sig):
    assert verify_simple(SPK, b"", sig) is False
    assert verify_address(ADDRESS, b"", sig, "main") is False


@pytest.mark.parametrize("address", ["", "bc1", "1111111111111111111114oLvT2", "BC1Q9VZA2E8X573NCZRLZMS0WVX3GSQJX7VAVGKX0X", None])
def test_garbage_address_is_false(address):
    assert verify_address(address, b"", EMPTY_SIG, "main") is False


def test_wrong_witness_shapes():
    sig, pub = _witness(EMPTY_SIG)
    for items in ([], [sig], [pub], [sig, pub, b""], [pub, sig], [b"", pub], [sig, b""],
                  [sig, ec.PublicKey.parse(pub).sec()[:-1]]):
        assert not verify_simple(SPK, b"", _encode(items))
    raw = base64.b64decode(EMPTY_SIG)
    # Trailing bytes, a truncated item, and a non-minimal length prefix.
    for bad in (raw + b"\x00", raw[:-1], raw[:1] + b"\xfd\x47\x00" + raw[2:]):
        assert not verify_simple(SPK, b"", base64.b64encode(bad).decode())


def _p2wpkh_witness(key: ec.PrivateKey, spk: bytes, message: bytes) -> str:
    """Sign the to_sign sighash for spk with key, whatever key that is."""
    code = Script(b"\x76\xa9\x14" + spk[2:] + b"\x88\xac")
    digest = to_sign(to_spend(spk, message)).sighash_segwit(0, code, 0, SIGHASH.ALL)
    return _encode([key.sign(digest).serialize() + b"\x01", key.sec()])


def test_signature_by_another_key_refused():
    # A correct signature over this address's sighash, but by a key the address does not commit to.
    intruder = ec.PrivateKey(b"\x02" * 32)
    assert not verify_simple(SPK, b"", _p2wpkh_witness(intruder, SPK, b""))
    assert verify_simple(SPK, b"", _p2wpkh_witness(KEY, SPK, b""))


def test_uncompressed_key_refused():
    # Consensus would accept this (WITNESS_PUBKEYTYPE is only policy, as in Bitcoin Core's
    # standard flags); we refuse it, since no wallet of ours makes such an address.
    key = ec.PrivateKey(KEY.secret, compressed=False)
    spk = b"\x00\x14" + hashes.hash160(key.sec())
    assert len(key.sec()) == 65
    assert not verify_simple(spk, b"", _p2wpkh_witness(key, spk, b""))
    with pytest.raises(ValueError):
        sign_p2wpkh(key, b"")


@pytest.mark.parametrize("sighash", [SIGHASH.NONE, SIGHASH.SINGLE, SIGHASH.ALL | SIGHASH.ANYONECANPAY, 0x00])
def test_non_all_sighash_refused(sighash):
    # A genuinely valid signature under that sighash type, so only the SIGHASH_ALL rule refuses it.
    digest = to_sign(to_spend(SPK, b"")).sighash_segwit(0, script.p2pkh_from_p2wpkh(Script(SPK)), 0, sighash)
    sig = KEY.sign(digest)
    assert KEY.get_public_key().verify(sig, digest)
    assert not verify_simple(SPK, b"", _encode([sig.serialize() + bytes([sighash]), KEY.sec()]))


def test_relabelled_sighash_byte_refused():
    sig, pub = _witness(EMPTY_SIG)
    for byte in (0x00, 0x02, 0x03, 0x81):
        assert not verify_simple(SPK, b"", _encode([sig[:-1] + bytes([byte]), pub]))


@pytest.mark.parametrize("message", list(SIGS))
def test_high_s_twin_refused(message):
    sig, pub = _witness(SIGS[message][0])
    r, s = _r_s(sig[:-1])
    assert s <= N // 2
    high = _der(r, N - s)
    # The twin is canonical DER and mathematically valid; only the low-S rule refuses it.
    assert ec.Signature.parse(high).serialize() == high
    assert _r_s(high) == (r, N - s)
    assert not verify_simple(SPK, message, _encode([high + b"\x01", pub]))
    assert verify_simple(SPK, message, _encode([_der(r, s) + b"\x01", pub]))


def test_non_canonical_der_refused():
    sig, pub = _witness(EMPTY_SIG)
    r, s = _r_s(sig[:-1])
    rb = b"\x00" + _der_int(r)  # a needless leading zero: BER, not strict DER
    body = b"\x02" + bytes([len(rb)]) + rb + b"\x02" + bytes([len(_der_int(s))]) + _der_int(s)
    padded = b"\x30" + bytes([len(body)]) + body
    assert not verify_simple(SPK, b"", _encode([padded + b"\x01", pub]))


def test_str_message_is_a_caller_error():
    with pytest.raises(TypeError):
        verify_simple(SPK, "", EMPTY_SIG)
    with pytest.raises(TypeError):
        verify_address(ADDRESS, "", EMPTY_SIG, "main")
