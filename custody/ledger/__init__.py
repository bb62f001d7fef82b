"""What the custodian holds: policies and their keys (the registry), addresses, coins, labels and balances, and the
sync that follows the chain (one leader per database)."""
