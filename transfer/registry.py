"""The one place transfer strategies are listed, by the name a node's config uses (``transfer.strategy``).

A strategy is registered with a factory ``(TransferConfig, StrategyContext) -> TransferStrategy``. Adding
one is a module in ``transfer/`` and a ``register`` call; nothing in selection or the node names it.
Registration is process-wide (like a plugin), not per node: a node's config only picks a name.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

from crossback.config.errors import ConfigError
from crossback.config.transfer import TransferConfig

from .base import TransferStrategy
from .crossback import CrossBackTransfer, TaskTransfer
from .freqkd import FreqKDTransfer
from .mergenet import MergeNetTransfer
from .mona import MonaTransfer


@dataclass(frozen=True)
class StrategyContext:
    """What a node knows that a strategy may need besides its config section."""

    public_set: str = ""  # the public paired set this node holds out (crossback.data.public_set), "" for none
    pair_secret: bytes = b""  # the swarm's pair secret (crossback.transfer.pairs), b"" for none


Factory = Callable[[TransferConfig, StrategyContext], TransferStrategy]


def _crossback(cfg: TransferConfig, ctx: StrategyContext) -> TransferStrategy:
    return TaskTransfer() if cfg.borrow == "task" else CrossBackTransfer(borrow=cfg.borrow)


_FACTORIES: dict[str, Factory] = {
    "crossback": _crossback,
    "mergenet": lambda cfg, ctx: MergeNetTransfer(cfg.mergenet),
    "mona": lambda cfg, ctx: MonaTransfer(cfg.mona),
    "freqkd": lambda cfg, ctx: FreqKDTransfer(cfg.freqkd, ctx.public_set, ctx.pair_secret),
}


def strategy_names() -> tuple[str, ...]:
    return tuple(_FACTORIES)


@contextmanager
def registered(name: str, factory: Factory) -> Iterator[None]:
    """Make ``name`` a valid ``transfer.strategy`` while the block runs (a strategy outside this
    package, e.g. a test's or an experiment's); it cannot replace a listed one."""
    if name in _FACTORIES:
        raise ValueError(f"transfer strategy {name!r} is already registered")
    _FACTORIES[name] = factory
    try:
        yield
    finally:
        del _FACTORIES[name]


def check_name(name: str, where: str = "transfer.strategy") -> None:
    """ConfigError naming ``where`` unless ``name`` is a registered strategy."""
    if name not in _FACTORIES:
        raise ConfigError(f"{where}: {name!r} is not one of {list(_FACTORIES)}")


def make_strategy(cfg: TransferConfig, public_set: str = "", pair_secret: bytes = b"") -> TransferStrategy:
    """The configured strategy; ``public_set`` and ``pair_secret``: see ``StrategyContext``."""
    check_name(cfg.strategy)
    return _FACTORIES[cfg.strategy](cfg, StrategyContext(public_set, pair_secret))
