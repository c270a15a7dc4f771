"""The node process: config, checkpoints, logs, CLI (and later the gRPC server and client)."""
