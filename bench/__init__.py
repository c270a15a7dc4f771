"""`crossback bench`: paired, seeded measurements of what borrowing from a peer is worth."""
