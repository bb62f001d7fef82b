"""Descriptor handling of the embedded node (regtest/descriptors.py): BIP-380 checksums, the scripts
of BIP-381..389's test vectors, Bitcoin Core's own scantxoutset vectors (the scripts it finds and
the descriptors it reports), ranges and multipath, and the node's scantxoutset over a multisig."""
from __future__ import annotations

import random
import time

import pytest
from embit import bip32, ec
from embit.descriptor import Descriptor
from embit.descriptor.checksum import checksum as embit_checksum
from embit.networks import NETWORKS
from embit.script import p2pkh, p2sh, p2tr, p2wpkh, p2wsh, Script

from regtest import descriptors as D

REGTEST = NETWORKS["regtest"]


def tpubs(n: int = 3, seed: bytes = bytes(range(32))) -> list[str]:
    """`[fingerprint/48h/1h/ih/2h]tpub` cosigner keys from a fixed seed."""
    root = bip32.HDKey.from_seed(seed, version=REGTEST["xprv"])
    fp = root.my_fingerprint.hex()
    return [f"[{fp}/48h/1h/{i}h/2h]" + root.derive(f"m/48h/1h/{i}h/2h").to_public().to_base58(REGTEST["xpub"])
            for i in range(n)]


def expand(desc, rng=None, network="regtest") -> dict[bytes, str]:
    item = desc if rng is None else {"desc": desc, "range": rng}
    return D.expand(D.parse_scan_objects([item], network=network)[0], network)


def spk(address: str) -> bytes:
    from embit.script import address_to_scriptpubkey
    return address_to_scriptpubkey(address).data


# -- checksums --------------------------------------------------------------------------------
def test_bip380_checksum_vectors():
    assert D.descriptor_checksum("raw(deadbeef)") == "89f8spxm"
    assert D.check_and_strip_checksum("raw(deadbeef)#89f8spxm", require=True) == "raw(deadbeef)"
    assert D.check_and_strip_checksum("raw(deadbeef)") == "raw(deadbeef)"
    cases = [
        ("raw(deadbeef)", "Missing checksum"),
        ("raw(deadbeef)#", "Expected 8 character checksum, not 0 characters"),
        ("raw(deadbeef)#89f8spxmx", "Expected 8 character checksum, not 9 characters"),
        ("raw(deadbeef)#89f8spx", "Expected 8 character checksum, not 7 characters"),
        ("raw(deedbeef)#89f8spxm", "Provided checksum '89f8spxm' does not match computed checksum 'xj8ljs75'"),
        ("raw(deedbeef)##9f8spxm", "Multiple '#' symbols"),
        ("raw(Ü)#00000000", "Invalid characters in payload"),
    ]
    for desc, message in cases:
        with pytest.raises(D.DescriptorError) as e:
            D.check_and_strip_checksum(desc, require=True)
        assert str(e.value) == message


@pytest.mark.parametrize("checksummed", [
    # reported by Bitcoin Core (rpc_scantxoutset.py, getdescriptorinfo)
    "pkh([0c5f9a1e/0h/0h/0]026dbd8b2315f296d36e6b6920b1579ca75569464875c7ebe869b536a7d9503c8c)#rthll0rg",
    "pkh([0c5f9a1e/1/1/1500]03832901c250025da2aebae2bfb38d5c703a57ab66ad477f9c578bfbcd78abca6f)#vchwd07g",
    "wpkh([e18dae20/84h/1h/0h]tpubDC4ujMbsd9REzpGk3gnTjkrfJFw1NnvCpx6QBbLj3CHBzcLmVzssTVP8meRAM1WW4pZnK6SCCPGy"
    "zi9eMfzSXoeFMNprqtgxG71VRXTmetu/0/*)#3658f8sn",
])
def test_checksums_of_descriptors_core_wrote(checksummed):
    body, checksum = checksummed.split("#")
    assert D.descriptor_checksum(body) == checksum
    assert D.add_checksum(body) == checksummed


def test_checksum_agrees_with_bip380_reference_for_every_length():
    """The table-driven checksum against embit's transcription of the BIP's loop, over every
    remainder of a 3-character group and every character of the set."""
    charset = "0123456789()[],'/*abcdefgh@:$%{}IJKLMNOPQRSTUVWXYZ&+-.;<=>?!^_|~ijklmnopqrstuvwxyzABCDEFGH`#\"\\ "
    rng = random.Random(380)
    for length in list(range(0, 40)) + [300, 1001]:
        for _ in range(20):
            desc = "".join(rng.choice(charset) for _ in range(length))
            assert D.descriptor_checksum(desc) == embit_checksum(desc)


