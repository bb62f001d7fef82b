"""BC-UR for PSBTs (custody/bitcoin/ur.py), checked against published vectors, then with real PSBTs.

Where the vectors come from:
* bc-ur, the C++ reference (github.com/BlockchainCommons/bc-ur, test/test.cpp at 4479fb8); URKit's
  Swift tests (Tests/URKitTests at ebba59b) and the implementer's guide bcr-2024-001 carry the same
  numbers: CRC-32, bytewords, xoshiro256**, random sampler, shuffle, fragment length, partition,
  degree and fragment choice, fountain parts, `ur:bytes` single- and multi-part URs;
* bcr-2020-012 (Research repo, papers/bcr-2020-012-bytewords.md at e4a4fbb): the `seed` example and
  its "brutal" variant;
* bcr-2020-006 (papers/bcr-2020-006-urtypes.md): the PSBT example, `ur:crypto-psbt/...` before the
  2024 rename (at bb27ba7) and `ur:psbt/...` since (at e4a4fbb);
* tests/vectors/bip174.json: real PSBTs for the round trips.
"""
from __future__ import annotations

import base64
import json
import random
from pathlib import Path

import pytest
from embit.psbt import PSBT

from custody.bitcoin import ur

VECTORS = Path(__file__).with_name("vectors")


def make_message(length: int, seed: str = "Wolf") -> bytes:
    """The reference tests' message: `length` bytes from xoshiro256** seeded with SHA-256(seed)."""
    return ur.Xoshiro256(seed).next_data(length)


# -- reference vectors (bc-ur test/test.cpp) -----------------------------------------------------------------
RNG_WOLF_MOD_100 = [
    42, 81, 85, 8, 82, 84, 76, 73, 70, 88, 2, 74, 40, 48, 77, 54, 88, 7, 5, 88, 37, 25, 82, 13, 69,
    59, 30, 39, 11, 82, 19, 99, 45, 87, 30, 15, 32, 22, 89, 44, 92, 77, 29, 78, 4, 92, 44, 68, 92, 69,
    1, 42, 89, 50, 37, 84, 63, 34, 32, 3, 17, 62, 40, 98, 82, 89, 24, 43, 85, 39, 15, 3, 99, 29, 20,
    42, 27, 10, 85, 66, 50, 35, 69, 70, 70, 74, 30, 13, 72, 54, 11, 5, 70, 55, 91, 52, 10, 43, 43, 52,
]

RNG_CRC_WOLF_MOD_100 = [
    88, 44, 94, 74, 0, 99, 7, 77, 68, 35, 47, 78, 19, 21, 50, 15, 42, 36, 91, 11, 85, 39, 64, 22, 57,
    11, 25, 12, 1, 91, 17, 75, 29, 47, 88, 11, 68, 58, 27, 65, 21, 54, 47, 54, 73, 83, 23, 58, 75, 27,
    26, 15, 60, 36, 30, 21, 55, 57, 77, 76, 75, 47, 53, 76, 9, 91, 14, 69, 3, 95, 11, 73, 20, 99, 68,
    61, 3, 98, 36, 98, 56, 65, 14, 80, 74, 57, 63, 68, 51, 56, 24, 39, 53, 80, 57, 51, 81, 3, 1, 30,
]

RNG_WOLF_INT_1_10 = [
    6, 5, 8, 4, 10, 5, 7, 10, 4, 9, 10, 9, 7, 7, 1, 1, 2, 9, 9, 2, 6, 4, 5, 7, 8, 5, 4, 2, 3, 8,
    7, 4, 5, 1, 10, 9, 3, 10, 2, 6, 8, 5, 7, 9, 3, 1, 5, 2, 7, 1, 4, 4, 4, 4, 9, 4, 5, 5, 6, 9,
    5, 1, 2, 8, 3, 3, 2, 8, 4, 3, 2, 1, 10, 8, 9, 3, 10, 8, 5, 5, 6, 7, 10, 5, 8, 9, 4, 6, 4, 2,
    10, 2, 1, 7, 9, 6, 7, 4, 2, 5,
]

