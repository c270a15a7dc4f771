"""`crossback bench compare A B`: two benchmark runs of the same units, one donor's arm against the same
donor's arm.

Two runs of one regime and seeds (e.g. two strategies, or a strategy and its ablation) learn identical
local models M_loc, so a donor's arm in run A and the same donor's arm in run B differ only in how the
task was finished: their difference, per unit and donor, is paired. Rows by direction (receiver <- donor
modality; the untrained control as its own row) and ``none`` against ``none``.
"""
from __future__ import annotations

import json
from pathlib import Path

from crossback.config.bench import BootstrapConfig

from .report import _ci, stratum
from .stats import summary


def unit_key(rec: dict) -> tuple:
    return rec["seed"], rec["receiver"], rec["shots"], rec["task"]


def read_units(folder: Path) -> list[dict]:
    paths = sorted(Path(folder).glob("seed-*/units/*.json"))
    if not paths:
        raise FileNotFoundError(f"{folder}: no benchmark units (seed-*/units/*.json)")
    return [r for p in paths for r in json.loads(p.read_text(encoding="utf-8"))]


def _arms(rec: dict) -> dict[str, dict]:
    return {c["peer"]: c for c in rec["candidates"] if c.get("error") is None and "test" in c}


def compare(a: list[dict], b: list[dict], boot: BootstrapConfig = BootstrapConfig()) -> dict:
    """Paired differences A - B of test accuracy over the units and donors both runs adapted."""
    kw = {"resamples": boot.resamples, "confidence": boot.confidence, "seed": boot.seed}
    other = {unit_key(r): r for r in b}
    rows: dict[str, list[tuple[float, str]]] = {}
    nones, missing = [], 0
    for rec in a:
        twin = other.get(unit_key(rec))
        if twin is None:
            missing += 1
            continue
        nones.append((rec["none"]["test"] - twin["none"]["test"], stratum(rec)))
        theirs = _arms(twin)
        for peer, arm in _arms(rec).items():
            if peer in theirs:
                source = "untrained" if arm["control"] else arm["modality"]
                rows.setdefault(f"{rec['modality']} <- {source}", []).append((arm["test"] - theirs[peer]["test"],
                                                                             stratum(rec)))
    pack = lambda pairs: summary([d for d, _ in pairs], **kw, strata=[s for _, s in pairs])  # noqa: E731
    return {"units": len(nones), "missing": missing, "none": pack(nones),
            "directions": {k: pack(v) for k, v in sorted(rows.items())}}


def markdown(result: dict, label_a: str, label_b: str) -> str:
    lines = [f"{label_a} - {label_b}: {result['units']} paired units"
             + (f" ({result['missing']} of A's units not in B)" if result["missing"] else "") + "; test accuracy, "
             "points, 95 % bootstrap CI [over units] (over seeds).", "",
             "| direction | donor arms | Δ [CI] | wins / losses / ties |", "|---|---:|---:|---:|",
             f"| none | {result['none']['n']} | {_ci(result['none'])} | {result['none']['wins']} / "
             f"{result['none']['losses']} / {result['none']['ties']} |"]
    for key, d in result["directions"].items():
        lines.append(f"| {key} | {d['n']} | {_ci(d)} | {d['wins']} / {d['losses']} / {d['ties']} |")
    return "\n".join(lines) + "\n"