# -- BIP-381..387 vectors: descriptor -> scripts (mainnet keys, so network="main") ------------
XPRV_A = "xprvA1RpRA33e1JQ7ifknakTFpgNXPmW2YvmhqLQYMmrj4xJXXWYpDPS3xz7iAxn8L39njGVyuoseXzU6rcxFLJ8HFsTjSyQbLYnMpCqE2VbFWc"
XPUB_A = "xpub6ERApfZwUNrhLCkDtcHTcxd75RbzS1ed54G1LkBUHQVHQKqhMkhgbmJbZRkrgZw4koxb5JaHWkY4ALHY2grBGRjaDMzQLcgJvLJuZZvRcEL"
XPUB_B = "xpub68NZiKmJWnxxS6aaHmn81bvJeTESw724CRDs6HbuccFQN9Ku14VQrADWgqbhhTHBaohPX4CjNLf9fq9MYo6oDaPPLPxSb7gwQN3ih19Zm4Y"
XPRV_B = "xprv9uPDJpEQgRQfDcW7BkF7eTya6RPxXeJCqCJGHuCJ4GiRVLzkTXBAJMu2qaMWPrS7AANYqdq6vcBcBUdJCVVFceUvJFjaPdGZ2y9WACViL4L"
XPRV_C = "xprv9s21ZrQH143K3QTDL4LXw2F7HEK3wJUD2nW2nRk4stbPy6cq3jPPqjiChkVvvNKmPGJxWUtg6LnF5kejMRNNU3TGtRBeJgk33yuGBxrMPHi"
XPRV_D = "xprv9s21ZrQH143K31xYSDQpPDxsXRTUcvj2iNHm5NUtrGiGG5e2DtALGdso3pGz6ssrdK4PFmM8NSpSBHNqPqm55Qn3LqFtT2emdEXVYsCzC2U"
XPRV_E = "xprv9vHkqa6EV4sPZHYqZznhT2NPtPCjKuDKGY38FBWLvgaDx45zo9WQRUT3dKYnjwih2yJD9mkrocEZXo1ex8G81dwSM1fwqWpWkeS3v86pgKt"
XPUB_E = "xpub69H7F5d8KSRgmmdJg2KhpAK8SR3DjMwAdkxj3ZuxV27CprR9LgpeyGmXUbC6wb7ERfvrnKZjXoUmmDznezpbZb7ap6r1D3tgFxHmwMkQTPH"
XPRV_F = "xprvA2JDeKCSNNZky6uBCviVfJSKyQ1mDYahRjijr5idH2WwLsEd4Hsb2Tyh8RfQMuPh7f7RtyzTtdrbdqqsunu5Mm3wDvUAKRHSC34sJ7in334"
WIF = "L4rK1yDtCWekvXuE6oXD9jCYfFNV2cWRpVuPLBcCU2z8TrisoyY1"
WIF_UNCOMPRESSED = "5KYZdUEo39z3FPrtuX2QbbwGnNP5zTd7yyr2SC1j299sBCnWjss"
PUB = "03a34b99f22c790c4e36b2b3c2c35a36db06226e41c692fc82b8b56ac1c540c5bd"
PUB_UNCOMPRESSED = ("04a34b99f22c790c4e36b2b3c2c35a36db06226e41c692fc82b8b56ac1c540c5bd5b8dec5235a0fa8722476c7709"
                    "c02559e3aa73aa03918ba2d492eea75abea235")
XONLY = "a34b99f22c790c4e36b2b3c2c35a36db06226e41c692fc82b8b56ac1c540c5bd"
BARE_1_OF_2 = ("512103a34b99f22c790c4e36b2b3c2c35a36db06226e41c692fc82b8b56ac1c540c5bd4104a34b99f22c790c4e36b2b3c2c35a"
               "36db06226e41c692fc82b8b56ac1c540c5bd5b8dec5235a0fa8722476c7709c02559e3aa73aa03918ba2d492eea75abea23552ae")