SAMPLER_1_2_4_8 = [
    3, 3, 3, 3, 3, 3, 3, 0, 2, 3, 3, 3, 3, 1, 2, 2, 1, 3, 3, 2, 3, 3, 1, 1, 2, 1, 1, 3, 1, 3, 1, 2, 0, 2, 1, 0,
    3, 3, 3, 1, 3, 3, 3, 3, 1, 3, 2, 3, 2, 2, 3, 3, 3, 3, 2, 3, 3, 0, 3, 3, 3, 3, 1, 2, 3, 3, 2, 2, 2, 1, 2, 2,
    1, 2, 3, 1, 3, 0, 3, 2, 3, 3, 3, 3, 3, 3, 3, 3, 2, 3, 1, 3, 3, 2, 0, 2, 2, 3, 1, 1, 2, 3, 2, 3, 3, 3, 3, 2,
    3, 3, 3, 3, 3, 2, 3, 1, 2, 1, 1, 3, 1, 3, 2, 2, 3, 3, 3, 1, 3, 3, 3, 3, 3, 3, 3, 3, 2, 3, 2, 3, 3, 1, 2, 3,
    3, 1, 3, 2, 3, 3, 3, 2, 3, 1, 3, 0, 3, 2, 1, 1, 3, 1, 3, 2, 3, 3, 3, 3, 2, 0, 3, 3, 1, 3, 0, 2, 1, 3, 3, 1,
    1, 3, 1, 2, 3, 3, 3, 0, 2, 3, 2, 0, 1, 3, 3, 3, 2, 2, 2, 3, 3, 3, 3, 3, 2, 3, 3, 3, 3, 2, 3, 3, 2, 0, 2, 3,
    3, 3, 3, 2, 1, 1, 1, 2, 1, 3, 3, 3, 2, 2, 3, 3, 1, 2, 3, 0, 3, 2, 3, 3, 3, 3, 0, 2, 2, 3, 2, 2, 3, 3, 3, 3,
    1, 3, 2, 3, 3, 3, 3, 3, 2, 2, 3, 1, 3, 0, 2, 1, 3, 3, 3, 3, 3, 3, 3, 3, 1, 3, 3, 3, 3, 2, 2, 2, 3, 1, 1, 3,
    2, 2, 0, 3, 2, 1, 2, 1, 0, 3, 3, 3, 2, 2, 3, 2, 1, 2, 0, 0, 3, 3, 2, 3, 3, 2, 3, 3, 3, 3, 3, 2, 2, 2, 3, 3,
    3, 3, 3, 1, 1, 3, 2, 2, 3, 1, 1, 0, 1, 3, 2, 3, 3, 2, 3, 3, 2, 3, 3, 2, 2, 2, 2, 3, 2, 2, 2, 2, 2, 1, 2, 3,
    3, 2, 2, 2, 2, 3, 3, 2, 0, 2, 1, 3, 3, 3, 3, 0, 3, 3, 3, 3, 2, 2, 3, 1, 3, 3, 3, 2, 3, 3, 3, 2, 3, 3, 3, 3,
    2, 3, 2, 1, 3, 3, 3, 3, 2, 2, 0, 1, 2, 3, 2, 0, 3, 3, 3, 3, 3, 3, 1, 3, 3, 2, 3, 2, 2, 3, 3, 3, 3, 3, 2, 2,
    3, 3, 2, 2, 2, 1, 3, 3, 3, 3, 1, 2, 3, 2, 3, 3, 2, 3, 2, 3, 3, 3, 2, 3, 1, 2, 3, 2, 1, 1, 3, 3, 2, 3, 3, 2,
    3, 3, 0, 0, 1, 3, 3, 2, 3, 3, 3, 3, 1, 3, 3, 0, 3, 2, 3, 3, 1, 3, 3, 3, 3, 3, 3, 3, 0, 3, 3, 2,
]

SHUFFLES = [
    [6, 4, 9, 3, 10, 5, 7, 8, 1, 2],
    [10, 8, 6, 5, 1, 2, 3, 9, 7, 4],
    [6, 4, 5, 8, 9, 3, 2, 1, 7, 10],
    [7, 3, 5, 1, 10, 9, 4, 8, 2, 6],
    [8, 5, 7, 10, 2, 1, 4, 3, 9, 6],
    [4, 3, 5, 6, 10, 2, 7, 8, 9, 1],
    [5, 1, 3, 9, 4, 6, 2, 10, 7, 8],
    [2, 1, 10, 8, 9, 4, 7, 6, 3, 5],
    [6, 7, 10, 4, 8, 9, 2, 3, 1, 5],
    [10, 2, 1, 7, 9, 5, 6, 3, 4, 8],
]

FRAGMENTS_1024 = [
    "916ec65cf77cadf55cd7f9cda1a1030026ddd42e905b77adc36e4f2d3ccba44f7f04f2de44f42d84c374a0e149136f25b01852545961d55f7f7a8cde6d0e2ec43f3b2dcb644a2209e8c9e34af5c4747984a5e873c9cf5f965e25ee29039f",
    "df8ca74f1c769fc07eb7ebaec46e0695aea6cbd60b3ec4bbff1b9ffe8a9e7240129377b9d3711ed38d412fbb4442256f1e6f595e0fc57fed451fb0a0101fb76b1fb1e1b88cfdfdaa946294a47de8fff173f021c0e6f65b05c0a494e50791",
    "270a0050a73ae69b6725505a2ec8a5791457c9876dd34aadd192a53aa0dc66b556c0c215c7ceb8248b717c22951e65305b56a3706e3e86eb01c803bbf915d80edcd64d4d41977fa6f78dc07eecd072aae5bc8a852397e06034dba6a0b570",
    "797c3a89b16673c94838d884923b8186ee2db5c98407cab15e13678d072b43e406ad49477c2e45e85e52ca82a94f6df7bbbe7afbed3a3a830029f29090f25217e48d1f42993a640a67916aa7480177354cc7440215ae41e4d02eae9a1912",
    "33a6d4922a792c1b7244aa879fefdb4628dc8b0923568869a983b8c661ffab9b2ed2c149e38d41fba090b94155adbed32f8b18142ff0d7de4eeef2b04adf26f2456b46775c6c20b37602df7da179e2332feba8329bbb8d727a138b4ba7a5",
    "03215eda2ef1e953d89383a382c11d3f2cad37a4ee59a91236a3e56dcf89f6ac81dd4159989c317bd649d9cbc617f73fe10033bd288c60977481a09b343d3f676070e67da757b86de27bfca74392bac2996f7822a7d8f71a489ec6180390",
    "089ea80a8fcd6526413ec6c9a339115f111d78ef21d456660aa85f790910ffa2dc58d6a5b93705caef1091474938bd312427021ad1eeafbd19e0d916ddb111fabd8dcab5ad6a6ec3a9c6973809580cb2c164e26686b5b98cfb017a337968",
    "c7daaa14ae5152a067277b1b3902677d979f8e39cc2aafb3bc06fcf69160a853e6869dcc09a11b5009f91e6b89e5b927ab1527a735660faa6012b420dd926d940d742be6a64fb01cdc0cff9faa323f02ba41436871a0eab851e7f5782d10",
    "fbefde2a7e9ae9dc1e5c2c48f74f6c824ce9ef3c89f68800d44587bedc4ab417cfb3e7447d90e1e417e6e05d30e87239d3a5d1d45993d4461e60a0192831640aa32dedde185a371ded2ae15f8a93dba8809482ce49225daadfbb0fec629e",
    "23880789bdf9ed73be57fa84d555134630e8d0f7df48349f29869a477c13ccca9cd555ac42ad7f568416c3d61959d0ed568b2b81c7771e9088ad7fd55fd4386bafbf5a528c30f107139249357368ffa980de2c76ddd9ce4191376be0e6b5",
    "170010067e2e75ebe2d2904aeb1f89d5dc98cd4a6f2faaa8be6d03354c990fd895a97feb54668473e9d942bb99e196d897e8f1b01625cf48a7b78d249bb4985c065aa8cd1402ed2ba1b6f908f63dcd84b66425df00000000000000000000",
]

