"""Membership (seeds, gossip, heartbeats) and backbone selection (KV + DDV)."""