BIP_VECTORS = [
    (f"pk({WIF})", ["2103a34b99f22c790c4e36b2b3c2c35a36db06226e41c692fc82b8b56ac1c540c5bdac"]),
    (f"pk({PUB_UNCOMPRESSED})", ["41" + PUB_UNCOMPRESSED + "ac"]),
    (f"pkh([deadbeef/1/2'/3/4']{WIF})", ["76a9149a1c78a507689f6f54b847ad1cef1e614ee23f1e88ac"]),
    (f"pkh([deadbeef/1/2h/3/4h]{PUB})", ["76a9149a1c78a507689f6f54b847ad1cef1e614ee23f1e88ac"]),
    (f"pkh({WIF_UNCOMPRESSED})", ["76a914b5bd079c4d57cc7fc28ecf8213a6b791625b818388ac"]),
    (f"sh(pk({PUB}))", ["a9141857af51a5e516552b3086430fd8ce55f7c1a52487"]),
    (f"sh(pkh({WIF}))", ["a9141a31ad23bf49c247dd531a623c2ef57da3c400c587"]),
    (f"pkh({XPRV_D}/2147483647'/0)", ["76a914ebdc90806a9c4356c1c88e42216611e1cb4c1c1788ac"]),
    ("pkh([bd16bee5/2147483647h]xpub69H7F5dQzmVd3vPuLKtcXJziMEQByuDidnX3YdwgtNsecY5HRGtAAQC5mXTt4dsv9RzyjgDjAQs9VGV"
     "V6ydYCHnprc9vvaA5YtqWyL6hyds/0)", ["76a914ebdc90806a9c4356c1c88e42216611e1cb4c1c1788ac"]),
    (f"pk({XPRV_B}/0)", ["210379e45b3cf75f9c5f9befd8e9506fb962f6a9d185ac87001ec44a8d3df8d4a9e3ac"]),
    (f"pk({XPUB_B}/0)", ["210379e45b3cf75f9c5f9befd8e9506fb962f6a9d185ac87001ec44a8d3df8d4a9e3ac"]),
    (f"wpkh({PUB})", ["00149a1c78a507689f6f54b847ad1cef1e614ee23f1e"]),
    (f"wpkh([ffffffff/13']{XPRV_E}/1/2/0)", ["0014326b2249e3a25d5dc60935f044ee835d090ba859"]),
    (f"wpkh([ffffffff/13']{XPUB_E}/1/2/*)", ["0014326b2249e3a25d5dc60935f044ee835d090ba859",
                                            "0014af0bd98abc2f2cae66e36896a39ffe2d32984fb7",
                                            "00141fa798efd1cbf95cebf912c031b8a4a6e9fb9f27"]),
    (f"sh(wpkh({XPRV_C}/10/20/30/40/*'))", ["a9149a4d9901d6af519b2a23d4a2f51650fcba87ce7b87",
                                           "a914bed59fc0024fae941d6e20a3b44a109ae740129287",
                                           "a9148483aa1116eb9c05c482a72bada4b1db24af654387"]),
    (f"sh(wpkh({XPRV_C}/10/20/30/40/*h))", ["a9149a4d9901d6af519b2a23d4a2f51650fcba87ce7b87",
                                           "a914bed59fc0024fae941d6e20a3b44a109ae740129287",
                                           "a9148483aa1116eb9c05c482a72bada4b1db24af654387"]),
    (f"wsh(pkh({WIF}))", ["0020338e023079b91c58571b20e602d7805fb808c22473cbc391a41b1bd3a192e75b"]),
    (f"wsh(pk({PUB}))", ["00202e271faa2325c199d25d22e1ead982e45b64eeb4f31e73dbdf41bd4b5fec23fa"]),
    (f"sh(wsh(pkh({PUB})))", ["a914b61b92e2ca21bac1e72a3ab859a742982bea960a87"]),
    (f"multi(1,{WIF},{WIF_UNCOMPRESSED})", [BARE_1_OF_2]),
    (f"sortedmulti(1,{PUB_UNCOMPRESSED},{PUB})", [BARE_1_OF_2]),
    (f"sh(multi(2,[00000000/111'/222]{XPRV_A},{XPRV_B}/0))", ["a91445a9a622a8b0a1269944be477640eedc447bbd8487"]),
    (f"sortedmulti(2,{XPUB_A}/*,{XPUB_B}/0/0/*)", [
        "5221025d5fc65ebb8d44a5274b53bac21ff8307fec2334a32df05553459f8b1f7fe1b62102fbd47cc8034098f0e6a94c6aeee8528a"
        "bf0a2153a5d8e46d325b7284c046784652ae",
        "52210264fd4d1f5dea8ded94c61e9641309349b62f27fbffe807291f664e286bfbe6472103f4ece6dfccfa37b211eb3d0af4d0c61d"
        "ba9ef698622dc17eecdf764beeb005a652ae",
        "5221022ccabda84c30bad578b13c89eb3b9544ce149787e5b538175b1d1ba259cbb83321024d902e1a2fc7a8755ab5b694c575fce7"
        "42c48d9ff192e63df5193e4c7afe1f9c52ae"]),
    (f"wsh(multi(2,{XPRV_D}/2147483647'/0,{XPRV_E}/1/2/*,{XPRV_C}/10/20/30/40/*'))", [
        "0020b92623201f3bb7c3771d45b2ad1d0351ea8fbf8cfe0a0e570264e1075fa1948f",
        "002036a08bbe4923af41cf4316817c93b8d37e2f635dd25cfff06bd50df6ae7ea203",
        "0020a96e7ab4607ca6b261bfe3245ffda9c746b28d3f59e83d34820ec0e2b36c139c"]),
    (f"combo({WIF})", ["2103a34b99f22c790c4e36b2b3c2c35a36db06226e41c692fc82b8b56ac1c540c5bdac",
                       "76a9149a1c78a507689f6f54b847ad1cef1e614ee23f1e88ac",
                       "00149a1c78a507689f6f54b847ad1cef1e614ee23f1e",
                       "a91484ab21b1b2fd065d4504ff693d832434b6108d7b87"]),
    (f"combo({PUB_UNCOMPRESSED})", ["41" + PUB_UNCOMPRESSED + "ac", "76a914b5bd079c4d57cc7fc28ecf8213a6b791625b818388ac"]),
    (f"combo({XPRV_F}/*)", ["2102df12b7035bdac8e3bab862a3a83d06ea6b17b6753d52edecba9be46f5d09e076ac",
                            "76a914f90e3178ca25f2c808dc76624032d352fdbdfaf288ac",
                            "0014f90e3178ca25f2c808dc76624032d352fdbdfaf2",
                            "a91408f3ea8c68d4a7585bf9e8bda226723f70e445f087",
                            "21032869a233c9adff9a994e4966e5b821fd5bac066da6c3112488dc52383b4a98ecac",
                            "76a914a8409d1b6dfb1ed2a3e8aa5e0ef2ff26b15b75b788ac",
                            "0014a8409d1b6dfb1ed2a3e8aa5e0ef2ff26b15b75b7",
                            "a91473e39884cb71ae4e5ac9739e9225026c99763e6687"]),
    ("raw(deadbeef)", ["deadbeef"]),
    ("raw(a9149a4d9901d6af519b2a23d4a2f51650fcba87ce7b87)", ["a9149a4d9901d6af519b2a23d4a2f51650fcba87ce7b87"]),
    ("addr(3PUNyaW7M55oKWJ3kDukwk9bsKvryra15j)", ["a914eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee87"]),
    (f"tr({XONLY})", ["512077aab6e066f8a7419c5ab714c12c67d25007ed55a43cadcacb4d7a970a093f11"]),
    (f"tr({WIF})", ["512077aab6e066f8a7419c5ab714c12c67d25007ed55a43cadcacb4d7a970a093f11"]),
    (f"tr({XPRV_A}/0/*,pk({XPRV_A}/1/*))", ["512078bc707124daa551b65af74de2ec128b7525e10f374dc67b64e00ce0ab8b3e12",
                                           "512001f0a02a17808c20134b78faab80ef93ffba82261ccef0a2314f5d62b6438f11",
                                           "512021024954fcec88237a9386fce80ef2ced5f1e91b422b26c59ccfc174c8d1ad25"]),
    (f"tr({XONLY},pk(669b8afcec803a0d323e9a17f3ea8e68e8abe5a278020a929adbec52421adbd0))",
     ["512017cf18db381d836d8923b1bdb246cfcd818da1a9f0e6e7907f187f0b2f937754"]),
    (f"tr({XONLY},{{pk({XPRV_F}/0),{{{{pk({XPUB_A}),pk(02df12b7035bdac8e3bab862a3a83d06ea6b17b6753d52edecba9be46f5d09e076)}},"
     f"pk({WIF})}}}})", ["512071fff39599a7b78bc02623cbe814efebf1a404f5d8ad34ea80f213bd8943f574"]),
    (f"tr({WIF},multi_a(1,KzoAz5CanayRKex3fSLQ2BwJpN7U52gZvxMyk78nDMHuqrUxuSJy))",
     ["5120eb5bd3894327d75093891cc3a62506df7d58ec137fcd104cdd285d67816074f3"]),
    (f"tr(50929b74c1a04954b78b4b6035e97a5e078a5a0f28ec96d547bfee9ace803ac0,multi_a(2,[00000000/111'/222]{XPRV_A},"
     f"{XPRV_B}/0))", ["51202eea93581594a43c0c8423b70dc112e5651df63984d108d4fc8ccd3b63b4eafa"]),
    (f"tr(50929b74c1a04954b78b4b6035e97a5e078a5a0f28ec96d547bfee9ace803ac0,sortedmulti_a(2,{XPUB_A}/*,{XPUB_B}/0/0/*))", [
        "5120abd47468515223f58a1a18edfde709a7a2aab2b696d59ecf8c34f0ba274ef772",
        "5120fe62e7ed20705bd1d3678e072bc999acb014f07795fa02cb8f25a7aa787e8cbd",
        "51201311093750f459039adaa2a5ed23b0f7a8ae2c2ffb07c5390ea37e2fb1050b41"]),
]