DEGREES = [
    11, 3, 6, 5, 2, 1, 2, 11, 1, 3, 9, 10, 10, 4, 2, 1, 1, 2, 1, 1, 5, 2, 4, 10, 3, 2, 1, 1, 3, 11,
    2, 6, 2, 9, 9, 2, 6, 7, 2, 5, 2, 4, 3, 1, 6, 11, 2, 11, 3, 1, 6, 3, 1, 4, 5, 3, 6, 1, 1, 3,
    1, 2, 2, 1, 4, 5, 1, 1, 9, 1, 1, 6, 4, 1, 5, 1, 2, 2, 3, 1, 1, 5, 2, 6, 1, 7, 11, 1, 8, 1,
    5, 1, 1, 2, 2, 6, 4, 10, 1, 2, 5, 5, 5, 1, 1, 4, 1, 1, 1, 3, 5, 5, 5, 1, 4, 3, 3, 5, 1, 11,
    3, 2, 8, 1, 2, 1, 1, 4, 5, 2, 1, 1, 1, 5, 6, 11, 10, 7, 4, 7, 1, 5, 3, 1, 1, 9, 1, 2, 5, 5,
    2, 2, 3, 10, 1, 3, 2, 3, 3, 1, 1, 2, 1, 3, 2, 2, 1, 3, 8, 4, 1, 11, 6, 3, 1, 1, 1, 1, 1, 3,
    1, 2, 1, 10, 1, 1, 8, 2, 7, 1, 2, 1, 9, 2, 10, 2, 1, 3, 4, 10,
]

CHOSEN_FRAGMENTS = [
    [0],
    [1],
    [2],
    [3],
    [4],
    [5],
    [6],
    [7],
    [8],
    [9],
    [10],
    [9],
    [2, 5, 6, 8, 9, 10],
    [8],
    [1, 5],
    [1],
    [0, 2, 4, 5, 8, 10],
    [5],
    [2],
    [2],
    [0, 1, 3, 4, 5, 7, 9, 10],
    [0, 1, 2, 3, 5, 6, 8, 9, 10],
    [0, 2, 4, 5, 7, 8, 9, 10],
    [3, 5],
    [4],
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
    [0, 1, 3, 4, 5, 6, 7, 9, 10],
    [6],
    [5, 6],
    [7],
]

FOUNTAIN_DATA = [  # seqNum 1..20, all with seqLen 9, messageLen 256, checksum 23570951
    "916ec65cf77cadf55cd7f9cda1a1030026ddd42e905b77adc36e4f2d3c",
    "cba44f7f04f2de44f42d84c374a0e149136f25b01852545961d55f7f7a",
    "8cde6d0e2ec43f3b2dcb644a2209e8c9e34af5c4747984a5e873c9cf5f",
    "965e25ee29039fdf8ca74f1c769fc07eb7ebaec46e0695aea6cbd60b3e",
    "c4bbff1b9ffe8a9e7240129377b9d3711ed38d412fbb4442256f1e6f59",
    "5e0fc57fed451fb0a0101fb76b1fb1e1b88cfdfdaa946294a47de8fff1",
    "73f021c0e6f65b05c0a494e50791270a0050a73ae69b6725505a2ec8a5",
    "791457c9876dd34aadd192a53aa0dc66b556c0c215c7ceb8248b717c22",
    "951e65305b56a3706e3e86eb01c803bbf915d80edcd64d4d0000000000",
    "330f0f33a05eead4f331df229871bee733b50de71afd2e5a79f196de09",
    "3b205ce5e52d8c24a52cffa34c564fa1af3fdffcd349dc4258ee4ee828",
    "dd7bf725ea6c16d531b5f03254783803048ca08b87148daacd1cd7a006",
    "760be7ad1c6187902bbc04f539b9ee5eb8ea6833222edea36031306c01",
    "5bf4031217d2c3254b088fa7553778b5003632f46e21db129416f65b55",
    "73f021c0e6f65b05c0a494e50791270a0050a73ae69b6725505a2ec8a5",
    "b8546ebfe2048541348910267331c643133f828afec9337c318f71b7df",
    "23dedeea74e3a0fb052befabefa13e2f80e4315c9dceed4c8630612e64",
    "d01a8daee769ce34b6b35d3ca0005302724abddae405bdb419c0a6b208",
    "3171c5dc365766eff25ae47c6f10e7de48cfb8474e050e5fe997a6dc24",
    "e055c2433562184fa71b4be94f262e200f01c6f74c284b0dc6fae6673f",
]

