"""Datasets, task streams and splits: bundled emoji and digits, user folders, paper datasets."""