@pytest.mark.parametrize("desc, scripts", BIP_VECTORS, ids=[d[:40] for d, _ in BIP_VECTORS])
def test_bip_vectors_expand_to_their_scripts(desc, scripts):
    per_index = 4 if desc.startswith("combo") and len(scripts) > 4 else len(scripts) if "*" not in desc else 1
    rng = len(scripts) // per_index - 1 if "*" in desc else None
    found = expand(desc, rng, network="main")
    assert set(found) == {bytes.fromhex(s) for s in scripts}
    # what is reported for each script is itself a descriptor of exactly that script
    for script, reported in found.items():
        assert set(expand(reported, network="main")) == {script}, reported


def test_bip389_multipath_expands_to_each_path():
    cases = {
        f"wpkh([ffffffff/13h]{XPUB_E}/<1;3>/2/*)": [f"wpkh([ffffffff/13h]{XPUB_E}/1/2/*)", f"wpkh([ffffffff/13h]{XPUB_E}/3/2/*)"],
        f"multi(2,{XPUB_A}/<1;2>/*,{XPUB_B}/<3;4>/0/*)": [f"multi(2,{XPUB_A}/1/*,{XPUB_B}/3/0/*)",
                                                       f"multi(2,{XPUB_A}/2/*,{XPUB_B}/4/0/*)"],
        f"pkh({XPRV_D}/<2147483647h;0>/0)": [f"pkh({XPRV_D}/2147483647h/0)", f"pkh({XPRV_D}/0/0)"],
        f"pk({XPUB_B}/<0;1>)": [f"pk({XPUB_B}/0)", f"pk({XPUB_B}/1)"],
    }
    for multipath, paths in cases.items():
        rng = 4 if "*" in multipath else None
        obj = D.parse_scan_objects([{"desc": multipath, "range": 4}], network="main")[0]
        assert D.expand_paths(obj, "main") == [list(expand(p, rng, network="main")) for p in paths]
        assert expand(multipath, rng, network="main") == {k: v for p in paths for k, v in expand(p, rng, "main").items()}