FOUNTAIN_CBOR = [
    "8501091901001a0167aa07581d916ec65cf77cadf55cd7f9cda1a1030026ddd42e905b77adc36e4f2d3c",
    "8502091901001a0167aa07581dcba44f7f04f2de44f42d84c374a0e149136f25b01852545961d55f7f7a",
    "8503091901001a0167aa07581d8cde6d0e2ec43f3b2dcb644a2209e8c9e34af5c4747984a5e873c9cf5f",
    "8504091901001a0167aa07581d965e25ee29039fdf8ca74f1c769fc07eb7ebaec46e0695aea6cbd60b3e",
    "8505091901001a0167aa07581dc4bbff1b9ffe8a9e7240129377b9d3711ed38d412fbb4442256f1e6f59",
    "8506091901001a0167aa07581d5e0fc57fed451fb0a0101fb76b1fb1e1b88cfdfdaa946294a47de8fff1",
    "8507091901001a0167aa07581d73f021c0e6f65b05c0a494e50791270a0050a73ae69b6725505a2ec8a5",
    "8508091901001a0167aa07581d791457c9876dd34aadd192a53aa0dc66b556c0c215c7ceb8248b717c22",
    "8509091901001a0167aa07581d951e65305b56a3706e3e86eb01c803bbf915d80edcd64d4d0000000000",
    "850a091901001a0167aa07581d330f0f33a05eead4f331df229871bee733b50de71afd2e5a79f196de09",
    "850b091901001a0167aa07581d3b205ce5e52d8c24a52cffa34c564fa1af3fdffcd349dc4258ee4ee828",
    "850c091901001a0167aa07581ddd7bf725ea6c16d531b5f03254783803048ca08b87148daacd1cd7a006",
    "850d091901001a0167aa07581d760be7ad1c6187902bbc04f539b9ee5eb8ea6833222edea36031306c01",
    "850e091901001a0167aa07581d5bf4031217d2c3254b088fa7553778b5003632f46e21db129416f65b55",
    "850f091901001a0167aa07581d73f021c0e6f65b05c0a494e50791270a0050a73ae69b6725505a2ec8a5",
    "8510091901001a0167aa07581db8546ebfe2048541348910267331c643133f828afec9337c318f71b7df",
    "8511091901001a0167aa07581d23dedeea74e3a0fb052befabefa13e2f80e4315c9dceed4c8630612e64",
    "8512091901001a0167aa07581dd01a8daee769ce34b6b35d3ca0005302724abddae405bdb419c0a6b208",
    "8513091901001a0167aa07581d3171c5dc365766eff25ae47c6f10e7de48cfb8474e050e5fe997a6dc24",
    "8514091901001a0167aa07581de055c2433562184fa71b4be94f262e200f01c6f74c284b0dc6fae6673f",
]

UR_BYTES_PARTS = [
    "ur:bytes/1-9/lpadascfadaxcywenbpljkhdcahkadaemejtswhhylkepmykhhtsytsnoyoyaxaedsuttydmmhhpktpmsrjtdkgslpgh",
    "ur:bytes/2-9/lpaoascfadaxcywenbpljkhdcagwdpfnsboxgwlbaawzuefywkdplrsrjynbvygabwjldapfcsgmghhkhstlrdcxaefz",
    "ur:bytes/3-9/lpaxascfadaxcywenbpljkhdcahelbknlkuejnbadmssfhfrdpsbiegecpasvssovlgeykssjykklronvsjksopdzmol",
    "ur:bytes/4-9/lpaaascfadaxcywenbpljkhdcasotkhemthydawydtaxneurlkosgwcekonertkbrlwmplssjtammdplolsbrdzcrtas",
    "ur:bytes/5-9/lpahascfadaxcywenbpljkhdcatbbdfmssrkzmcwnezelennjpfzbgmuktrhtejscktelgfpdlrkfyfwdajldejokbwf",
    "ur:bytes/6-9/lpamascfadaxcywenbpljkhdcackjlhkhybssklbwefectpfnbbectrljectpavyrolkzczcpkmwidmwoxkilghdsowp",
    "ur:bytes/7-9/lpatascfadaxcywenbpljkhdcavszmwnjkwtclrtvaynhpahrtoxmwvwatmedibkaegdosftvandiodagdhthtrlnnhy",
    "ur:bytes/8-9/lpayascfadaxcywenbpljkhdcadmsponkkbbhgsoltjntegepmttmoonftnbuoiyrehfrtsabzsttorodklubbuyaetk",
    "ur:bytes/9-9/lpasascfadaxcywenbpljkhdcajskecpmdckihdyhphfotjojtfmlnwmadspaxrkytbztpbauotbgtgtaeaevtgavtny",
    "ur:bytes/10-9/lpbkascfadaxcywenbpljkhdcahkadaemejtswhhylkepmykhhtsytsnoyoyaxaedsuttydmmhhpktpmsrjtwdkiplzs",
    "ur:bytes/11-9/lpbdascfadaxcywenbpljkhdcahelbknlkuejnbadmssfhfrdpsbiegecpasvssovlgeykssjykklronvsjkvetiiapk",
    "ur:bytes/12-9/lpbnascfadaxcywenbpljkhdcarllaluzmdmgstospeyiefmwejlwtpedamktksrvlcygmzemovovllarodtmtbnptrs",
    "ur:bytes/13-9/lpbtascfadaxcywenbpljkhdcamtkgtpknghchchyketwsvwgwfdhpgmgtylctotzopdrpayoschcmhplffziachrfgd",
    "ur:bytes/14-9/lpbaascfadaxcywenbpljkhdcapazewnvonnvdnsbyleynwtnsjkjndeoldydkbkdslgjkbbkortbelomueekgvstegt",
    "ur:bytes/15-9/lpbsascfadaxcywenbpljkhdcaynmhpddpzmversbdqdfyrehnqzlugmjzmnmtwmrouohtstgsbsahpawkditkckynwt",
    "ur:bytes/16-9/lpbeascfadaxcywenbpljkhdcawygekobamwtlihsnpalnsghenskkiynthdzotsimtojetprsttmukirlrsbtamjtpd",
    "ur:bytes/17-9/lpbyascfadaxcywenbpljkhdcamklgftaxykpewyrtqzhydntpnytyisincxmhtbceaykolduortotiaiaiafhiaoyce",
    "ur:bytes/18-9/lpbgascfadaxcywenbpljkhdcahkadaemejtswhhylkepmykhhtsytsnoyoyaxaedsuttydmmhhpktpmsrjtntwkbkwy",
    "ur:bytes/19-9/lpbwascfadaxcywenbpljkhdcadekicpaajootjzpsdrbalpeywllbdsnbinaerkurspbncxgslgftvtsrjtksplcpeo",
    "ur:bytes/20-9/lpbbascfadaxcywenbpljkhdcayapmrleeleaxpasfrtrdkncffwjyjzgyetdmlewtkpktgllepfrltataztksmhkbot",
]

