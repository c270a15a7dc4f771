"""A scenario and a seed -> the plan: every device's node config, task stream, arrival times, profile and
link, and the timeline as absolute events. A pure function of its inputs (and of the data set's items):
the same scenario and seed give the same plan, byte for byte (``Plan.digest``). Backends and the report
read only the plan.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import random
import zlib
from dataclasses import dataclass
from pathlib import Path

from crossback.config.errors import ConfigError
from crossback.config.node import CallLimits
from crossback.config.presets import PRESETS
from crossback.config.scenario import DeviceGroup, Event, Link, Profile, Scenario

from .partition import class_pool, group_streams
from .trace import read_trace

# what every device starts from before the scenario's defaults and its group's overrides: the demo's
# small model and budgets (a device learns a task in seconds to a minute on a share of a core)
BASE_CONFIG = {
    "model": {"token_dim": 64, "num_latents": 24, "latent_dim": 64, "depth": 2, "cross_dim_head": 64,
              "latent_heads": 4, "latent_dim_head": 16, "queries_dim": 64},
    "method": {"name": "packnet", "packnet": {"prune_ratio": 0.5, "retrain_epochs": 2}},
    "train": {"epochs": 8, "batch_size": 32, "lr": 0.002},
    "node": {"heartbeat_interval": 0.5, "failure_timeout": 5.0, "serve": ["kv", "ddv", "backbone", "task"]},
    "adaptation": {"epochs": 4},
}
# how each bundled source's images become tokens (the adapter may differ per group; the core may not)
SOURCE_VIEWS = {"digits": ({"image_size": 8}, {"channels": 1, "patch_size": 2}),
                "fashion": ({"image_size": 28}, {"channels": 1, "patch_size": 4}),
                "emoji": ({"image_size": 32}, {"channels": 3, "patch_size": 4})}
TEXT_VIEW = {"max_length": 48}
ADDRESSED_KEYS = ("node_id", "listen", "advertise", "seed_peers", "state_dir", "log_dir", "arrival_origin")
SEEDS_PER_DEVICE = 4  # addresses a device starts from; gossip finds the rest


@dataclass(frozen=True)
class DevicePlan:
    device: str
    group: str
    modality: str
    profile: Profile
    link: Link
    join: float  # seconds after the run starts
    tasks: tuple[dict, ...]  # {"name", "classes"}
    arrivals: tuple[float, ...]  # seconds after join; () = all at start
    shared: bool  # learns its group's common stream
    seeds: tuple[str, ...]  # devices it is seeded with
    config: dict  # its node config, without what the backend decides (addresses, folders, origin)


@dataclass(frozen=True)
class PlannedEvent:
    at: float
    do: str  # join | leave | crash | restart | pause | resume | partition | heal | link
    devices: tuple[str, ...] = ()
    sides: tuple[tuple[str, ...], ...] = ()  # partition / heal: device ids on each side
    link: str | None = None
    mib: int | None = None  # pressure: memory another application takes
    duration: float | None = None  # pressure: for how long
    source: str = ""  # the scenario key it came from (timeline[3], churn[0], devices[1].join, ...)


@dataclass(frozen=True)
class Plan:
    name: str
    seed: int
    duration: float
    until: str
    settle: float
    genesis: int
    target_accuracy: float | None
    devices: tuple[DevicePlan, ...]
    events: tuple[PlannedEvent, ...]
    links: dict  # name -> Link (presets and the scenario's own)
    profiles: dict  # name -> Profile

    def device(self, device_id: str) -> DevicePlan:
        return next(d for d in self.devices if d.device == device_id)

    def to_dict(self) -> dict:
        return {"format": "crossback.plan/1", **dataclasses.asdict(self)}

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    def write(self, path: Path) -> None:
        path.write_text(json.dumps({**self.to_dict(), "digest": self.digest}, indent=1), encoding="utf-8")


def plan_from_dict(data: dict) -> Plan:
    """A plan read back from plan.json (the report and ``crossback report`` read it)."""
    links = {k: Link(**v) for k, v in data["links"].items()}
    profiles = {k: Profile(**v) for k, v in data["profiles"].items()}
    devices = tuple(DevicePlan(**{**d, "profile": Profile(**d["profile"]), "link": Link(**d["link"]),
                                  "tasks": tuple(d["tasks"]), "arrivals": tuple(d["arrivals"]),
                                  "seeds": tuple(d["seeds"])}) for d in data["devices"])
    events = tuple(PlannedEvent(**{**e, "devices": tuple(e["devices"]), "sides": tuple(tuple(s) for s in e["sides"])})
                   for e in data["events"])
    return Plan(data["name"], data["seed"], data["duration"], data["until"], data["settle"], data["genesis"],
                data["target_accuracy"],
                devices, events, links, profiles)


def _rng(*parts) -> random.Random:
    return random.Random(zlib.crc32(":".join(map(str, parts)).encode()))


def merge(base: dict, over: dict) -> dict:
    """``over`` merged into a copy of ``base``, mapping by mapping (lists and values replace)."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            else copy.deepcopy(value)
    return out


