"""`make demo` at this stage: start the embedded node, mine to a demo address, move some coins,
and print the chain state an operator would look at."""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from custody.node_client import NodeClient, sats_to_btc
from regtest.launcher import start_node
from regtest.testwallet import TestWallet, Utxo


def main() -> int:
    miner, treasury = TestWallet("demo miner"), TestWallet("demo treasury")
    with tempfile.TemporaryDirectory(prefix="custody-demo-") as tmp:
        print(f"starting the embedded regtest node in {tmp} ...")
        node = start_node(Path(tmp))
        rpc = NodeClient(node.url, cookie_file=node.cookie_file)
        try:
            print(f"node answering on {node.url} (cookie {node.cookie_file})")
            hashes = rpc.generatetoaddress(101, miner.address())
            print(f"mined 101 blocks to the demo miner {miner.address()}")
            coinbase = rpc.getblock(hashes[0], 2)["tx"][0]
            coin = Utxo(coinbase["txid"], 0, int(coinbase["vout"][0]["value"] * 100_000_000), miner.wpkh)
            raw = miner.sign([coin], [(treasury.wpkh, 10 * 100_000_000), (miner.wpkh, coin.value - 10 * 100_000_000 - 1_410)])
            txid = rpc.sendrawtransaction(raw)
            print(f"sent 10 BTC to the treasury {treasury.address()} in {txid}")
            print(f"mempool: {rpc.getmempoolinfo()['size']} transaction(s)")
            block = rpc.generatetoaddress(1, miner.address())[0]
            print(f"confirmed in block {block}")
            info = rpc.getblockchaininfo()
            print("\nchain state")
            for key in ("chain", "blocks", "bestblockhash", "difficulty", "mediantime", "chainwork"):
                print(f"  {key:14} {info[key]}")
            for name, who in (("miner", miner), ("treasury", treasury)):
                scan = rpc.scantxoutset("start", [f"addr({who.address()})"])
                print(f"  {name:14} {len(scan['unspents'])} coin(s), {scan['total_amount']} BTC")
            stats = rpc.getblockstats(block)
            print(f"  last block     {stats['txs']} txs, fees {sats_to_btc(stats['totalfee'])} BTC")
        finally:
            node.stop()
    print("\nnode stopped; the demo chain lived in a temporary directory")
    return 0


if __name__ == "__main__":
    sys.exit(main())