BYTEWORDS_2_INPUT = bytes([
    245, 215, 20, 198, 241, 235, 69, 59, 209, 205, 165, 18, 150, 158, 116, 135, 229, 212, 19, 159,
    17, 37, 239, 240, 253, 11, 109, 191, 37, 242, 38, 120, 223, 41, 156, 189, 242, 254, 147, 204,
    66, 163, 216, 175, 191, 72, 169, 54, 32, 60, 144, 230, 210, 137, 184, 197, 33, 113, 88, 14,
    157, 31, 177, 46, 1, 115, 205, 69, 225, 150, 65, 235, 58, 144, 65, 240, 133, 69, 113, 247,
    63, 53, 242, 165, 160, 144, 26, 13, 79, 237, 133, 71, 82, 69, 254, 165, 138, 41, 85, 24,
])

BYTEWORDS_2_STANDARD = (
    "yank toys bulb skew when warm free fair tent swan open brag mint noon jury list view tiny brew note "
    "body data webs what zinc bald join runs data whiz days keys user diet news ruby whiz zone menu surf "
    "flew omit trip pose runs fund part even crux fern math visa tied loud redo silk curl jugs hard beta "
    "next cost puma drum acid junk swan free very mint flap warm fact math flap what limp free jugs yell "
    "fish epic whiz open numb math city belt glow wave limp fuel grim free zone open love diet gyro cats "
    "fizz holy city puff"
)

BYTEWORDS_2_MINIMAL = (
    "yktsbbswwnwmfefrttsnonbgmtnnjyltvwtybwnebydawswtzcbdjnrsdawzdsksurdtnsrywzzemusffwottppersfdptencxfn"
    "mhvatdldroskcljshdbantctpadmadjksnfevymtfpwmftmhfpwtlpfejsylfhecwzonnbmhcybtgwwelpflgmfezeonledtgocs"
    "fzhycypf"
)


# -- CRC-32 and bytewords -------------------------------------------------------------------------------------
def test_crc32():
    assert ur.crc32(b"Hello, world!") == 0xEBE6C6E6
    assert ur.crc32(b"Wolf") == 0x598C84DC


def test_bytewords_reference_vectors():
    data = bytes([0, 1, 2, 128, 255])
    assert ur.bytewords_encode(data) == "aeadaolazmjendeoti"
    assert ur.bytewords_decode("aeadaolazmjendeoti") == data
    assert " ".join(ur.WORDS[b] for b in data + ur.crc32(data).to_bytes(4, "big")) == \
        "able acid also lava zoom jade need echo taxi"
    assert ur.bytewords_encode(BYTEWORDS_2_INPUT) == BYTEWORDS_2_MINIMAL
    assert ur.bytewords_decode(BYTEWORDS_2_MINIMAL) == BYTEWORDS_2_INPUT
    standard = BYTEWORDS_2_INPUT + ur.crc32(BYTEWORDS_2_INPUT).to_bytes(4, "big")
    assert " ".join(ur.WORDS[b] for b in standard) == BYTEWORDS_2_STANDARD


@pytest.mark.parametrize("text", ["aeadaolazojendeowf", "wf", "", "aeadaolazmjendeot", "aeadaolazmjendeoxx"])
def test_bytewords_refuses_bad_checksum_short_or_unknown(text):
    with pytest.raises(ur.URError, match="bytewords"):
        ur.bytewords_decode(text)


def test_bytewords_bcr_2020_012_examples():
    """The `seed` example (tagged CBOR body) and its "brutal" variant (the bare 16 bytes)."""
    body = bytes.fromhex("d99d6ca20150c7098580125e2ab0981253468b2dbc5202c11947da")
    assert ur.crc32(body) == 0xC904F40B
    assert " ".join(ur.WORDS[b] for b in body + ur.crc32(body).to_bytes(4, "big")) == (
        "tuna next jazz oboe acid good slot axis limp lava brag holy door puff monk brag guru frog luau drop "
        "roof grim also safe chef fuel twin solo aqua work bald")
    assert ur.bytewords_encode(body) == "tantjzoeadgdstaslplabghydrpfmkbggufgludprfgmaosecffltnsoaawkbd"
    assert ur.bytewords_decode("TANTJZOEADGDSTASLPLABGHYDRPFMKBGGUFGLUDPRFGMAOSECFFLTNSOAAWKBD") == body

    seed = bytes.fromhex("c7098580125e2ab0981253468b2dbc52")
    assert ur.crc32(seed) == 0xFEAC0DEA
    assert ur.bytewords_encode(seed) == "staslplabghydrpfmkbggufgludprfgmzepsbtwd"


