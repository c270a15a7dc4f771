"""Configuration: the YAML loader, declared bounds, the config errors and every config dataclass.

A leaf: it imports nothing else of crossback, so loading or checking a config never pulls in torch,
the network or the application.
"""
