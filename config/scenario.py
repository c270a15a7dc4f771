"""A simulation scenario (``crossback simulate SCENARIO.yaml``): a population of devices, their resources,
their links, their task arrivals and a timeline of what happens to them.

Loaded strictly like every config: an unknown key, a wrong type, a value out of bounds or a name that
refers to nothing is an error naming the file and the dotted key. ``crossback.sim.plan`` turns a
scenario and its seed into every device's node config and the timeline as absolute events.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .bounds import bounded
from .data import MODALITIES, SOURCES
from .errors import ConfigError
from .loader import from_mapping, key_paths, read_yaml

PARTITIONS = ("fixed", "dirichlet")
ARRIVALS = ("start", "scheduled", "poisson")
ACTIONS = ("join", "leave", "crash", "restart", "pause", "resume", "partition", "heal", "link", "pressure")
CHURN_MODELS = ("exponential", "trace")
CHURN_ACTIONS = ("leave", "crash")


@dataclass(frozen=True)
class Profile:
    """A device's resource envelope. ``cpus``: a share of one core (0.5 = half a core), enforced by a CPU
    cgroup quota; ``memory_mib``: the memory cgroup's limit (the kernel kills a device over it);
    ``threads``: torch's CPU threads in the node (what a device with that many cores would use)."""

    name: str
    cpus: float | None = bounded(None, gt=0.0, le=1024.0)
    memory_mib: int | None = bounded(None, ge=64, le=1 << 24)
    threads: int = bounded(1, ge=1, le=1024)


@dataclass(frozen=True)
class Link:
    """A device's access link, each direction apart: rates in Mbit/s (None: unlimited), ``latency_ms``
    one way per direction (a message between two devices crosses both of their links), ``jitter_ms``
    the half-width of a uniform spread around it, ``loss`` the share of packets lost."""

    name: str
    up_mbit: float | None = bounded(None, gt=0.0, le=100_000.0)
    down_mbit: float | None = bounded(None, gt=0.0, le=100_000.0)
    latency_ms: float = bounded(0.0, ge=0.0, le=60_000.0)
    jitter_ms: float = bounded(0.0, ge=0.0, le=60_000.0)
    loss: float = bounded(0.0, ge=0.0, lt=1.0)


@dataclass(frozen=True)
class Partition:
    """How a group's classes become each device's task stream. ``fixed``: every task draws
    ``classes_per_task`` of the group's classes (no class twice on one device); ``dirichlet``: each
    class's items are spread over the group's devices by Dirichlet(``alpha``) shares (the federated
    label-skew convention), and a device's tasks are its best-held classes, ``classes_per_task`` at a
    time. ``shared``: this share of the devices learn one common stream instead (where borrowing pays)."""

    kind: str = bounded("fixed", choices=PARTITIONS)
    classes_per_task: int = bounded(2, ge=2, le=100_000)
    tasks: int = bounded(1, ge=1, le=1000)
    alpha: float = bounded(0.5, gt=0.0, le=1e6)
    shared: float = bounded(0.0, ge=0.0, le=1.0)
    min_items: int = bounded(4, ge=2, le=1_000_000)  # dirichlet: a class joins a device's tasks from this many items


@dataclass(frozen=True)
class Arrivals:
    """When a device meets its tasks, in seconds after it joined. ``start``: all at once (one after
    another as fast as it learns); ``scheduled``: task i at ``at[i]``; ``poisson``: the first at
    ``first``, the gaps after it exponential with mean ``mean_gap`` (seeded per device)."""

    kind: str = bounded("start", choices=ARRIVALS)
    at: tuple[float, ...] = ()
    first: float = bounded(0.0, ge=0.0, le=1e7)
    mean_gap: float = bounded(60.0, gt=0.0, le=1e7)