def test_word_list_is_the_published_one():
    assert len(ur.WORDS) == 256 and ur.WORDS[0] == "able" and ur.WORDS[255] == "zoom"
    assert len({w[0] + w[-1] for w in ur.WORDS}) == 256


# -- the consensus stack -----------------------------------------------------------------------------------
def test_xoshiro256_vectors():
    rng = ur.Xoshiro256("Wolf")
    assert [rng.next() % 100 for _ in range(100)] == RNG_WOLF_MOD_100
    rng = ur.Xoshiro256.from_crc32(ur.crc32(b"Wolf"))
    assert [rng.next() % 100 for _ in range(100)] == RNG_CRC_WOLF_MOD_100
    rng = ur.Xoshiro256("Wolf")
    assert [rng.next_int(1, 10) for _ in range(100)] == RNG_WOLF_INT_1_10


def test_random_sampler_vector():
    sampler, rng = ur.RandomSampler([1, 2, 4, 8]), ur.Xoshiro256("Wolf")
    samples = [sampler.next(rng) for _ in range(500)]
    assert samples == SAMPLER_1_2_4_8
    assert [samples.count(i) for i in range(4)] == [28, 68, 130, 274]


def test_shuffle_vector():
    rng = ur.Xoshiro256("Wolf")
    assert [ur.shuffled(list(range(1, 11)), rng) for _ in range(10)] == SHUFFLES


def test_find_nominal_fragment_length():
    assert ur.find_nominal_fragment_length(12345, 1005, 1955) == 1764
    assert ur.find_nominal_fragment_length(12345, 1005, 30000) == 12345
    assert ur.find_nominal_fragment_length(1024, 10, 100) == 94
    assert ur.find_nominal_fragment_length(4, 10, 100) == 4      # shorter than the minimum: one fragment


def test_partition_and_join():
    message = make_message(1024)
    fragments = ur.partition_message(message, ur.find_nominal_fragment_length(len(message), 10, 100))
    assert [f.hex() for f in fragments] == FRAGMENTS_1024
    assert b"".join(fragments)[:len(message)] == message


def test_choose_degree_vector():
    message = make_message(1024)
    fragments = ur.partition_message(message, ur.find_nominal_fragment_length(len(message), 10, 100))
    degrees = [ur.choose_degree(len(fragments), ur.Xoshiro256(f"Wolf-{nonce}")) for nonce in range(1, 201)]
    assert degrees == DEGREES


def test_choose_fragments_vector():
    message = make_message(1024)
    fragments = ur.partition_message(message, ur.find_nominal_fragment_length(len(message), 10, 100))
    chosen = [sorted(ur.choose_fragments(n, len(fragments), ur.crc32(message))) for n in range(1, 31)]
    assert chosen == CHOSEN_FRAGMENTS


def test_xor_vector():
    rng = ur.Xoshiro256("Wolf")
    a, b = rng.next_data(10), rng.next_data(10)
    assert (a.hex(), b.hex()) == ("916ec65cf77cadf55cd7", "f9cda1a1030026ddd42e")
    assert ur._xor(a, b).hex() == "68a367fdf47c8b2888f9"
    assert ur._xor(ur._xor(a, b), a) == b


# -- the fountain code -------------------------------------------------------------------------------------
def test_fountain_encoder_parts_and_their_cbor():
    encoder = ur.FountainEncoder(make_message(256), 30)
    parts = [encoder.next_part() for _ in range(20)]
    assert [(p.seq_num, p.seq_len, p.message_len, p.checksum) for p in parts] == \
        [(n, 9, 256, 23570951) for n in range(1, 21)]
    assert [p.data.hex() for p in parts] == FOUNTAIN_DATA
    assert [p.cbor().hex() for p in parts] == FOUNTAIN_CBOR


def test_fountain_encoder_pure_parts_come_first():
    encoder = ur.FountainEncoder(make_message(256), 30)
    assert encoder.seq_len == 9
    assert [sorted(ur.choose_fragments(n, 9, encoder.checksum)) for n in range(1, 10)] == [[i] for i in range(9)]


def test_fountain_decoder_from_mixed_parts_only():
    """As the reference: 32767 bytes in 1000-byte fragments, starting after the pure parts."""
    message = make_message(32767)
    encoder, decoder = ur.FountainEncoder(message, 1000, first_seq_num=100), ur.FountainDecoder()
    while not decoder.is_complete:
        decoder.receive(encoder.next_part())
    assert decoder.message == message
    assert encoder.seq_num > 100 + encoder.seq_len     # it really needed mixed parts beyond seqLen


def test_fountain_decoder_reduces_mixed_parts_by_each_other():
    """Two mixed parts whose fragment sets differ by one index give that fragment, with no pure part."""
    encoder = ur.FountainEncoder(make_message(256), 30)
    parts = {}
    for _ in range(200):
        part = encoder.next_part()
        parts[ur.choose_fragments(part.seq_num, part.seq_len, part.checksum)] = part
    small, large = next((a, b) for a in parts for b in parts if len(a) > 1 and a < b and len(b - a) == 1)
    (index,) = large - small
    for order in ((small, large), (large, small)):
        decoder = ur.FountainDecoder()
        for indexes in order:
            decoder.receive(parts[indexes])
        assert decoder.fragments == {index: encoder.fragments[index]}


