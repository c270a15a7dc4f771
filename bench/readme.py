"""The "what it is worth" block of docs/benchmarks.md, rendered from the committed benchmark results.

    python -m crossback.bench.readme            # rewrite the block between the bench markers
    python -m crossback.bench.readme --check    # exit 1 if the page and the results disagree

Results live in ``benchmarks/results/<regime>.json`` (copied from a run's ``results.json``, whose
``command`` made them); a test keeps the page in step with them.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from crossback.config.reference import write_or_check

from .report import _ci, _pct, _seconds

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "benchmarks.md"
RESULTS = ROOT / "benchmarks" / "results"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
REGIMES = ("starved_genesis-backbone", "starved_genesis-block", "starved_genesis-kv", "starved_genesis_pretrained-backbone",
           "starved", "starved-mergenet", "symmetric", "heterogeneous", "heterogeneous-mergenet")
ROWS = ("untrained", "random", "selected:ddv", "selected:local_loss", "selected:logme", "kept", "oracle", "oracle_test",
        "oracle_null")


def _oracles(arms: dict) -> str:
    """The validation-picked oracle's Δ vs none with its CI; the test-picked maximum beside the no-effect null
    (results measured before issue 38 have only the test-picked one)."""
    mean = lambda arm: _pct(arms[arm]["vs_none"]["mean"]) if arm in arms else "-"  # noqa: E731
    picked = _short(arms["oracle"]["vs_none"]) if "oracle" in arms else "-"
    return f"{picked}; best on test {mean('oracle_test')} (null {mean('oracle_null')})"


def _regret_label(result: dict) -> str:
    return "regret vs the test-picked oracle" if result.get("oracle_picked_on") == "test" else "regret"


def render_regime(name: str, result: dict) -> list[str]:
    group = result["groups"]["all"]
    lines = [f"*{name}* — {group['units']} units, seeds {result['seeds']}; `{result['command']}`",
             "(full tables: `benchmarks/results/" + name + ".md`).", "",
             "| arm | accuracy | Δ vs none, points [95 % CI over tasks × seeds] (over seeds) | wins / losses | Δ vs untrained "
             "| beats random |",
             "|---|---:|---:|---:|---:|---:|",
             f"| none | {group['arms']['none']['accuracy']:.3f} | - | - | - | - |"]
    for arm in ROWS:
        row = group["arms"].get(arm)
        if row:
            d = row["vs_none"]
            beats = row.get("beats_random")
            lines.append(f"| {arm} | {row['accuracy']:.3f} | {_ci(d)} | {d['wins']} / {d['losses']} | "
                         f"{_ci(row['vs_untrained'])} | {'-' if beats is None or arm == 'random' else format(beats, '.0%')} |")
    per_k = [(g, r["arms"]) for g, r in result["groups"].items() if g != "all"]
    if len(per_k) > 1:
        lines += ["", "By group: " + "; ".join(
            f"{g}: selected:ddv {_ci(a.get('selected:ddv', {}).get('vs_none'))}, "
            + ", ".join(f"{o} {_ci(a[o]['vs_none'])}" for o in ("oracle", "oracle_test") if o in a)
            for g, a in per_k) + "."]
    scores = group["scores"]
    if scores:
        lines += ["", "Scores: " + "; ".join(
            f"`{s}` Spearman with gain {r['spearman']['mean']:+.2f} [{r['spearman']['lo']:+.2f}, {r['spearman']['hi']:+.2f}], "
            f"{_regret_label(result)} {_ci(r['regret'])}" + (f" (random's {_ci(r['regret_random'])})" if "regret_random" in r else "")
            + f", picked the best {r['picked_best']:.0%}, ranked the untrained control first "
            f"{r['ranked_control_first']:.0%}" for s, r in scores.items() if r["spearman"]["n"]) + "."]
        stable = [f"{k} {v['mean']:+.2f} [{v['lo']:+.2f}, {v['hi']:+.2f}]" for r in scores.values()
                  for k, v in r.get("rank_stability", {}).items()]
        if stable:
            lines += ["", "DDV rank stability under other probe seeds (Spearman): " + "; ".join(stable) + "."]
    if result.get("skipped"):
        lines += ["", "Skipped: " + "; ".join(result["skipped"]) + "."]
    return lines + [""]


LEVELS = ("starved_genesis-kv", "starved_genesis-block", "starved_genesis-backbone", "starved_genesis_pretrained-backbone")


def render_levels(results: dict[str, dict], score: str = "logme") -> list[str]:
    """One row per borrow level of the genesis starved regime: the issue-10 goal figures side by side."""
    rows = [(n, results[n]["groups"]["all"]) for n in LEVELS if n in results]
    if not rows:
        return []
    lines = [f"Borrow levels (starved regime, one genesis, selected by `{score}`; goal: Δ ≥ +5 with CI > 0, beats "
             "random ≥ 70 %, Spearman ≥ 0.5, regret ≤ ⅓ of random's):", "",
             "| regime | Δ vs none [CI] | beats random | Spearman(score, gain) | regret (random's) | kept Δ vs none |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, group in rows:
        arm, sc = group["arms"][f"selected:{score}"], group["scores"][score]
        rho = sc["spearman"]
        mark = "†" if results[name].get("oracle_picked_on") == "test" else ""
        lines.append(f"| {name} | {_ci(arm['vs_none'])} | {arm['beats_random']:.0%} | "
                     f"{rho['mean']:+.2f} [{rho['lo']:+.2f}, {rho['hi']:+.2f}] | {_pct(sc['regret']['mean'])}{mark} "
                     f"({_pct(sc['regret_random']['mean'])}{mark}) | {_ci(group['arms']['kept']['vs_none'])} |")
    if any(results[n].get("oracle_picked_on") == "test" for n, _ in rows):
        lines += ["", "† against the oracle picked on test (measured before issue 38), which reads higher than the "
                      "validation-picked one the other rows use."]
    return lines + [""]


KINDS = (("starved_genesis-backbone", "backbone"), ("starved_genesis-task", "task, else backbone"),
         ("heldout_glyphs-backbone", "held out: backbone"), ("heldout_glyphs-task", "held out: task, else backbone"))
SELECTED = ("selected:task_val", "selected:kv_motion_view>2")  # what a node with the default selection picks


def render_kinds(results: dict[str, dict]) -> list[str]:
    """Same-task units (some donor learned the receiver's classes) apart from new-task units (none did),
    beside the untrained control, the average of every trained donor and, for the same task, the limit."""
    rows = [(n, label, kind, results[n]["groups"][kind]) for n, label in KINDS if n in results
            for kind in ("same-task", "new-task") if kind in results[n]["groups"]]
    if not rows:
        return []
    lines = ["Where borrowing pays (starved regime, one genesis; *held out*: the same protocol on the glyph set no "
             "default was tuned on, `benchmarks/transfer/heldout_glyphs.yaml`, 2 and 5 shots; selected = what a node "
             "with the default selection picks, `kv_motion_view>2` or, on the same-task path, `task_val`; the limit is the "
             "best same-view donor's own model on the receiver's test split):", "",
             "| units | borrow | n | none | selected Δ vs none [CI] | kept Δ vs none [CI] | untrained Δ vs none | "
             "selected Δ vs untrained [CI] | average Δ vs none | selected Δ vs average [CI] | kept / limit | "
             "oracle Δ vs none [CI]; best on test (no-effect null) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for _, label, kind, group in rows:
        arms = group["arms"]
        sel = next((arms[a] for a in SELECTED if a in arms), {})
        untrained, average, kept = arms.get("untrained"), arms.get("average"), arms["kept"]
        lines.append(f"| {kind} | {label} | {group['units']} | {arms['none']['accuracy']:.3f} | {_ci(sel.get('vs_none'))} | "
                     f"{_ci(kept['vs_none'])} | {_ci(untrained['vs_none']) if untrained else '-'} | "
                     f"{_ci(sel.get('vs_untrained'))} | {_ci(average['vs_none']) if average else '-'} | "
                     f"{_ci(sel.get('vs_average'))} | "
                     f"{format(kept['of_limit'], '.1%') if 'of_limit' in kept else '-'} | {_oracles(arms)} |")
    return lines + [""]


# the new-task regime (no donor learned any receiver task) and each lever tried on it
LEVERS = (("multitask_genesis-backbone", "multi-task donors, backbone (the regime)"),
          ("multitask_genesis-block", "partial borrowing: the encoder block only"),
          ("multitask_genesis_long-backbone", "adaptation 32 epochs instead of 8"),
          ("multitask_genesis_pretrained-backbone", "pretrained front ends (EfficientNet-Lite0, MiniLM)"),
          ("multitask_genesis_large-backbone", "a ~4x larger model"),
          ("multitask_genesis_mergenet", "mergenet, adapter trained 40 epochs"),
          ("multitask_genesis-mona", "mona (λ = 0.4, α = 1), encoder body"))
# the multi-task regime was measured before kv_motion_view existed (issue 39) and is not re-run
LEVER_SELECTED = ("selected:kv_motion>2", "selected:logme")


def _short(d: dict | None) -> str:
    return "-" if not d or not d["n"] else f"{_pct(d['mean'])} [{_pct(d['lo'])}, {_pct(d['hi'])}]"


def render_levers(results: dict[str, dict]) -> list[str]:
    """One row per lever on the multi-task regime: the node's pick and both averages against none, the
    untrained control and the average of every trained donor."""
    rows = [(label, results[n]["groups"]["all"]) for n, label in LEVERS if n in results]
    if not rows:
        return []
    lines = ["Levers on tasks no peer learned (`benchmarks/transfer/multitask_genesis*.yaml`: donors that learned "
             "several tasks on all their items, receivers of Fashion-MNIST, emoji images and emoji names whose task no "
             "donor learned; one genesis; n = units, 9 per seed: 5 seeds, 2 where n = 18; selected = the node's "
             "pick before issue 39, `kv_motion>2` (not re-run with `kv_motion_view`); shortlist average = the uniform average of those 2 fetched backbones; Δ in points [95 % CI over units]):", "",
             "| lever | n | none | untrained Δ vs none | selected Δ vs none [CI] | selected Δ vs untrained [CI] | "
             "average Δ vs none [CI] | average Δ vs untrained [CI] | shortlist average Δ vs none [CI] | "
             "selected Δ vs average [CI] | oracle Δ vs none [CI]; best on test (no-effect null) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for label, group in rows:
        arms = group["arms"]
        sel = next((arms[a] for a in LEVER_SELECTED if a in arms), {})
        get = lambda arm, key: _short(arms[arm].get(key)) if arm in arms else "-"  # noqa: E731
        lines.append(f"| {label} | {group['units']} | {arms['none']['accuracy']:.3f} | {get('untrained', 'vs_none')} | "
                     f"{_short(sel.get('vs_none'))} | {_short(sel.get('vs_untrained'))} | {get('average', 'vs_none')} | "
                     f"{get('average', 'vs_untrained')} | {get('shortlist_average', 'vs_none')} | "
                     f"{_short(sel.get('vs_average'))} | {_oracles(arms)} |")
    return lines + [""]


STRATEGIES = (("starved", "crossback (kv)"), ("starved-mergenet", "mergenet"),
              ("heterogeneous", "crossback (kv)"), ("heterogeneous-mergenet", "mergenet"))


def render_strategies(results: dict[str, dict], score: str = "ddv") -> list[str]:
    """One row per (regime, strategy): what each transfer strategy is worth where both were measured."""
    rows = [(n, label, results[n]) for n, label in STRATEGIES if n in results]
    if not any(label == "mergenet" for _, label, _ in rows):
        return []
    lines = [f"Transfer strategies (selected by `{score}`; each strategy's `none` arm is its own adaptation "
             "without a peer — mergenet's adapts a per-task K/V copy):", "",
             "| regime | strategy | none | Δ vs none [CI] | Δ vs untrained [CI] | kept Δ vs none | candidates skipped "
             "| KiB per candidate | adaptation time vs none |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, label, result in rows:
        group = result["groups"]["all"]
        arm = group["arms"].get(f"selected:{score}", {})
        cost = result.get("cost") or {}
        kib = "-" if cost.get("bytes_per_candidate") is None else f"{cost['bytes_per_candidate'] / 1024:.1f}"
        ratio = "-" if cost.get("adapt_time_vs_none") is None else f"{cost['adapt_time_vs_none']:.2f}x"
        lines.append(f"| {name.split('-')[0]} | {label} | {group['arms']['none']['accuracy']:.3f} | "
                     f"{_ci(arm.get('vs_none'))} | {_ci(arm.get('vs_untrained'))} | "
                     f"{_ci(group['arms']['kept']['vs_none'])} | {len(result.get('skipped', []))} | {kib} | {ratio} |")
    return lines + [""]


# rendered as the by-direction table only (their full tables are in benchmarks/results/<name>.md)
DIRECTED = (("starved_crossmodal-crossback", "crossback (kv)"), ("starved_crossmodal-encoder", "crossback (encoder)"),
            ("starved_crossmodal-mergenet", "mergenet"), ("starved_crossmodal-mona_emb", "mona, λ = 0"),
            ("starved_crossmodal-mona", "mona"), ("starved_crossmodal-mona_strong", "mona, α = 10"),
            ("starved_crossmodal_genesis-crossback", "genesis: crossback (backbone)"),
            ("starved_crossmodal_genesis-mona", "genesis: mona"))


DIRECTED_CAPTION = (
    "Strategies by direction (starved regime, emoji half: each receiver beside an image and a text donor; "
    "independent initialisations unless marked genesis (`benchmarks/transfer/starved_crossmodal_genesis.yaml`: one genesis, "
    "LogME, head probe); every donor's own arm, paired to the strategy's own `none` and to the untrained control):")
# freqkd's split holds the public paired set out of every task: its test items differ from the table above
FREQKD_DIRECTED = (("freqkd_crossmodal-backbone", "genesis: crossback (backbone)"),
                   ("freqkd_crossmodal-public", "freqkd, public set"), ("freqkd_crossmodal-shared", "freqkd, shared ids"),
                   ("freqkd_crossmodal-mse", "freqkd, public set, no band split"),
                   ("freqkd_crossmodal-strong", "freqkd, public set, λ1 = λ2 = 64"))
FREQKD_CAPTION = (
    "freqkd by direction (`benchmarks/transfer/freqkd_crossmodal.yaml`: the same nodes, a fifth of the emoji items held "
    "out of every task as the public paired set, so the test items differ from the table above; teachers learned set A, "
    "so with shared ids only task A has a teacher; every donor's own arm, paired to the strategy's own `none` — for "
    "freqkd on the public set that `none` learns the public items' labels too — and to the untrained control):")


def render_directions(results: dict[str, dict], entries=DIRECTED, caption: str = DIRECTED_CAPTION) -> list[str]:
    """Every trained donor's own arm by direction (receiver <- donor modality), one row per strategy."""
    rows = [(label, results[n]) for n, label in entries if n in results and results[n].get("directions")]
    if not rows:
        return []
    lines = [caption, "",
             "| direction | strategy | arms | Δ vs none [CI] | wins / losses | Δ vs untrained [CI] | KiB per candidate "
             "| adaptation s (vs none) |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for key in sorted({k for _, r in rows for k in r["directions"]}):
        for label, result in rows:
            row = result["directions"].get(key)
            if row:
                d = row["vs_none"]
                lines.append(f"| {key} | {label} | {row['arms']} | {_ci(d)} | {d['wins']} / {d['losses']} | "
                             f"{_ci(row['vs_untrained'])} | {row['kib_per_candidate']:.1f} | {_seconds(row)} |")
    return lines + [""]


# `crossback bench compare` outputs: one donor's arm in run A minus the same arm in run B, by direction
COMPARISONS = (("compare-mona-vs-mona_emb", "the alignment term (α = 1)"),
               ("compare-mona_strong-vs-mona_emb", "the alignment term (α = 10)"),
               ("compare-mona-vs-encoder", "stage 1 + alignment vs borrowing the body directly"),
               ("compare-mona-vs-mergenet", "mona vs mergenet"),
               ("compare-genesis-mona-vs-crossback", "one genesis: mona vs the best crossback level"),
               ("compare-freqkd-vs-freqkd_mse", "freqkd: the band split (public set)"),
               ("compare-freqkd-vs-freqkd_shared", "freqkd: public set vs shared ids (task A only)"),
               ("compare-freqkd_strong-vs-freqkd", "freqkd: λ1 = λ2 = 64 vs the paper's 1"))


def render_comparisons() -> list[str]:
    found = [(RESULTS / f"{n}.json", why) for n, why in COMPARISONS if (RESULTS / f"{n}.json").exists()]
    if not found:
        return []
    results = [(json.loads(p.read_text(encoding="utf-8")), why) for p, why in found]
    keys = sorted({k for r, _ in results for k in r["directions"]})
    lines = ["Strategies against each other on the same units and donors (`crossback bench compare`; Δ = A − B, "
             "points, 95 % CI over units; `none`: the two runs' no-peer arms, which differ where their procedures do and "
             "where a receiver's second task starts from what its first kept):", "",
             "| A − B | what it isolates | none | " + " | ".join(keys) + " |", "|---|---|" + "---:|" * (len(keys) + 1)]
    for r, why in results:
        cells = [_short(r["directions"].get(k)) for k in keys]
        lines.append(f"| {r['labels'][0]} − {r['labels'][1]} | {why} | {_short(r['none'])} | " + " | ".join(cells) + " |")
    return lines + [""]


def render() -> str:
    names = [*REGIMES, *(n for n, _ in KINDS), *(n for n, _ in LEVERS), *(n for n, _ in DIRECTED),
             *(n for n, _ in FREQKD_DIRECTED)]
    results = {n: json.loads((RESULTS / f"{n}.json").read_text(encoding="utf-8")) for n in names
               if (RESULTS / f"{n}.json").exists()}
    lines = (render_kinds(results) + render_levers(results) + render_levels(results) + render_strategies(results)
             + render_directions(results) + render_directions(results, FREQKD_DIRECTED, FREQKD_CAPTION) + render_comparisons())
    for name in REGIMES:
        path = RESULTS / f"{name}.json"
        if path.exists():
            lines += render_regime(name, json.loads(path.read_text(encoding="utf-8")))
    return "\n".join(lines).rstrip() + "\n"


def replace_block(readme: str, block: str) -> str:
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{block}{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    new = replace_block(PAGE.read_text(encoding="utf-8"), render())
    return write_or_check(PAGE, new, argv, "python -m crossback.bench.readme")

if __name__ == "__main__":
    sys.exit(main())
