"""From task records to the benchmark's claims: arms, paired differences to ``none``, score quality.

Arms per unit (test accuracy; every one adapted from the same M_loc, same seed, same budget):

- ``none``: adapted on the task's own K/V;
- ``untrained``: on the K/V of a donor that never learned anything (the control that separates
  knowledge from the effect of any foreign matrix);
- ``random``: the expected value of a uniformly drawn trained candidate (the mean over them, which
  has the same mean as one seeded draw and less noise);
- ``selected:<score>``: the trained candidate ranked first by that scoring function (ties by peer id);
- ``kept``: what the node ends with (``selected`` by the configured score, only if its validation
  accuracy reaches ``none``'s);
- ``oracle``: the trained candidate whose arm reached the best *validation* accuracy (ties: lower
  validation loss, then peer id), in hindsight of every arm (evaluation only); its test accuracy;
- ``oracle_test``: the best trained candidate *on test*: an upper bound, biased upward (the maximum of
  k noisy arms), kept only beside
- ``oracle_null``: what ``oracle_test`` reads when no donor has any effect: the expected maximum of k
  arms at ``none``'s accuracy, each an independent binomial draw over the unit's test items (test
  sampling noise alone, so the real null is larger still).

Score quality, per scoring function: the within-unit Spearman between score and realised gain over
all adapted candidates (the control included), regret = oracle - selected (the validation-picked
oracle), and how often the score ranks the untrained control above every trained donor.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

from scipy.stats import binom

from crossback.config.selection import CHEAP_SCORES, SCORES

from .stats import spearman, summary

CONFIRM = "logme"  # what a shortlist is confirmed by (selection.confirm)
SHORTLISTS = (1, 2, 3)
# a two-stage selection: "<cheap score>>k" = the top k by the cheap score, confirmed by CONFIRM
POLICIES = tuple(f"{c}>{k}" for c in CHEAP_SCORES if not c.startswith("ddv_") for k in SHORTLISTS)
ARM_ORDER = ("none", "untrained", "average", "shortlist_average", "random", "selected:task_val", *(f"selected:{s}" for s in SCORES + POLICIES), "kept",
             "oracle", "oracle_test", "oracle_null", "limit")
NULLS = ("oracle_null",)  # rows that are a reference value, not an arm a node could run


def _adapted(rec: dict) -> list[dict]:
    return [c for c in rec["candidates"] if c.get("error") is None and "test" in c]


def _order(cands: list[dict], score: str) -> list[dict]:
    return sorted((c for c in cands if score in c["scores"]), key=lambda c: (-c["scores"][score], c["peer"]))


def _shortlist(policy: str) -> tuple[str, int] | None:
    """(cheap score, k) of a two-stage policy name, None for a plain score."""
    if ">" not in policy:
        return None
    score, k = policy.split(">")
    return score, int(k)


def _pick(cands: list[dict], score: str) -> dict | None:
    """The candidate a score (or a two-stage policy) picks among ``cands``."""
    stages = _shortlist(score)
    if stages is None:
        order = _order(cands, score)
        return order[0] if order else None
    cheap, k = stages
    top = _order(cands, cheap)[:k]
    order = _order(top, CONFIRM)
    return order[0] if order else None


def selection_cost(rec: dict, policy: str) -> tuple[int, float] | None:
    """(bytes, seconds) one selection by ``policy`` costs in unit ``rec``: stage 1 (info, K/V, DDV and the
    cheap score) for every answered candidate, stage 2 (the payload and the confirming score) for the
    shortlist — every candidate for a payload score alone; a cheap score alone fetches only the
    winner's payload. Seconds are summed over candidates (a node runs a
    stage's fetches in parallel, so its wall time is shorter)."""
    cands = [c for c in rec["candidates"] if c.get("error") is None and "kv_bytes" in c]
    if not cands:
        return None
    stages = _shortlist(policy)
    cheap, k = stages if stages else (policy, None)
    if cheap not in CHEAP_SCORES:  # a payload score ranks every candidate on its payload
        shortlist, cheap, confirm = cands, None, cheap
    else:
        shortlist = _order(cands, cheap)[: k or 1]  # a cheap score alone still fetches its winner's payload
        confirm = CONFIRM if k else None
    return (sum(c["kv_bytes"] for c in cands) + sum(c["payload_bytes"] for c in shortlist),
            sum(_stage1_seconds(c, cheap) for c in cands) + sum(_stage2_seconds(c, confirm) for c in shortlist))