def test_part_cbor_round_trip():
    part = ur.Part(12, 8, 100, 0x12345678, bytes([1, 5, 3, 3, 5]))
    assert ur.Part.from_cbor(part.cbor()) == part and ur.Part.from_cbor(part.cbor()).cbor() == part.cbor()


def test_cbor_round_trip_and_refusals():
    for value in (0, 23, 24, 255, 256, 65536, 2**32, b"", b"\x00" * 300, [1, [2, b"x"], []]):
        assert ur.cbor_decode(ur.cbor_encode(value)) == value
    assert ur.cbor_encode(b"\x00" * 167)[:2] == bytes.fromhex("58a7")
    for bad in (b"", b"\x58", b"\x42\x00", b"\x01\x02", b"\x60", b"\x9f\xff"):
        with pytest.raises(ur.URError, match="CBOR"):
            ur.cbor_decode(bad)


# -- UR strings ----------------------------------------------------------------------------------------------
def test_single_part_ur_bytes_vector():
    expected = ("ur:bytes/hdeymejtswhhylkepmykhhtsytsnoyoyaxaedsuttydmmhhpktpmsrjtgwdpfnsboxgwlbaawzuefywkdplrsrj"
                "ynbvygabwjldapfcsdwkbrkch")
    assert ur.encode_single(make_message(50), ur_type="bytes") == expected
    assert ur.encode_parts(make_message(50), ur_type="bytes") == [expected]
    assert ur.decode([expected], ur_type="bytes") == make_message(50)


def test_multipart_ur_bytes_vector():
    frames = ur.encode_parts(make_message(256), max_fragment_len=30, count=20, ur_type="bytes")
    assert frames == UR_BYTES_PARTS
    assert ur.decode(frames, ur_type="bytes") == make_message(256)
    assert ur.encode_parts(make_message(256), max_fragment_len=30, ur_type="bytes") == UR_BYTES_PARTS[:18]


def test_multipart_ur_from_mixed_frames_only():
    message = make_message(32767)
    encoder = ur.FountainEncoder(ur.cbor_encode(message), 1000, first_seq_num=100)
    decoder = ur.URDecoder("bytes")
    while not decoder.receive(ur.encode_part(encoder.next_part(), "bytes")):
        pass
    assert decoder.result() == message


def test_crypto_psbt_example_of_bcr_2020_006():
    psbt = bytes.fromhex(
        "70736274ff01009a020000000258e87a21b56daf0c23be8e7070456c336f7cbaa5c8757924f545887bb2abdd7500000000"
        "00ffffffff838d0427d0ec650a68aa46bb0b098aea4422c071b2ca78352a077959d07cea1d0100000000ffffffff0270aa"
        "f00800000000160014d85c2b71d0060b09c9886aeb815e50991dda124d00e1f5050000000016001400aea9a2e5f0f876a5"
        "88df5546e8742d1d87008f000000000000000000")
    body = ("hdosjojkidjyzmadaenyaoaeaeaeaohdvsknclrejnpebncnrnmnjojofejzeojlkerdonspkpkkdkykfelokgprpyutkpaeae"
            "aeaeaezmzmzmzmlslgaaditiwpihbkispkfgrkbdaslewdfycprtjsprsgksecdratkkhktikewdcaadaeaeaeaezmzmzmzmao"
            "jopkwtayaeaeaeaecmaebbtphhdnjstiambdassoloimwmlyhygdnlcatnbggtaevyykahaeaeaeaecmaebbaeplptoevwwtya"
            "koonlourgofgvsjydpcaltaemyaeaeaeaeaeaeaeaeaebkgdcarh")
    assert ur.encode_single(psbt) == "ur:crypto-psbt/" + body
    assert ur.encode_single(psbt, ur_type="psbt") == "ur:psbt/" + body
    assert ur.decode(["UR:CRYPTO-PSBT/" + body.upper()]) == psbt        # QR alphanumeric mode
    assert ur.decode("ur:psbt/" + body, ur_type="psbt") == psbt


# -- real PSBTs ----------------------------------------------------------------------------------------------
def _psbts() -> list[bytes]:
    """The BIP-174 valid vectors that embit parses (two use a transaction form it refuses)."""
    out = []
    for case in json.loads((VECTORS / "bip174.json").read_text())["valid"]:
        raw = base64.b64decode(case["psbt"])
        try:
            PSBT.parse(raw)
        except Exception:
            continue
        out.append(raw)
    return out


def _seq(frame: str) -> tuple[int, int]:
    num, total = frame.split("/")[1].split("-")
    return int(num), int(total)