@pytest.mark.parametrize("desc", [
    f"pkh({XPRV_D}/<0;1>/<2;3>)",                                    # two multipath specifiers
    f"pkh([deadbeef/<0;1>]{XPUB_B}/0)",                              # multipath in the origin
    f"sh(multi(2,{XPRV_A}/<1;2;3>/0/*,{XPRV_B}/<0;1>/*))",           # lengths differ
    f"wpkh({XPUB_B}/<>/*)", f"wpkh({XPUB_B}/0>/*)", f"wpkh({XPUB_B}/<0/*)", f"wpkh({XPUB_B}/<0;>/*)",
    f"wpkh({WIF_UNCOMPRESSED})", f"sh(wpkh({PUB_UNCOMPRESSED}))", f"wsh(pk({PUB_UNCOMPRESSED}))", f"tr({PUB_UNCOMPRESSED})",
    f"wsh(wpkh({PUB}))", f"sh(sh(pkh({PUB})))", f"wsh(wsh(pkh({PUB})))", f"combo(pkh({PUB}))", f"sh(combo({PUB}))",
    f"multi(0,{PUB})", f"multi(3,{WIF},{WIF_UNCOMPRESSED})", f"multi(a,{PUB})", "sh(raw(deadbeef))",
    f"multi_a(1,{PUB})", f"wsh(multi_a(1,{PUB}))", f"tr({XONLY},multi_a(0,{PUB}))", f"tr({XONLY},multi_a(2,{PUB}))",
    f"[deadbeef/0h/0h/0h/*]{PUB}", f"pkh([deadbef/0h]{PUB})", f"pkh([deadbeef/0f]{PUB})", f"pkh({WIF}/0)",
    f"pkh({XPUB_B}/*/0)", "raw(asdf)", "raw()", "addr(asdf)", "", "foo(bar)",
])
def test_invalid_descriptors_are_refused(desc):
    with pytest.raises(D.DescriptorError) as e:
        expand(desc, network="main")
    assert e.value.code == D.RPC_INVALID_ADDRESS_OR_KEY


def test_core_error_messages():
    cases = {
        "": "'' is not a valid descriptor function",
        "cow(00)": "'cow(00)' is not a valid descriptor function",
        "raw(xyz)": "Raw script is not hex",
        "addr(asdf)": "Address is not valid",
        f"multi_a(1,{PUB})": "Can only have multi_a/sortedmulti_a inside tr()",
        f"wpkh({PUB_UNCOMPRESSED})": "wpkh(): Uncompressed keys are not allowed",
        f"multi(1,{PUB},{PUB},{PUB},{PUB})": "Cannot have 4 pubkeys in bare multisig; only at most 3 pubkeys",
        f"wpkh({XPUB_B}/0/*)": f"wpkh(): key '{XPUB_B}' is not valid",                  # mainnet key on regtest
        f"sh(wsh(multi(1,{WIF})))": f"Multi: key '{WIF}' is not valid",
    }
    for desc, message in cases.items():
        with pytest.raises(D.DescriptorError) as e:
            expand(desc)
        assert str(e.value) == message
    tpub = tpubs(1)[0]
    with pytest.raises(D.DescriptorError, match="Cannot derive script without private keys"):
        expand(f"wpkh({tpub}/0h/*)")
    with pytest.raises(D.DescriptorError, match="Cannot derive script without private keys"):
        expand(f"wpkh({tpub}/0/*h)")
    big = ",".join([PUB] * 16)
    with pytest.raises(D.DescriptorError, match="P2SH script is too large, 547 bytes is larger than 520 bytes"):
        expand(f"sh(multi(1,{big}))", network="main")


# -- Bitcoin Core's rpc_scantxoutset.py: what it finds, and the descriptors it reports --------
TPRV = "tprv8ZgxMBicQKsPd7Uf69XL1XwhmjHopUGep8GuEiJDZmbQz6o58LninorQAfcKZWARbtRtfnLcJ5MQ2AtHcQJCCRUcMRvmDUjyEmNUWwx8UbK"
TPUB = "tpubD6NzVbkrYhZ4WaWSyoBvQwbpLkojyoTZPRsgXELWz3Popb3qkjcJyJUGLnL4qHHoQvao8ESaAstxYSnhyswJ76uZPStJRJCTKvosUCJZL5B"
CORE_ADDRESSES = {   # child keys of TPRV that Core's test pays to (P2PKH)
    "0h/0h/0h": "mkHV1C6JLheLoUSSZYk7x3FH5tnx9bu7yc", "0h/0h/1h": "mipUSRmJAj2KrjSvsPQtnP8ynUon7FhpCR",
    "0h/0h/1500h": "n37dAGe6Mq1HGM9t4b6rFEEsDGq7Fcgfqg", "0h/0h/0": "mqS9Rpg8nNLAzxFExsgFLCnzHBsoQ3PRM6",
    "0h/0h/1": "mnTg5gVWr3rbhHaKjJv7EEEc76ZqHgSj4S", "0h/0h/1500": "mketCd6B9U9Uee1iCsppDJJBHfvi6U6ukC",
    "1/1/0h": "mj8zFzrbBcdaWXowCQ1oPZ4qioBVzLzAp7", "1/1/1h": "mfnKpKQEftniaoE1iXuMMePQU3PUpcNisA",
    "1/1/1500h": "mou6cB1kaP1nNJM1sryW6YRwnd4shTbXYQ", "1/1/0": "mtfUoUax9L4tzXARpw1oTGxWyoogp52KhJ",
    "1/1/1": "mxp7w7j8S1Aq6L8StS2PqVvtt4HGxXEvdy", "1/1/1500": "mpQ8rokAhp1TAtJQR6F6TaUmjAWkAWYYBq",
}