def _stage1_seconds(c: dict, score: str | None) -> float:
    return (c.get("latency") or 0) + (c["score_seconds"].get(score, 0) if score else 0)  # latency: info, K/V, DDV


def _stage2_seconds(c: dict, score: str | None) -> float:
    return (c.get("payload_seconds") or 0) + (c["score_seconds"].get(score, 0) if score else 0)


def best_on_validation(trained: list[dict]) -> dict | None:
    """The trained candidate whose arm validated best (ties: lower validation loss, then peer id); None
    when an arm has no validation accuracy (records written before it was kept)."""
    if any(c.get("val") is None for c in trained):
        return None
    return min(trained, key=lambda c: (-c["val"], c.get("val_loss") or 0.0, c["peer"]))


def expected_max_excess(accuracy: float, items: int, k: int) -> float:
    """E[max of k accuracies] - accuracy, each accuracy an independent Binomial(items, accuracy) / items:
    how far the best of k arms of zero effect reads above them from test sampling alone."""
    if k < 1 or items < 1:
        return 0.0
    counts = range(items)  # P(max > j) = 1 - F(j)^k, summed over j = 0 .. items-1 gives E[max count]
    expected = sum(1.0 - float(binom.cdf(j, items, accuracy)) ** k for j in counts)
    return expected / items - accuracy


def unit_arms(rec: dict) -> dict[str, float]:
    adapted = _adapted(rec)
    trained = [c for c in adapted if not c["control"]]
    arms = {"none": rec["none"]["test"], "kept": rec["kept_test"]}
    control = [c for c in adapted if c["control"]]
    if control:
        arms["untrained"] = control[0]["test"]
    if rec.get("average"):  # the uniform average of every trained candidate's payload
        arms["average"] = rec["average"]["test"]
    if rec.get("shortlist_average"):  # the uniform average of the node's shortlist (what stage 2 fetched)
        arms["shortlist_average"] = rec["shortlist_average"]["test"]
    if rec.get("limit"):  # the same-task path: the best same-view donor's own model on this test split
        arms["limit"] = rec["limit"]["accuracy"]
    if trained:
        arms["random"] = sum(c["test"] for c in trained) / len(trained)
        if (best := best_on_validation(trained)) is not None:
            arms["oracle"] = best["test"]
        arms["oracle_test"] = max(c["test"] for c in trained)
        arms["oracle_null"] = arms["none"] + expected_max_excess(arms["none"], rec["samples"]["test"], len(trained))
        if rec.get("path") == "task":  # matched tasks, confirmed as borrowed: no cheap scores to pick by
            arms["selected:task_val"] = next(c["test"] for c in trained if c["peer"] == rec["chosen"])
            return arms
        for score in SCORES + POLICIES:
            if (chosen := _pick(trained, score)) is not None:
                arms[f"selected:{score}"] = chosen["test"]
    return arms


def unit_group(rec: dict) -> str:
    return f"k={rec['shots']}" if rec["shots"] is not None else "k=all"


def unit_kind(rec: dict) -> str:
    """same-task: some donor learned exactly the receiver task's classes; new-task: none did."""
    return rec.get("kind", "kind unknown")


def kind_and_view(rec: dict) -> str:
    """same-task / new-task crossed with the receiver's view (image, text): the split a held-out claim needs."""
    return f"{unit_kind(rec)}, {rec['modality']} receivers"


def stratum(rec: dict) -> str:
    """What stays fixed across seeds: the receiver, its k and the task."""
    return f"{rec['receiver']}/k={rec['shots']}/{rec['task']}"


