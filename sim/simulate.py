"""`crossback simulate SCENARIO.yaml --out RUN`: load, plan, run on a backend, report.

RUN/ holds scenario.yaml (as given), plan.json, configs/, logs/ and state/ of every device,
timeline.jsonl, resources.jsonl, run.json, and the report (report.json, report.md, *.csv,
timeline.png). ``crossback report RUN`` re-renders the report from those files alone.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
import time
from pathlib import Path

from crossback.config.errors import ConfigError
from crossback.config.scenario import load_scenario

from . import netns
from .compose import DEFAULT_IMAGE, BridgeNetwork, ComposeBackend, engine
from .driver import Driver, measure_links
from .fidelity import calibrate
from .local import LocalBackend
from .plan import Plan, make_plan
from .relay import Relay
from .report import write_report
from .swarm import Swarm, SwarmBackend, parse_placement
from .zygote import Zygote

BACKENDS = ("local", "compose", "swarm")
NETWORKS = ("auto", "namespaces", "loopback")
STARTS = ("fork", "spawn")


def prepare(scenario: Path, out: Path, seed: int | None = None) -> Plan:
    """Load and plan ``scenario`` into ``out`` (scenario.yaml, plan.json); the plan."""
    plan = make_plan(load_scenario(scenario), seed)
    out.mkdir(parents=True, exist_ok=True)
    if (out / "plan.json").exists():
        raise ConfigError(f"--out: {out} already holds a run (plan.json); choose a new folder")
    shutil.copyfile(scenario, out / "scenario.yaml")
    plan.write(out / "plan.json")
    return plan


def simulate(scenario: Path, out: Path, seed: int | None = None, backend: str = "local", log=print,
             fidelity: bool = True, network: str = "auto", start: str = "fork", image: str | None = None,
             place: list[str] | None = None) -> dict:
    with _sigterm_as_interrupt():  # a SIGTERMed simulator still stops its devices and removes what it made
        return _simulate(scenario, out, seed, backend, log, fidelity, network, start, image, place)


@contextlib.contextmanager
def _sigterm_as_interrupt():
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(*_):
        raise KeyboardInterrupt
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _simulate(scenario: Path, out: Path, seed: int | None, backend: str, log, fidelity: bool, network: str,
              start: str, image: str | None, place: list[str] | None = None) -> dict:
    """``backend``: ``local`` (processes on this machine), ``compose`` (a container each on the Docker
    engine of this machine; ``image``: crossback's image there) or ``swarm`` (a one-replica service each on
    the Swarm whose manager is at DOCKER_HOST; ``place``: GROUP=CONSTRAINT items). Local only: ``network``: ``namespaces``
    (every device in a network namespace, rates by tc; root), ``loopback`` (every device on loopback,
    everything by the relay) or ``auto`` (namespaces where possible); ``start``: ``fork`` (every device
    forked from one preloaded parent: shared libraries and code are shared) or ``spawn`` (a fresh
    interpreter each, as a user starts a node)."""
    if backend not in BACKENDS:
        raise ConfigError(f"--backend: {backend!r} is not one of {list(BACKENDS)}")
    if start not in STARTS:
        raise ConfigError(f"--start: {start!r} is not one of {list(STARTS)}")
    if network not in NETWORKS:
        raise ConfigError(f"--network: {network!r} is not one of {list(NETWORKS)}")
    if backend != "local" and network != "auto":
        raise ConfigError(f"--network {network}: only the local backend has a choice of networks")
    why = netns.unavailable()
    if backend == "local" and network == "namespaces" and why:
        raise ConfigError(f"--network namespaces: not possible here ({why})")
    if place and backend != "swarm":
        raise ConfigError("--place: only the swarm backend places devices")
    client = engine(backend) if backend != "local" else None  # before the plan: no run folder for a missing engine
    swarm = Swarm(client) if backend == "swarm" else None
    if swarm is not None:
        groups = list(dict.fromkeys(g.name for g in load_scenario(Path(scenario)).devices))
        placement = parse_placement(place, groups)
    out = Path(out)
    plan = prepare(Path(scenario), out, seed)
    log(f"plan {plan.digest[:12]}: {len(plan.devices)} devices, {len(plan.events)} events, "
        f"seed {plan.seed}, up to {plan.duration:g} s")
    if backend == "compose":
        runner, idle = _compose_runner(plan, out, client, image or DEFAULT_IMAGE, log, fidelity)
    elif backend == "swarm":
        runner, idle = _swarm_runner(plan, out, swarm, image or DEFAULT_IMAGE, placement, log, fidelity)
    else:
        runner, idle = _local_runner(plan, out, network, why, start, log, fidelity)
    for device, parts in runner.mechanisms()["not_applied"].items():
        log(f"{device}: not applied: {', '.join(parts)}")
    demand = runner.cpu_demand()
    if demand["oversubscription"] > 1:
        log(f"the profiles ask for {demand['profile_cores']:g} cores, this machine has {demand['machine_cores']}: "
            "while many devices are busy, each runs slower than its profile says")
    try:
        Driver(plan, runner, out, log=log, fidelity=fidelity, idle_fidelity=idle).run()
    finally:
        runner.close()
    return write_report(out)


def _measured(relay: Relay, plan: Plan, log, fidelity: bool, nets=None) -> list | None:
    """The relay calibrated and the links measured idle, before any device starts."""
    overhead = calibrate(relay, nets)
    log(f"the relay's own path: {2e3 * overhead:.2f} ms round trip, left out of every link's latency")
    return measure_links(relay, plan, "idle", log, nets) if fidelity else None


def _local_runner(plan: Plan, out: Path, network: str, why: str | None, start: str, log, fidelity: bool):
    nets = netns.Namespaces(os.getpid()) if network != "loopback" and not why else None
    if network == "auto" and why:
        log(f"devices share loopback and the relay shapes their rates too: no network namespaces ({why})")
    relay = Relay(host=nets.gateway if nets else "127.0.0.1", seed=plan.seed)
    zygote = None
    try:  # the run's clock starts after the zygote's imports and the links' measurement
        if start == "fork":
            (out / "logs").mkdir(exist_ok=True)
            zygote = Zygote.start(out / "logs" / "zygote.console",
                                  env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
            log(f"devices are forked from a preloaded parent (pid {zygote.proc.pid})")
        idle = _measured(relay, plan, log, fidelity, nets)
        return LocalBackend(plan, out, origin=time.time(), relay=relay, nets=nets, zygote=zygote), idle
    except BaseException:
        if zygote is not None:
            zygote.close()
        relay.close()
        if nets is not None:
            nets.close()
        raise


def _compose_runner(plan: Plan, out: Path, client, image: str, log, fidelity: bool):
    try:
        client.images.get(image)
    except Exception:
        raise ConfigError(f"--image: the engine has no image {image!r} (build it: docker compose build, or "
                          "docker build -t crossback:latest .)") from None
    network = BridgeNetwork(client, os.getpid())
    relay = Relay(host=network.gateway, seed=plan.seed)
    try:
        log(f"devices are containers of {image} on network {network.tag} ({network.subnet})")
        idle = _measured(relay, plan, log, fidelity)
        return ComposeBackend(plan, out, relay, network, client, image), idle
    except BaseException:
        relay.close()
        network.remove()
        raise


def _swarm_runner(plan: Plan, out: Path, swarm: Swarm, image: str, placement: dict, log, fidelity: bool):
    relay = Relay(host=swarm.relay_host(), seed=plan.seed)
    try:
        nodes = ", ".join(sorted(swarm.hostname(n) for n in swarm.nodes))
        log(f"devices are services of {image} on a Swarm of {len(swarm.nodes)} nodes ({nodes}); "
            f"the relay listens on {relay.host}")
        for group, constraints in placement.items():
            log(f"{group} placed where {' and '.join(constraints)}")
        idle = _measured(relay, plan, log, fidelity)
        return SwarmBackend(plan, out, relay, swarm, image, placement), idle
    except BaseException:
        relay.close()
        raise
