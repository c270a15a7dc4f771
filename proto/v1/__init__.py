"""crossback.v1 wire contract: peer.proto and its generated Python modules."""