def arm_table(records: list[dict], boot: dict) -> dict[str, dict]:
    per_unit = [(unit_arms(r), stratum(r)) for r in records]
    table = {}
    for arm in ARM_ORDER:
        pairs = [(u[arm], u["none"], s) for u, s in per_unit if arm in u]
        if not pairs:
            continue
        reference = arm in NULLS
        control = [(u[arm] - u["untrained"], s) for u, s in per_unit if arm in u and "untrained" in u and not reference]
        versus_random = [u[arm] > u["random"] for u, _ in per_unit if arm in u and "random" in u and not reference]
        table[arm] = {"accuracy": sum(a for a, _, _ in pairs) / len(pairs),
                      "beats_random": sum(versus_random) / len(versus_random) if versus_random else None,
                      "vs_none": summary([a - b for a, b, _ in pairs], **boot, strata=[s for _, _, s in pairs]),
                      "vs_untrained": summary([d for d, _ in control], **boot, strata=[s for _, s in control])
                      if arm not in ("none", "untrained", *NULLS) else None}
        averaged = [(u[arm] - u["average"], s) for u, s in per_unit if arm in u and "average" in u]
        if averaged and arm not in ("none", "average", *NULLS):
            table[arm]["vs_average"] = summary([d for d, _ in averaged], **boot, strata=[s for _, s in averaged])
        limited = [(u[arm], u["limit"], s) for u, s in per_unit if arm in u and "limit" in u and u["limit"] > 0]
        if limited and arm not in ("limit", *NULLS):
            table[arm]["vs_limit"] = summary([a - b for a, b, _ in limited], **boot, strata=[s for _, _, s in limited])
            table[arm]["of_limit"] = sum(a / b for a, b, _ in limited) / len(limited)
    return table


def score_table(records: list[dict], boot: dict) -> dict[str, dict]:
    out = {}
    for score in SCORES + POLICIES:
        stages = _shortlist(score)
        rhos, regrets, random_regrets, control_first, best_picked = [], [], [], 0, 0
        costs = []
        stability: dict[str, list[float]] = {}
        units = 0
        for rec in records:
            if rec.get("path") == "task":
                continue
            needed = (stages[0], CONFIRM) if stages else (score,)
            adapted = [c for c in _adapted(rec) if all(n in c["scores"] for n in needed)]
            trained = [c for c in adapted if not c["control"]]
            if not trained:
                continue
            units += 1
            none = rec["none"]["test"]
            if stages is None:
                rho = spearman([c["scores"][score] for c in adapted], [c["test"] - none for c in adapted])
                if rho is not None:
                    rhos.append(rho)
            if (cost := selection_cost(rec, score)) is not None:
                costs.append(cost)
            chosen = _pick(trained, score)
            oracle = best_on_validation(trained)
            best = (oracle or max(trained, key=lambda c: c["test"]))["test"]
            regrets.append(best - chosen["test"])
            random_regrets.append(best - sum(c["test"] for c in trained) / len(trained))
            for key in sorted({k for c in adapted for k in c["scores"] if k.startswith(score + "@")}):
                pairs = [(c["scores"][score], c["scores"][key]) for c in adapted if key in c["scores"]]
                rho = spearman([a for a, _ in pairs], [b for _, b in pairs])
                if rho is not None:
                    stability.setdefault(key, []).append(rho)
            best_picked += chosen["test"] >= best
            top = _pick(adapted, score)
            control_first += top["control"]
        if units:
            out[score] = {"units": units, "spearman": summary(rhos, **boot), "regret": summary(regrets, **boot),
                          "bytes_per_selection": _median([b for b, _ in costs]),
                          "seconds_per_selection": _median([t for _, t in costs]),
                          "regret_random": summary(random_regrets, **boot),
                          **({"rank_stability": {k: summary(v, **boot) for k, v in stability.items()}} if stability else {}),
                          "picked_best": best_picked / units, "ranked_control_first": control_first / units}
    return out


def direction_table(records: list[dict], boot: dict) -> dict[str, dict]:
    """Every trained donor's own arm, by receiver <- donor modality: paired to ``none`` and to the unit's
    untrained control (each donor's arm is run in every unit, whichever one a score would pick)."""
    rows: dict[str, dict[str, list]] = {}
    for rec in records:
        adapted = _adapted(rec)
        control = next((c for c in adapted if c["control"]), None)
        for c in adapted:
            if c["control"]:
                continue
            row = rows.setdefault(f"{rec['modality']} <- {c['modality']}",
                                  {"none": [], "control": [], "kib": [], "time": [], "seconds": []})
            row["none"].append((c["test"] - rec["none"]["test"], stratum(rec)))
            if control is not None:
                row["control"].append((c["test"] - control["test"], stratum(rec)))
            row["kib"].append(c["bytes"] / 1024)
            if c.get("seconds") is not None and rec["none"].get("seconds"):
                row["time"].append(c["seconds"] / rec["none"]["seconds"])
                row["seconds"].append(c["seconds"])
    return {key: {"arms": len(row["none"]), "adapt_seconds": _median(row["seconds"]),
                  "vs_none": summary([d for d, _ in row["none"]], **boot, strata=[s for _, s in row["none"]]),
                  "vs_untrained": summary([d for d, _ in row["control"]], **boot, strata=[s for _, s in row["control"]]),
                  "kib_per_candidate": _median(row["kib"]), "adapt_time_vs_none": _median(row["time"])}
            for key, row in sorted(rows.items())}