def make_plan(sc: Scenario, seed: int | None = None) -> Plan:
    """The plan of ``sc`` under ``seed`` (default: the scenario's own)."""
    seed = sc.seed if seed is None else seed
    profiles = {**PRESETS["profiles"], **{p.name: p for p in sc.profiles}}
    links = {**PRESETS["links"], **{ln.name: ln for ln in sc.links}}
    devices = []
    for gi, group in enumerate(sc.devices):
        pool = class_pool(group, f"devices[{gi}]")
        streams = group_streams(group, pool, seed, sc.genesis, f"devices[{gi}]")
        for i, stream in enumerate(streams):
            device_id = f"{group.name}-{i}"
            devices.append(DevicePlan(
                device=device_id, group=group.name, modality=group.modality,
                profile=profiles[group.profile or "server"], link=links[group.link or "loopback"],
                join=group.join, tasks=tuple(stream.tasks), arrivals=_arrivals(group, seed, device_id),
                shared=stream.shared, seeds=(), config=_node_config(sc, group, gi, i, stream, seed)))
    devices = _with_seeds(devices, seed)
    events = _events(sc, devices, seed)
    return Plan(sc.name, seed, sc.duration, sc.until, sc.settle, sc.genesis, sc.target_accuracy, tuple(devices), events,
                links, profiles)


def _arrivals(group: DeviceGroup, seed: int, device_id: str) -> tuple[float, ...]:
    a, n = group.arrivals, group.partition.tasks
    if a.kind == "start":
        return ()
    if a.kind == "scheduled":
        return tuple(float(t) for t in a.at)
    rng, t, out = _rng(seed, "arrivals", device_id), a.first, []
    for _ in range(n):
        out.append(round(t, 3))
        t += rng.expovariate(1.0 / a.mean_gap)
    return tuple(out)


def _node_config(sc: Scenario, group: DeviceGroup, gi: int, i: int, stream, seed: int) -> dict:
    source_view, adapter = SOURCE_VIEWS.get(group.source, ({}, {}))
    cfg = merge(BASE_CONFIG, {"model": {"image": adapter, "text": TEXT_VIEW}})
    cfg = merge(cfg, sc.defaults)
    cfg = merge(cfg, group.overrides)
    shortcut = {}
    if group.method:
        shortcut["method"] = {"name": group.method}
    if group.strategy:
        shortcut["transfer"] = {"strategy": group.strategy}
    if group.serve is not None:
        shortcut["node"] = {"serve": list(group.serve)}
    cfg = merge(cfg, shortcut)
    for key in ("tasks", "seed", "swarm"):
        if key in cfg:
            raise ConfigError(f"devices[{gi}].overrides.{key}: set by the plan (the scenario's seed and genesis, "
                              "the group's partition)")
    node = cfg.get("node", {})
    fixed = [k for k in ADDRESSED_KEYS + ("task_arrivals", "threads") if k in node]
    if fixed:
        raise ConfigError(f"devices[{gi}]: node.{fixed[0]} is set per device by the simulator (profile, arrivals, "
                          "addresses, folders)")
    cfg["node"] = {**node, "expensive": _one_caller_behind_the_relay(node.get("expensive", {}))}
    data = {"source": group.source, "modality": group.modality, "split_seed": sc.genesis,
            **({"root": group.root} if group.root else {}),
            **({"image_size": group.image_size or source_view.get("image_size", 32)}
               if group.modality == "image" else {}),
            **({"shots": group.shots} if group.shots else {}),
            **({"partition": stream.partition} if stream.partition else {})}
    cfg["data"] = merge(cfg.get("data", {}), data)
    cfg["seed"] = _rng(seed, "device", group.name, i).randrange(2**31)
    cfg["tasks"] = [dict(t) for t in stream.tasks]
    cfg["swarm"] = {"genesis": sc.genesis}
    return cfg


def _one_caller_behind_the_relay(expensive: dict) -> dict:
    """A node shares its expensive work per caller *address* (its certificate under TLS); behind the
    relay every plaintext caller has the relay's address, so one caller's share is the whole pool
    unless the scenario says otherwise."""
    if "per_caller" in expensive:
        return dict(expensive)
    default = CallLimits()
    whole = expensive.get("slots", default.slots) + expensive.get("waiting", default.waiting)
    return {**expensive, "per_caller": min(256, whole)}