@dataclass(frozen=True)
class DeviceGroup:
    name: str
    count: int = bounded(1, ge=1, le=10_000)
    modality: str = bounded("image", choices=MODALITIES)
    source: str = bounded("digits", choices=SOURCES)
    root: str | None = None  # folder and paper sets; relative to the scenario file
    image_size: int | None = bounded(None, ge=1, le=65536)
    classes: tuple[str, ...] = ()  # the classes the group draws from; empty: every class of the source
    partition: Partition = field(default_factory=Partition)
    shots: int | None = bounded(None, ge=1, le=1_000_000)  # items per class in train and in val
    arrivals: Arrivals = field(default_factory=Arrivals)
    join: float = bounded(0.0, ge=0.0, le=1e7)  # seconds after the run starts when the group's devices start
    profile: str | None = None
    link: str | None = None
    method: str | None = None  # packnet | piggyback | cpg
    strategy: str | None = None  # crossback | mergenet | mona | freqkd
    serve: tuple[str, ...] | None = None  # payload kinds the group's nodes serve
    # any node-config sections, merged over the scenario's defaults (model, train, selection, ...)
    overrides: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Event:
    """One timeline entry. ``target``: a device id (``cams-2``), a group name or ``all``; ``sides``: the
    two sides of a partition, each a list of groups or devices; ``duration``: seconds until the matching
    resume / heal / restart / rejoin (none: it lasts); ``link``: the link a ``link`` event switches to;
    ``mib``: what a ``pressure`` event's other application takes of the device's memory for ``duration``
    (with the node over the profile's memory limit, the kernel kills the node, not that application)."""

    at: float = bounded(ge=0.0, le=1e7)
    do: str = bounded(choices=ACTIONS)
    target: str = ""
    sides: tuple[tuple[str, ...], ...] = ()
    duration: float | None = bounded(None, gt=0.0, le=1e7)
    link: str | None = None
    mib: int | None = bounded(None, ge=1, le=1 << 24)


@dataclass(frozen=True)
class Churn:
    """Random comings and goings. ``exponential``: each device of ``target`` alternates on and off
    periods drawn with means ``mean_on`` / ``mean_off`` (seeded); ``trace``: a CSV file of
    ``device,on,off`` rows (seconds; FedScale's availability traces have this shape) names when each
    device is reachable. Going off is ``action`` (leave: SIGTERM, crash: SIGKILL); coming back restarts it."""

    model: str = bounded(choices=CHURN_MODELS)
    target: str = "all"
    mean_on: float = bounded(300.0, gt=0.0, le=1e7)
    mean_off: float = bounded(60.0, gt=0.0, le=1e7)
    action: str = bounded("crash", choices=CHURN_ACTIONS)
    file: str | None = None  # trace: relative to the scenario file
    start: float = bounded(0.0, ge=0.0, le=1e7)  # exponential: no churn before this


@dataclass(frozen=True)
class Scenario:
    devices: tuple[DeviceGroup, ...]
    name: str = "scenario"
    seed: int = bounded(0, ge=0, lt=2**31)
    duration: float = bounded(600.0, gt=0.0, le=1e7)  # seconds; the run ends then, or once every task is done
    until: str = bounded("done", choices=("done", "duration"))
    # with until: done, the run goes on this long after the last event and task (views reconverge)
    settle: float = bounded(15.0, ge=0.0, le=1e6)
    genesis: int = bounded(0, ge=0, lt=2**31)  # the swarm genesis every device starts from
    profiles: tuple[Profile, ...] = ()
    links: tuple[Link, ...] = ()
    timeline: tuple[Event, ...] = ()
    churn: tuple[Churn, ...] = ()
    defaults: dict = field(default_factory=dict)  # node-config sections every device starts from
    target_accuracy: float | None = bounded(None, gt=0.0, le=1.0)  # time-to-accuracy goal (default: per task)


def _named(items, kind: str, where: str) -> dict:
    seen: dict = {}
    for i, item in enumerate(items):
        if item.name in seen:
            raise ConfigError(f"{where}[{i}].name: {kind} {item.name!r} is defined twice")
        seen[item.name] = item
    return seen