def environment(threads: int) -> dict:
    import platform

    import torch

    return {"torch": torch.__version__, "threads": threads, "python": platform.python_version(),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs"}


def analyse(records: list[dict], cfg_boot) -> dict:
    boot = {"resamples": cfg_boot.resamples, "confidence": cfg_boot.confidence, "seed": cfg_boot.seed}
    groups = {"all": records}
    for key in (unit_kind, unit_group, lambda r: f"receiver {r['receiver']}", kind_and_view):
        if len({key(r) for r in records}) > 1:  # a breakdown with one value would repeat "all"
            for rec in records:
                groups.setdefault(key(rec), []).append(rec)
    return {
        "units": len(records),
        "seeds": sorted({r["seed"] for r in records}),
        "confidence": cfg_boot.confidence,
        "groups": {name: {"units": len(rs), "arms": arm_table(rs, boot), "scores": score_table(rs, boot),
                          "test_items": {"min": min(r["samples"]["test"] for r in rs),
                                         "median": sorted(r["samples"]["test"] for r in rs)[len(rs) // 2]}}
                   for name, rs in groups.items()},
        "directions": direction_table(records, boot),
        "cost": cost(records),
        "skipped": sorted({f"{c['peer']}: {c['error']}" for r in records for c in r["candidates"] if c.get("error")}),
        "warnings": sorted({f"{r['receiver']}/{r['task']}: {w}" for r in records for w in r["warnings"]}),
    }


def _median(xs: list[float]) -> float | None:
    xs = sorted(xs)
    return None if not xs else (xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2)


def cost(records: list[dict]) -> dict:
    """What a transfer costs: bytes received per adapted candidate, and adaptation wall time against
    the ``none`` arm's of the same unit (median of the per-candidate ratios)."""
    adapted = [(r, c) for r in records for c in r["candidates"] if c.get("test") is not None]
    ratios = [c["seconds"] / r["none"]["seconds"] for r, c in adapted
              if c.get("seconds") is not None and r["none"].get("seconds")]
    return {"bytes_per_candidate": _median([c["bytes"] for _, c in adapted]),
            "none_seconds": _median([r["none"]["seconds"] for r in records if r["none"].get("seconds") is not None]),
            "adapt_time_vs_none": _median(ratios)}


def _seconds(row: dict) -> str:
    """Median adaptation seconds of a direction's arms, and their median ratio to the unit's ``none``."""
    t, r = row.get("adapt_seconds"), row.get("adapt_time_vs_none")
    return "-" if t is None else f"{t:.1f}" + ("" if r is None else f" ({r:.2f}x)")


def _kib(x) -> str:
    return "-" if x is None else f"{x / 1024:.1f}"


def _num(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def _pct(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:+.1f}"


def _ci(s: dict | None) -> str:
    if not s or not s["n"]:
        return "-"
    seeds = f" ({_pct(s['seeds_lo'])}, {_pct(s['seeds_hi'])})" if "seeds_lo" in s else ""
    return f"{_pct(s['mean'])} [{_pct(s['lo'])}, {_pct(s['hi'])}]{seeds}"


def _rho(rho: dict) -> str:
    return f"{rho['mean']:+.2f} [{rho['lo']:+.2f}, {rho['hi']:+.2f}] (n={rho['n']})" if rho["n"] else "-"


def markdown(result: dict, title: str, command: str) -> str:
    conf = int(round(100 * result["confidence"]))
    lines = [f"# {title}", "", f"`{command}`", "",
             f"{result['units']} units (receiver tasks x shots x seeds), seeds {result['seeds']}. "
             f"Accuracies are test accuracies; differences are paired per unit, in points, with {conf} % "
             "percentile-bootstrap CIs: [over units, i.e. tasks x seeds] (over seeds, tasks fixed)."]
    if "environment" in result:
        env = result["environment"]
        lines.append(f"torch {env['torch']}, {env['threads']} thread(s), Python {env['python']}, {env['machine']}.")
    lines.append("")
    for name, group in result["groups"].items():
        lines += _group_lines(name, group) + _score_lines(group) + [""]
    lines += _direction_lines(result.get("directions") or {})
    c = result.get("cost") or {}
    if c.get("bytes_per_candidate") is not None:
        ratio = c.get("adapt_time_vs_none")
        lines += [f"Cost (medians): {c['bytes_per_candidate'] / 1024:.1f} KiB received per adapted candidate; "
                  f"adaptation {c['none_seconds']:.2f} s without a peer"
                  + (f", {ratio:.2f}x that with one." if ratio is not None else "."), ""]
    if result["skipped"]:
        lines += ["Candidates skipped or failed:", ""] + [f"- {s}" for s in result["skipped"]] + [""]
    if result["warnings"]:
        lines += ["Warnings:", ""] + [f"- {w}" for w in result["warnings"]] + [""]
    return "\n".join(lines)


def _group_lines(name: str, group: dict) -> list[str]:
    """One group's arms table, and how they compare with the average and the limit."""
    lines = [f"## {name} ({group['units']} units; test items per task: min {group['test_items']['min']}, "
             f"median {group['test_items']['median']})", "",
             "| arm | accuracy | Δ vs none [CI] | wins / losses / ties | Δ vs untrained [CI] | beats random |",
             "|---|---:|---:|---:|---:|---:|"]
    for arm, row in group["arms"].items():
        d = row["vs_none"]
        beats = row.get("beats_random")
        lines.append(f"| {arm} | {row['accuracy']:.3f} | {_ci(d) if arm != 'none' else '-'} | "
                     f"{d['wins']} / {d['losses']} / {d['ties'] if arm != 'none' else '-'} | {_ci(row['vs_untrained'])} | "
                     f"{'-' if beats is None or arm == 'random' else format(beats, '.0%')} |")
    if "oracle_test" in group["arms"]:
        lines += ["", "oracle: the trained donor whose arm validated best (its test accuracy); oracle_test: the best on "
                      "test, an upper bound biased upward; oracle_null: what oracle_test reads if no donor had any "
                      "effect (the best of k binomial test draws at none's accuracy)."]
    versus = {arm: row["vs_average"] for arm, row in group["arms"].items() if "vs_average" in row}
    if versus:
        lines += ["", "Against the average of every trained candidate's payload: "
                  + "; ".join(f"{arm} Δ {_ci(d)}" for arm, d in versus.items()
                              if not arm.startswith("selected:") or arm in ("selected:logme", "selected:kv_motion>2", "selected:kv_motion_view>2"))]
    limited = {arm: row for arm, row in group["arms"].items() if "of_limit" in row}
    if limited:
        lines += ["", "Against the limit (the best same-view donor's own model on the receiver's test split, "
                      f"accuracy {group['arms']['limit']['accuracy']:.3f}): "
                  + "; ".join(f"{arm} reaches {row['of_limit']:.1%} of it, Δ {_ci(row['vs_limit'])}"
                              for arm, row in limited.items() if arm in ("none", "kept", "untrained", "oracle"))]
    return lines


def _score_lines(group: dict) -> list[str]:
    """The scores table of one group: how well each ranked the candidates, and at what cost."""
    if not group["scores"]:
        return []
    lines = ["", "| score (cheap>k: its top k confirmed by logme) | Spearman(score, gain) [CI] | regret vs oracle [CI] | "
                 "random's regret [CI] | reached the oracle | ranked the untrained control first | KiB per selection | "
                 "s per selection |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for score, row in group["scores"].items():
        lines.append(f"| {score} | {_rho(row['spearman'])} | {_ci(row['regret'])} | "
                     f"{_ci(row.get('regret_random'))} | {row['picked_best']:.0%} | "
                     f"{row['ranked_control_first']:.0%} | {_kib(row.get('bytes_per_selection'))} | "
                     f"{_num(row.get('seconds_per_selection'))} |")
    stable = [(score, key, rho) for score, row in group["scores"].items()
              for key, rho in row.get("rank_stability", {}).items()]
    if stable:
        lines += ["", "Rank stability (Spearman between a unit's candidates ranked under the configured probe "
                      "seed and under another): " + "; ".join(f"{key} {_rho(rho)}" for _, key, rho in stable)]
    return lines


def _direction_lines(directions: dict) -> list[str]:
    if not directions:
        return []
    lines = ["## by direction: every trained donor's own arm (receiver <- donor modality)", "",
             "| direction | arms | Δ vs none [CI] | wins / losses / ties | Δ vs untrained [CI] | KiB per candidate | "
             "adaptation s (vs none) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for key, row in directions.items():
        d = row["vs_none"]
        lines.append(f"| {key} | {row['arms']} | {_ci(d)} | {d['wins']} / {d['losses']} / {d['ties']} | "
                     f"{_ci(row['vs_untrained'])} | {row['kib_per_candidate']:.1f} | {_seconds(row)} |")
    return lines + [""]


def plot(result: dict, records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(result["groups"].items())
    fig, axes = plt.subplots(1, 2, figsize=(13, 0.5 + 0.35 * sum(len(g["arms"]) for _, g in groups) / 1.5 + 2))
    left, right = axes
    y, labels = 0, []
    for gi, (name, group) in enumerate(groups):
        for arm, row in group["arms"].items():
            if arm == "none":
                continue
            d = row["vs_none"]
            left.errorbar(100 * d["mean"], y, xerr=[[100 * (d["mean"] - d["lo"])], [100 * (d["hi"] - d["mean"])]],
                          fmt="o", color=f"C{gi}", capsize=3)
            labels.append(f"{name}  {arm}")
            y += 1
        y += 0.5
    left.set_yticks(_positions(groups), labels, fontsize=7)
    left.axvline(0.0, color="grey", lw=1)
    left.invert_yaxis()
    left.set_xlabel("paired Δ test accuracy vs none (points), 95 % bootstrap CI")
    left.set_title("what borrowing is worth")
    for si, score in enumerate(SCORES):
        xs, ys = [], []
        for rec in records:
            for c in _adapted(rec):
                if score in c["scores"]:
                    xs.append(_rank(c, rec, score))
                    ys.append(100 * (c["test"] - rec["none"]["test"]))
        right.scatter([x + 0.08 * (si - 1) for x in xs], ys, s=9, alpha=0.5, label=score)
    right.axhline(0.0, color="grey", lw=1)
    right.set_xlabel("candidate's rank within its unit by score (0 = top)")
    right.set_ylabel("realised gain vs none (points)")
    right.set_title("does the score rank the gain?")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _positions(groups) -> list[float]:
    pos, y = [], 0.0
    for _, group in groups:
        for arm in group["arms"]:
            if arm != "none":
                pos.append(y)
                y += 1
        y += 0.5
    return pos


def _rank(cand: dict, rec: dict, score: str) -> int:
    ordered = sorted((c for c in _adapted(rec) if score in c["scores"]), key=lambda c: (-c["scores"][score], c["peer"]))
    return next(i for i, c in enumerate(ordered) if c["peer"] == cand["peer"])


def candidate_accuracies(rec: dict) -> list[dict]:
    """Every adapted candidate's validation and test accuracy (what any oracle or pick can be rechecked from)."""
    return [{"peer": c["peer"], "control": c["control"], "val": c.get("val"), "val_loss": c.get("val_loss"),
             "test": c["test"]} for c in _adapted(rec)]


def write_report(result: dict, records: list[dict], out: Path, title: str, command: str) -> None:
    per_unit = [{k: r[k] for k in ("seed", "receiver", "shots", "task", "chosen", "kept")}
                | {"test_items": r["samples"]["test"], "arms": unit_arms(r), "candidates": candidate_accuracies(r)}
                for r in records]
    (out / "results.json").write_text(json.dumps({"command": command, **result, "per_unit": per_unit}, indent=2) + "\n")
    (out / "results.md").write_text(markdown(result, title, command))
    plot(result, records, out / "results.png")