def test_real_psbts_survive_a_camera_that_misses_frames():
    psbts = _psbts()
    assert len(psbts) >= 6
    rng = random.Random(174)
    for psbt in psbts:
        frames = ur.encode_parts(psbt, max_fragment_len=40)
        seq_len = _seq(frames[0])[1]
        assert seq_len > 1 and len(frames) == 2 * seq_len
        assert [_seq(f) for f in frames] == [(n, seq_len) for n in range(1, 2 * seq_len + 1)]

        stream = ur.encode_parts(psbt, max_fragment_len=40, count=8 * seq_len)
        assert stream[:2 * seq_len] == frames                              # one fixed sequence
        missed = set(rng.sample(range(seq_len), max(1, seq_len // 3)))      # pure frames the camera missed
        scanned = [f for i, f in enumerate(stream) if i not in missed and (i < seq_len or rng.random() < 0.6)]
        rng.shuffle(scanned)
        decoded = ur.decode(scanned + scanned[:5])                        # any order, repeats welcome
        assert decoded == psbt and PSBT.parse(decoded).serialize() == psbt


def test_small_psbt_is_a_single_frame():
    psbt = _psbts()[0]
    assert ur.encode_parts(psbt, max_fragment_len=1000) == [ur.encode_single(psbt)]
    assert ur.decode(ur.encode_parts(psbt, max_fragment_len=1000)) == psbt


def test_incremental_decoder_reports_progress():
    psbt = _psbts()[0]
    frames = ur.encode_parts(psbt, max_fragment_len=100)
    decoder = ur.URDecoder()
    assert decoder.progress == (0, 0)
    assert decoder.receive(frames[0]) is False and decoder.progress == (1, _seq(frames[0])[1])
    for frame in frames[1:]:
        decoder.receive(frame)
    assert decoder.is_complete and decoder.result() == psbt


# -- refusals ------------------------------------------------------------------------------------------------
def _frames() -> list[str]:
    """A 555-byte PSBT as 12 frames: 6 fragments of 93 bytes, then 6 mixes."""
    return ur.encode_parts(_psbts()[0], max_fragment_len=100)


def _tamper(frame: str, at: int = -10) -> str:
    """Swap one byteword for another, as a misread would."""
    words = frame.rsplit("/", 1)
    body = words[1]
    i = len(body) + at if at < 0 else at
    i -= i % 2
    pair = body[i:i + 2]
    other = "ae" if pair != "ae" else "ad"
    return f"{words[0]}/{body[:i]}{other}{body[i + 2:]}"


def _reencode(frame: str, **changes) -> str:
    """The same frame with some fields changed, well-formed otherwise (label, bytewords checksum)."""
    part = ur.Part.from_cbor(ur.bytewords_decode(frame.rsplit("/", 1)[1]))
    return ur.encode_part(ur.Part(**{**part.__dict__, **changes}))


def _data_len(frame: str) -> int:
    return len(ur.Part.from_cbor(ur.bytewords_decode(frame.rsplit("/", 1)[1])).data)


@pytest.mark.parametrize("mutate, message", [
    (lambda f: [_tamper(f[0])] + f[1:], "bytewords: checksum mismatch"),
    (lambda f: f + [_tamper(f[3], 30)], "bytewords: checksum mismatch"),                 # even past completion
    (lambda f: [f[0][:-4] + "xxxx"], "not a byteword"),
    (lambda f: [x.replace("ur:crypto-psbt", "ur:bytes") for x in f], "wrong UR type.*ur:bytes"),
    (lambda f: [x.replace("ur:crypto-psbt", "ur:crypto_psbt") for x in f], "not a UR type"),
    (lambda f: f[:2], r"not enough frames: 2 of \d+"),
    (lambda f: f[1:_seq(f[0])[1]], r"not enough frames"),
    (lambda f: [f[0].replace("/1-", "/2-", 1)] + f[1:], "label and its content disagree"),
    (lambda f: [f[0].replace("/1-", "/0-", 1)] + f[1:], "bad sequence component"),
    (lambda f: [f[0].replace("/1-", "/x-", 1)] + f[1:], "bad sequence component"),
    (lambda f: ["https://example.com/psbt"], "not a UR"),
    (lambda f: ["ur:crypto-psbt"], "a UR is ur:<type>/<body>"),
    (lambda f: ["ur:crypto-psbt/1-2/3/" + f[0].rsplit("/", 1)[1]], "a UR is ur:<type>/<body>"),
    (lambda f: [], "no UR frames given"),
    (lambda f: [_reencode(f[0], message_len=10_000)] + f[1:], "inconsistent lengths"),
    (lambda f: [_reencode(f[0], seq_len=20_000, message_len=20_000 * _data_len(f[0]))], "more than the"),
    (lambda f: [f[0], _reencode(f[1], checksum=1)] + f[2:], "different messages"),
    (lambda f: [_reencode(x, checksum=0x12345678) for x in f], "fails its CRC-32 checksum"),
    (lambda f: f + [_reencode(f[-1], data=bytes(_data_len(f[-1])))], "does not match the recovered message"),
    (lambda f: f + [ur.encode_single(_psbts()[0])], "single-part UR cannot be combined"),
])
def test_bad_frames_are_refused(mutate, message):
    with pytest.raises(ur.URError, match=message):
        ur.decode(mutate(_frames()))


def test_frames_of_two_psbts_are_not_mixed():
    a, b = _psbts()[0], _psbts()[2]
    frames_a = ur.encode_parts(a, max_fragment_len=100)
    frames_b = ur.encode_parts(b, max_fragment_len=100)
    with pytest.raises(ur.URError, match="different messages"):
        ur.decode(frames_a[:2] + frames_b[2:])


def test_payload_must_be_a_binary_psbt():
    psbt = _psbts()[0]
    with pytest.raises(ur.URError, match="binary PSBT"):
        ur.encode_parts(base64.b64encode(psbt))                      # base64 text instead of bytes
    with pytest.raises(ur.URError, match="binary PSBT"):
        ur.decode([ur.encode_single(b"not a psbt", ur_type="bytes").replace("ur:bytes", "ur:crypto-psbt")])
    not_bytes = "ur:crypto-psbt/" + ur.bytewords_encode(ur.cbor_encode([1, 2]))
    with pytest.raises(ur.URError, match="must hold a CBOR byte string"):
        ur.decode([not_bytes])
