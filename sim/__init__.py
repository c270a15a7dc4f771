"""The simulator: a scenario file -> a plan -> devices running under a backend -> a report."""