def found(desc, rng=None) -> set[str]:
    scripts = expand(desc, rng)
    return {path for path, address in CORE_ADDRESSES.items() if spk(address) in scripts}


def test_core_scantxoutset_vectors_find_the_same_coins():
    assert found(f"combo({TPRV}/0'/0h/0h)") == {"0h/0h/0h"}
    assert found(f"combo({TPRV}/0h/0'/1500')") == {"0h/0h/1500h"}
    assert found(f"combo({TPRV}/1/1/1500h)") == {"1/1/1500h"}
    assert found(f"combo({TPRV}/0'/0h/*h)", 1499) == {"0h/0h/0h", "0h/0h/1h"}
    assert found(f"combo({TPRV}/0'/0'/*h)", 1500) == {"0h/0h/0h", "0h/0h/1h", "0h/0h/1500h"}
    assert found(f"combo({TPRV}/0h/0'/*)", 1499) == {"0h/0h/0", "0h/0h/1"}
    assert found(f"combo({TPRV}/1/1/*')", 1500) == {"1/1/0h", "1/1/1h", "1/1/1500h"}
    assert found(f"combo({TPUB}/1/1/*)", 1499) == {"1/1/0", "1/1/1"}
    assert found(f"combo({TPUB}/1/1/*)", [1500, 1500]) == {"1/1/1500"}
    assert found(f"combo([abcdef88/1/2'/3/4h]{TPUB}/1/1/1)") == {"1/1/1"}
    assert found(f"pkh({TPUB}/1/1/<0;1>)") == {"1/1/0", "1/1/1"}
    assert found(f"combo({TPUB}/1/1/*)") == {"1/1/0", "1/1/1"}          # default range: 0..1000


def test_core_scantxoutset_reported_descriptors():
    def reported(desc, rng=None):
        return sorted(d for d in expand(desc, rng).values() if d.startswith("pkh("))
    assert reported(f"combo({TPRV}/0h/0h/*)", 1) == [
        "pkh([0c5f9a1e/0h/0h/0]026dbd8b2315f296d36e6b6920b1579ca75569464875c7ebe869b536a7d9503c8c)#rthll0rg",
        "pkh([0c5f9a1e/0h/0h/1]033e6f25d76c00bedb3a8993c7d5739ee806397f0529b1b31dda31ef890f19a60c)#mcjajulr"]
    assert reported(f"combo({TPRV}/1/1/0)") == [
        "pkh([0c5f9a1e/1/1/0]03e1c5b6e650966971d7e71ef2674f80222752740fc1dfd63bbbd220d2da9bd0fb)#cxmct4w8"]
    scripts = expand(f"combo({TPUB}/1/1/*)", 1500)
    assert scripts[spk(CORE_ADDRESSES["1/1/1500"])] == \
        "pkh([0c5f9a1e/1/1/1500]03832901c250025da2aebae2bfb38d5c703a57ab66ad477f9c578bfbcd78abca6f)#vchwd07g"
    # an explicit origin replaces the key's own fingerprint and goes before its path
    scripts = expand(f"combo([abcdef88/1/2'/3/4h]{TPUB}/1/1/1)")
    assert sorted(d.split("(")[0] for d in scripts.values()) == ["pk", "pkh", "sh", "wpkh"]
    assert all("[abcdef88/1/2h/3/4h/1/1/1]030d820fc9e8" in d for d in scripts.values())


