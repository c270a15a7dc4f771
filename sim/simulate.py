"""`crossback simulate SCENARIO.yaml --out RUN`: load, plan, run on a backend, report.

RUN/ holds scenario.yaml (as given), plan.json, configs/, logs/ and state/ of every device,
timeline.jsonl, resources.jsonl, run.json, and the report (report.json, report.md, *.csv,
timeline.png). ``crossback report RUN`` re-renders the report from those files alone.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

from crossback.config.errors import ConfigError
from crossback.config.scenario import load_scenario

from .driver import Driver, measure_links
from .local import LocalBackend
from .plan import Plan, make_plan
from .relay import Relay
from .report import write_report

BACKENDS = ("local",)


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
             fidelity: bool = True) -> dict:
    if backend not in BACKENDS:
        raise ConfigError(f"--backend: {backend!r} is not one of {list(BACKENDS)}")
    out = Path(out)
    plan = prepare(Path(scenario), out, seed)
    log(f"plan {plan.digest[:12]}: {len(plan.devices)} devices, {len(plan.events)} events, "
        f"seed {plan.seed}, up to {plan.duration:g} s")
    relay = Relay(seed=plan.seed)
    try:  # the links measured idle before any device starts; the run's clock starts after
        idle = measure_links(relay, plan, "idle", log) if fidelity else None
    except BaseException:
        relay.close()
        raise
    runner = LocalBackend(plan, out, origin=time.time(), relay=relay)
    for device, parts in runner.mechanisms()["not_applied"].items():
        log(f"{device}: not applied: {', '.join(parts)}")
    try:
        Driver(plan, runner, out, log=log, fidelity=fidelity, idle_fidelity=idle).run()
    finally:
        runner.close()
    return write_report(out)
