"""What users run: the `crossback` command, training runs, the demo, local swarms, predict, export."""