def _check(sc: Scenario, presets: dict[str, Any]) -> None:
    groups = _named(sc.devices, "device group", "devices")
    profiles = {**presets["profiles"], **_named(sc.profiles, "profile", "profiles")}
    links = {**presets["links"], **_named(sc.links, "link", "links")}
    for group in groups:
        if group in ("all",) or "-" in group and group.rsplit("-", 1)[1].isdigit():
            raise ConfigError(f"devices: group name {group!r} is reserved or reads like a device id")
    devices = {f"{g.name}-{i}" for g in sc.devices for i in range(g.count)}
    for i, g in enumerate(sc.devices):
        where = f"devices[{i}]"
        if g.profile is not None and g.profile not in profiles:
            raise ConfigError(f"{where}.profile: unknown profile {g.profile!r} (known: {sorted(profiles)})")
        if g.link is not None and g.link not in links:
            raise ConfigError(f"{where}.link: unknown link {g.link!r} (known: {sorted(links)})")
        if g.arrivals.kind == "scheduled":
            at = g.arrivals.at
            if len(at) != g.partition.tasks:
                raise ConfigError(f"{where}.arrivals.at: {len(at)} times for {g.partition.tasks} task(s)")
            if list(at) != sorted(at) or any(t < 0 for t in at):
                raise ConfigError(f"{where}.arrivals.at: times must be non-negative and in order, got {list(at)}")
        elif g.arrivals.at:
            raise ConfigError(f"{where}.arrivals.at: only for kind: scheduled")
        if g.source in ("folder", "cifar100", "cub200", "oxford102") and not g.root:
            raise ConfigError(f"{where}.root: required for source {g.source!r}")
        if len(g.classes) == 1:
            raise ConfigError(f"{where}.classes: a task needs at least 2 classes")

    def known_target(name: str, key: str, allow_all: bool = True) -> None:
        if name in groups or name in devices or (allow_all and name == "all"):
            return
        raise ConfigError(f"{key}: {name!r} is neither a device group ({sorted(groups)}), a device id "
                          f"(e.g. {sorted(devices)[0]}){' nor all' if allow_all else ''}")

    for i, ev in enumerate(sc.timeline):
        where = f"timeline[{i}]"
        if ev.do in ("partition", "heal"):
            if ev.do == "partition" and len(ev.sides) != 2:
                raise ConfigError(f"{where}.sides: a partition has two sides, each a list of groups or devices")
            for s, side in enumerate(ev.sides):
                if not side:
                    raise ConfigError(f"{where}.sides[{s}]: empty")
                for j, name in enumerate(side):
                    known_target(name, f"{where}.sides[{s}][{j}]", allow_all=False)
            if ev.target:
                raise ConfigError(f"{where}.target: a {ev.do} names its sides, not a target")
        else:
            if not ev.target:
                raise ConfigError(f"{where}.target: required for {ev.do}")
            known_target(ev.target, f"{where}.target")
            if ev.sides:
                raise ConfigError(f"{where}.sides: only for partition and heal")
        if ev.do == "link":
            if ev.link is None:
                raise ConfigError(f"{where}.link: required for a link change")
            if ev.link not in links:
                raise ConfigError(f"{where}.link: unknown link {ev.link!r} (known: {sorted(links)})")
        elif ev.link is not None:
            raise ConfigError(f"{where}.link: only for do: link")
        if ev.do == "pressure":
            if ev.mib is None or ev.duration is None:
                raise ConfigError(f"{where}: a pressure event needs mib and duration")
        elif ev.mib is not None:
            raise ConfigError(f"{where}.mib: only for do: pressure")
        if ev.duration is not None and ev.do not in ("leave", "crash", "pause", "partition", "link", "pressure"):
            raise ConfigError(f"{where}.duration: {ev.do} takes none (it ends something)")
    for i, ch in enumerate(sc.churn):
        where = f"churn[{i}]"
        if ch.model == "trace" and not ch.file:
            raise ConfigError(f"{where}.file: required for model: trace")
        if ch.model == "exponential":
            if ch.file:
                raise ConfigError(f"{where}.file: only for model: trace")
            known_target(ch.target, f"{where}.target")


def parse_scenario(data: Any, source: str = "scenario", base_dir: Path | None = None) -> Scenario:
    """Validate a scenario; relative ``root`` and churn ``file`` paths resolve against ``base_dir``."""
    from .presets import PRESETS  # the named profiles and links, with how their numbers were chosen

    try:
        sc = from_mapping(Scenario, data, "", key_paths({"": Scenario}))
        if not sc.devices:
            raise ConfigError("devices: at least one device group")
        _check(sc, PRESETS)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return _resolve_paths(sc, base_dir)


def _resolve_paths(sc: Scenario, base_dir: Path | None) -> Scenario:
    import dataclasses

    def resolve(p: str | None) -> str | None:
        if p is None:
            return None
        path = Path(p).expanduser()
        return str((base_dir / path).resolve()) if base_dir is not None and not path.is_absolute() else str(path)

    groups = tuple(dataclasses.replace(g, root=resolve(g.root)) for g in sc.devices)
    churn = tuple(dataclasses.replace(c, file=resolve(c.file)) for c in sc.churn)
    return dataclasses.replace(sc, devices=groups, churn=churn)


def load_scenario(path: str | Path) -> Scenario:
    path = Path(path)
    return parse_scenario(read_yaml(path, "scenario"), str(path), path.parent)
