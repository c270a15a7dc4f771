"""The per-device learner: modality adapters, the Perceiver IO core, task masks and metrics.

Knows nothing of the network: it is driven in-process by ``crossback.node`` and ``crossback.transfer``.
"""