def test_ranges_as_core_parses_them():
    xp = tpubs(1)[0]
    ranged = f"wpkh({xp}/0/*)"
    assert D.parse_scan_objects([ranged])[0].range == (0, 1000)           # Core's default: 1001 indexes
    assert len(D.expand(D.parse_scan_objects([ranged])[0])) == 1001
    assert D.parse_scan_objects([{"desc": ranged, "range": 5}])[0].range == (0, 5)
    assert D.parse_scan_objects([{"desc": ranged, "range": [3, 7]}])[0].range == (3, 7)
    assert D.parse_scan_objects([{"desc": ranged, "range": [0, 999_999]}])[0].range == (0, 999_999)
    assert D.parse_scan_objects([f"wpkh({xp}/0/1)"])[0].range is None
    assert D.parse_scan_objects([{"desc": f"wpkh({xp}/0/1)", "range": 7}])[0].range is None   # ignored
    obj = D.parse_scan_objects([D.add_checksum(ranged)])[0]
    assert obj.desc == ranged and obj.descriptor == D.add_checksum(ranged)
    errors = {   # rpc_scantxoutset.py; the range is checked before the descriptor, so "desc" is fine
        -1: "End of range is too high",
        (-1, 10): "Range should be greater or equal than 0",
        ((2 << 31 + 1) - 1000000, (2 << 31 + 1)): "End of range is too high",
        (2, 1): "Range specified as [begin,end] must not have begin after end",
        (0, 1000001): "Range is too large",
        "5": "Range must be specified as end or as [begin,end]",
        (1, 2, 3): "Range must be specified as end or as [begin,end]",
    }
    for rng, message in errors.items():
        rng = list(rng) if isinstance(rng, tuple) else rng
        with pytest.raises(D.DescriptorError) as e:
            D.parse_scan_objects([{"desc": "desc", "range": rng}])
        assert (str(e.value), e.value.code) == (message, D.RPC_INVALID_PARAMETER)
    with pytest.raises(D.DescriptorError, match="Descriptor needs to be provided in scan object"):
        D.parse_scan_objects([{"range": 5}])
    with pytest.raises(D.DescriptorError, match="Scan object needs to be either a string or an object"):
        D.parse_scan_objects([5])


# -- regtest keys: multisig, single key, taproot ----------------------------------------------
def test_multipath_sortedmulti_matches_embit_on_both_branches():
    keys = tpubs()
    body = "wsh(sortedmulti(2,{}/<0;1>/*,{}/<0;1>/*,{}/<0;1>/*))".format(*keys)
    scripts = expand(body, [0, 49])
    assert len(scripts) == 100                                          # distinct on both branches
    reference = Descriptor.from_string(body)
    for branch in (0, 1):
        for index in (0, 1, 17, 49):
            derived = reference.derive(index, branch_index=branch)
            script = derived.script_pubkey().data
            reported = scripts[script]
            # Core reports multi() with the keys in script (sorted) order, each with its full origin
            body_reported, checksum = reported.split("#")
            assert checksum == D.descriptor_checksum(body_reported)
            assert body_reported.startswith("wsh(multi(2,[")
            pubs = [part.split("]")[1] for part in body_reported[len("wsh(multi(2,"):-2].split(",")]
            assert pubs == sorted(k.sec().hex() for k in derived.keys)
            assert body_reported.count(f"/{branch}/{index}]") == 3
            assert set(expand(reported)) == {script}
    assert set(D.expand_paths(D.parse_scan_objects([{"desc": body, "range": 2}])[0])[1]) == \
        {reference.derive(i, branch_index=1).script_pubkey().data for i in range(3)}


def test_single_key_shapes_match_embit():
    xp = tpubs(1)[0]
    for template in ("wpkh({})", "pkh({})", "sh(wpkh({}))", "tr({})", "wsh(pkh({}))"):
        body = template.format(f"{xp}/<0;1>/*")
        reference = Descriptor.from_string(body)
        scripts = expand(body, [5, 9])
        assert set(scripts) == {reference.derive(i, branch_index=b).script_pubkey().data
                                for b in (0, 1) for i in range(5, 10)}
        for script, reported in scripts.items():
            assert set(expand(reported)) == {script}


def test_hex_keys_are_reported_with_their_own_fingerprint():
    """Core gives a plain key the origin [first 4 bytes of its hash160], with no path."""
    key = ec.PrivateKey(bytes(31) + b"\x01").get_public_key()
    fingerprint = Script(p2pkh(key).data).data[3:7].hex()
    assert expand(f"wpkh({key.sec().hex()})") == {p2wpkh(key).data: D.add_checksum(f"wpkh([{fingerprint}]{key.sec().hex()})")}


def test_taproot_trees_match_embit_and_are_reported_in_cores_leaf_order():
    a, b, c = (f"{k}/<0;1>/*" for k in tpubs(3))
    internal = tpubs(1, seed=bytes(32))[0] + "/0/*"
    bodies = [f"tr({internal},{{pk({a}),{{pk({b}),sortedmulti_a(2,{a},{b},{c})}}}})",
              f"tr({internal},{{{{sortedmulti_a(2,{a},{b},{c}),pk({b})}},pk({a})}})"]   # same tree, mirrored
    expansions = [expand(body, [0, 3]) for body in bodies]
    assert expansions[0] == expansions[1]          # same outputs and the same reported descriptors
    reference = Descriptor.from_string(bodies[0])
    assert set(expansions[0]) == {reference.derive(i, branch_index=br).script_pubkey().data
                                  for br in (0, 1) for i in range(4)}
    for script, reported in expansions[0].items():
        assert "multi_a(2," in reported and "sortedmulti_a" not in reported
        assert set(expand(reported)) == {script}


def test_other_miniscript_goes_through_embit():
    a, b = tpubs(2)
    body = f"wsh(or_d(pk({a}/<0;1>/*),and_v(v:pk({b}/<0;1>/*),older(144))))"
    reference = Descriptor.from_string(body)
    scripts = expand(body, 3)
    assert set(scripts) == {reference.derive(i, branch_index=br).script_pubkey().data for br in (0, 1) for i in range(4)}
    for script, reported in scripts.items():
        assert reported.startswith("wsh(or_d(pk([") and set(expand(reported)) == {script}


