"""Bitcoin without a database or a network: keys, descriptors and policies, derivation, PSBT checking, building
and merging, BIP-322, UR, wallet-file formats, coin selection."""
