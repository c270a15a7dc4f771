"""Reading a run's selection log: every node's `backbone_selected` and `transfer_done` events."""
from __future__ import annotations

from pathlib import Path

from crossback.node.events import read_events


def log_files(run_dir: Path) -> list[Path]:
    run_dir = Path(run_dir)
    files = sorted((run_dir / "logs").glob("*.jsonl")) if (run_dir / "logs").is_dir() else sorted(run_dir.glob("*.jsonl"))
    if not files:
        raise FileNotFoundError(f"{run_dir} holds no node logs (logs/*.jsonl)")
    return files


def selection_rows(run_dir: Path) -> list[dict]:
    """One row per node and task that went through a transfer step."""
    rows = []
    for path in log_files(run_dir):
        events = read_events(path)
        done = {(e["node"], e["index"]): e for e in events if e["event"] == "transfer_done"}
        for sel in (e for e in events if e["event"] == "backbone_selected"):
            td = done.get((sel["node"], sel["index"]), {})
            acc = td.get("accuracy", {})
            rows.append({
                "node": sel["node"], "task": sel["task"], "index": sel["index"], "chosen": sel["chosen"],
                "chosen_modality": sel["chosen_modality"], "chosen_origin": sel.get("chosen_origin"),
                "borrow": sel.get("borrow", "kv"),
                "strategy": td.get("strategy") or sel.get("strategy", "crossback"), "score": sel["score"], "margin": sel["margin"],
                "reason": sel["reason"], "candidates": sel["candidates"], "skipped": sel.get("skipped", []),
                "none": acc.get("none"), "random": acc.get("random"), "selected": acc.get("selected"),
                "oracle": acc.get("oracle"), "kept": td.get("kept"),
                "averaged": sel.get("averaged") or [],  # selection.combine: average borrowed the mean of these
            })
    return sorted(rows, key=lambda r: (r["node"], r["index"]))


def _f(x, spec=".3f") -> str:
    return "-" if x is None else format(x, spec)


def render_table(rows: list[dict]) -> str:
    head = f"{'node':<10} {'task':<20} {'chosen':<10} {'origin':<10} {'modality':<8} {'strategy':<18} {'score':>7} {'margin':>7} " \
           f"{'cands':>5} {'none':>6} {'random':>6} {'select':>6} kept"
    lines = [head, "-" * len(head)]
    for r in rows:
        ok = sum(1 for c in r["candidates"] if c.get("score") is not None and not c.get("error"))
        chosen = f"avg of {len(r['averaged'])}" if r.get("averaged") else r["chosen"] or "(none)"
        lines.append(f"{r['node']:<10} {r['task'][:20]:<20} {chosen:<10} "
                     f"{r['chosen_origin'] or '-':<10} {r['chosen_modality'] or '-':<8} {r['strategy'] + ':' + r['borrow']:<18} "
                     f"{_f(r['score'], '+.3f'):>7} {_f(r['margin'], '.3f'):>7} {ok:>2}/{len(r['candidates']):<2} "
                     f"{_f(r['none']):>6} {_f(r['random']):>6} {_f(r['selected']):>6} {r['kept'] or '-'}")
    return "\n".join(lines)