# -- addr() and raw() -------------------------------------------------------------------------
def test_addresses_of_every_type_round_trip():
    key = ec.PrivateKey(b"\x07" * 32).get_public_key()
    scripts = {"p2pkh": p2pkh(key), "p2sh": p2sh(p2wpkh(key)), "p2wpkh": p2wpkh(key), "p2wsh": p2wsh(p2pkh(key)),
               "p2tr": p2tr(key)}
    for kind, script in scripts.items():
        address = script.address(REGTEST)
        assert address[0] in "mn2b", address
        for given in (address, address.upper() if address.startswith("bcrt1") else address):
            found = expand(f"addr({given})")
            assert list(found) == [script.data]
        reported = expand(f"addr({address})")[script.data]
        if kind == "p2tr":       # Core infers a taproot output it has no tree for as rawtr()
            assert reported == D.add_checksum(f"rawtr({script.data[2:].hex()})")
        else:
            assert reported == D.add_checksum(f"addr({address})")
    anchor = bytes.fromhex("51024e73")                          # pay-to-anchor, a witness v1 program
    assert expand("addr(bcrt1pfeesnyr2tx)") == {anchor: D.add_checksum("addr(bcrt1pfeesnyr2tx)")}


@pytest.mark.parametrize("address", [
    "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4",                  # mainnet
    "tb1qw508d6qejxtdg4y5r3zarvary0c5xw7kxpjzsx",                  # testnet
    "1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2", "3J98t1WpEZ73CNmQviecrnyiWrnqRhWNLy",
    "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080x",               # bad checksum
])
def test_addresses_of_other_networks_are_refused(address):
    with pytest.raises(D.DescriptorError, match="^Address is not valid$"):
        D.parse_scan_objects([f"addr({address})"])


def test_raw_scripts_are_reported_as_core_infers_them():
    key = ec.PrivateKey(b"\x07" * 32).get_public_key().sec().hex()
    pkh_script = p2pkh(ec.PublicKey.parse(bytes.fromhex(key))).data
    cases = {
        "deadbeef": "raw(deadbeef)#89f8spxm",
        "6a0464617461": D.add_checksum("raw(6a0464617461)"),
        pkh_script.hex(): D.add_checksum(f"addr({Script(pkh_script).address(REGTEST)})"),
        f"21{key}ac": D.add_checksum(f"pk({key})"),
        f"5121{key}51ae": D.add_checksum(f"multi(1,{key})"),
        f"5121{'02' + '00' * 32}51ae": D.add_checksum(f"raw(5121{'02' + '00' * 32}51ae)"),   # not a point
    }
    for hex_script, reported in cases.items():
        assert expand(f"raw({hex_script})") == {bytes.fromhex(hex_script): reported}
        assert D.infer_descriptor(bytes.fromhex(hex_script)) == reported


# -- speed ------------------------------------------------------------------------------------
def test_a_multisig_scan_window_expands_quickly(monkeypatch):
    keys = tpubs(3, seed=b"\x05" * 32)
    body = "wsh(sortedmulti(2,{}/<0;1>/*,{}/<0;1>/*,{}/<0;1>/*))".format(*keys)
    obj = D.parse_scan_objects([{"desc": body, "range": [0, 999]}])[0]
    start = time.perf_counter()
    scripts = D.expand(obj)
    elapsed = time.perf_counter() - start
    assert len(scripts) == 2000
    assert elapsed < 5, f"{elapsed:.2f}s"          # about 0.3 s on a slow core
    monkeypatch.setattr(D, "_expand", lambda *_: pytest.fail("a repeated scan was expanded again"))
    assert D.expand(obj) == scripts                # a repeated scan is remembered, not timed


# -- the node's scantxoutset ------------------------------------------------------------------
def test_scantxoutset_over_a_ranged_multisig(rpc):
    keys = tpubs()
    body = "wsh(sortedmulti(2,{}/<0;1>/*,{}/<0;1>/*,{}/<0;1>/*))".format(*keys)
    reference = Descriptor.from_string(body)
    change_7 = reference.derive(7, branch_index=1).script_pubkey()
    receive_3 = reference.derive(3, branch_index=0).script_pubkey()
    rpc.generatetoaddress(1, change_7.address(REGTEST))
    rpc.generatetoaddress(1, receive_3.address(REGTEST))
    result = rpc.scantxoutset("start", [{"desc": D.add_checksum(body), "range": 10}])
    assert len(result["unspents"]) == 2
    by_script = {u["scriptPubKey"]: u["desc"] for u in result["unspents"]}
    assert by_script[change_7.data.hex()] == expand(body, 10)[change_7.data]
    assert sorted(d.split("]")[0][-4:] for d in by_script.values()) == ["/0/3", "/1/7"]
    narrow = rpc.scantxoutset("start", [{"desc": body, "range": [0, 5]}])
    assert len(narrow["unspents"]) == 1
