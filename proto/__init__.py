"""Wire contract (crossback.v1): generated gRPC code lives here."""
