"""The `--json` form of every inspecting command: one object per call, its ``schema`` naming the command
and a version that changes only when a field changes meaning or disappears (fields may be added).
Documented in docs/json.md. Nothing here imports torch: `health`, `peers` and `status` stay light."""
from __future__ import annotations

import dataclasses
import json

VERSION = 1


def schema(command: str) -> str:
    return f"crossback.{command}/{VERSION}"


def dumps(obj: dict) -> str:
    return json.dumps(obj, indent=2, sort_keys=False)


def status_json(info) -> dict:
    """A node's GetInfo answer (``orchestrator_free.messages.PeerInfo``)."""
    fields = dataclasses.asdict(info)
    fields.pop("nbytes", None)
    fields["kv_shapes"] = {name: list(dims) for name, dims in info.kv_shapes.items()}
    fields["finished_tasks"], fields["payload_kinds"] = list(info.finished_tasks), list(info.payload_kinds)
    fields["origins"] = [{"name": o.name, "node_id": o.node_id} for o in info.origins]
    return {"schema": schema("status"), **fields}


def peers_json(info, members) -> dict:
    """A node's view of the swarm: its own id and address, and every member it lists."""
    return {"schema": schema("peers"), "node_id": info.node_id, "address": info.address,
            "peers": [{"node_id": m.node_id, "address": m.address, "alive": m.alive,
                       "snapshot_version": m.snapshot_version} for m in members]}


def error_json(command: str, target: str | None, code: str, detail: str) -> dict:
    """What ``peers`` / ``status`` print with ``--json`` when the node could not be asked (exit 3)."""
    return {"schema": schema(command), "target": target, "error": {"code": code, "detail": detail}}


def health_json(target: str, status: str | None, error: tuple[str, str] | None = None) -> dict:
    return {"schema": schema("health"), "target": target, "status": status, "serving": status == "SERVING",
            "error": None if error is None else {"code": error[0], "detail": error[1]}}


def evaluate_json(run: str, names: list[str], recomputed: list[float], reported: list[float]) -> dict:
    tasks = [{"index": j, "task": name, "reloaded": a, "reported": b, "ok": a == b}
             for j, (name, a, b) in enumerate(zip(names, recomputed, reported))]
    return {"schema": schema("evaluate"), "run": run, "ok": recomputed == reported, "tasks": tasks}


def selections_json(run: str, rows: list[dict]) -> dict:
    """Every row ``crossback selections`` renders (``app.selections.selection_rows``), as they are."""
    return {"schema": schema("selections"), "run": run, "selections": rows}