def _with_seeds(devices: list[DevicePlan], seed: int) -> list[DevicePlan]:
    """Every device is seeded with the earliest joiners and a few drawn at random, never itself."""
    order = sorted(devices, key=lambda d: (d.join, d.device))
    out = []
    for d in devices:
        first = [o.device for o in order if o.device != d.device][: SEEDS_PER_DEVICE // 2]
        rest = [o.device for o in order if o.device != d.device and o.device not in first]
        drawn = _rng(seed, "seeds", d.device).sample(rest, min(len(rest), SEEDS_PER_DEVICE - len(first)))
        out.append(dataclasses.replace(d, seeds=tuple(first + sorted(drawn))))
    return out


def _resolve(name: str, devices: list[DevicePlan]) -> tuple[str, ...]:
    if name == "all":
        return tuple(d.device for d in devices)
    hits = tuple(d.device for d in devices if d.group == name or d.device == name)
    return hits


ENDS = {"crash": "restart", "leave": "join", "pause": "resume", "partition": "heal"}


def _events(sc: Scenario, devices: list[DevicePlan], seed: int) -> tuple[PlannedEvent, ...]:
    events: list[tuple[float, int, PlannedEvent]] = []
    order = 0

    def add(ev: PlannedEvent) -> None:
        nonlocal order
        events.append((ev.at, order, ev))
        order += 1

    traced = {}
    for ci, churn in enumerate(sc.churn):
        if churn.model == "trace":
            for device, spans in read_trace(Path(churn.file), {d.device for d in devices}).items():
                traced[device] = (spans, churn.action, f"churn[{ci}]")
    for gi, group in enumerate(sc.devices):
        members = tuple(d.device for d in devices if d.group == group.name and d.device not in traced)
        if members:
            add(PlannedEvent(group.join, "join", members, source=f"devices[{gi}].join"))
    for device, (spans, action, source) in sorted(traced.items()):
        for k, (on, off) in enumerate(spans):
            add(PlannedEvent(on, "join" if k == 0 or action == "leave" else "restart", (device,), source=source))
            if off is not None and off < sc.duration:
                add(PlannedEvent(off, action, (device,), source=source))
    for ti, ev in enumerate(sc.timeline):
        _timeline_event(ev, f"timeline[{ti}]", devices, add)
    for ci, churn in enumerate(sc.churn):
        if churn.model == "exponential":
            for device in _resolve(churn.target, devices):
                d = next(x for x in devices if x.device == device)
                rng, t = _rng(seed, "churn", ci, device), max(churn.start, d.join)
                back = "restart" if churn.action == "crash" else "join"
                while True:
                    t += rng.expovariate(1.0 / churn.mean_on)
                    if t >= sc.duration:
                        break
                    add(PlannedEvent(round(t, 3), churn.action, (device,), source=f"churn[{ci}]"))
                    t += rng.expovariate(1.0 / churn.mean_off)
                    if t >= sc.duration:
                        break
                    add(PlannedEvent(round(t, 3), back, (device,), source=f"churn[{ci}]"))
    return tuple(ev for _, _, ev in sorted(events, key=lambda x: (x[0], x[1])))


def _timeline_event(ev: Event, source: str, devices: list[DevicePlan], add) -> None:
    if ev.do in ("partition", "heal"):
        sides = tuple(tuple(sorted({x for name in side for x in _resolve(name, devices)})) for side in ev.sides)
        if len(sides) == 2 and set(sides[0]) & set(sides[1]):
            raise ConfigError(f"{source}.sides: device(s) {sorted(set(sides[0]) & set(sides[1]))} on both sides")
        add(PlannedEvent(ev.at, ev.do, sides=sides, source=source))
        if ev.duration is not None:
            add(PlannedEvent(ev.at + ev.duration, "heal", sides=sides, source=source))
        return
    targets = _resolve(ev.target, devices)
    if ev.do == "pressure":
        for d in devices:
            if d.device in targets and d.profile.memory_mib is not None and ev.mib >= d.profile.memory_mib:
                raise ConfigError(f"{source}.mib: {ev.mib} MiB does not fit under {d.device}'s memory limit "
                                  f"({d.profile.memory_mib} MiB, profile {d.profile.name}): the node must be the "
                                  "one the kernel kills")
        add(PlannedEvent(ev.at, ev.do, targets, mib=ev.mib, duration=ev.duration, source=source))
        return
    add(PlannedEvent(ev.at, ev.do, targets, link=ev.link, source=source))
    if ev.duration is None:
        return
    if ev.do == "link":  # back to each device's planned link
        for d in devices:
            if d.device in targets:
                add(PlannedEvent(ev.at + ev.duration, "link", (d.device,), link=d.link.name, source=source))
    else:
        add(PlannedEvent(ev.at + ev.duration, ENDS[ev.do], targets, source=source))
