"""The transfer benchmark: every arm from the same M_loc, the untrained control, paired CIs, resumable."""
import csv
import json
import os
import subprocess
import sys

import pytest
import yaml

from crossback.config.bench import parse_bench_config
from crossback.bench.report import analyse, unit_arms
from crossback.bench.runner import run_bench
from crossback.bench.stats import bootstrap_ci, spearman, summary
from crossback.config.errors import ConfigError
from crossback.orchestrator_free.backbone import decide_keep

TINY = {"token_dim": 32, "num_latents": 8, "latent_dim": 32, "depth": 1, "cross_dim_head": 16, "latent_heads": 2,
        "latent_dim_head": 16, "queries_dim": 32, "image": {"channels": 1, "patch_size": 2}}
LOW = {"name": "digits-0-2", "classes": ["0", "1", "2"]}
HIGH = {"name": "digits-3-5", "classes": ["3", "4", "5"]}
DIGITS = {"source": "digits", "image_size": 8}
SCORED = {"ddv", "ddv_cos", "logme_kv", "local_loss", "logme"}


def bench_dict(**over) -> dict:
    cfg = {"regime": "test", "seeds": 1, "split": {"train": 0.5, "val": 0.1, "test": 0.4},
           "model": TINY, "train": {"epochs": 2, "batch_size": 64, "lr": 0.003}, "receiver_epochs": 3,
           "adaptation": {"epochs": 1}, "selection": {"probe": {"pair_count": 8, "token_count": 4}},
           "transfer": {"borrow": "backbone"},  # the selection path (the default, task, matches these label sets)
           "bootstrap": {"resamples": 500},
           "nodes": [{"name": "low", "role": "donor", **DIGITS, "tasks": [LOW]},
                     {"name": "high", "role": "donor", **DIGITS, "tasks": [HIGH]},
                     {"name": "wide", "role": "donor", **DIGITS, "model": {"token_dim": 48}, "tasks": [LOW]},
                     {"name": "rx", "role": "receiver", **DIGITS, "shots": [3], "tasks": [LOW, HIGH]}],
           "quick": {"receiver_epochs": 1}}
    cfg.update(over)
    return cfg


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    cfg = parse_bench_config(bench_dict())
    records = run_bench(cfg, out, seeds=1, progress=False)
    return cfg, out, records


def test_every_arm_starts_from_the_same_local_model_with_the_control_beside_the_donors(bench_run):
    cfg, out, records = bench_run
    assert [(r["receiver"], r["shots"], r["task"]) for r in records] == [("rx", 3, "digits-0-2"), ("rx", 3, "digits-3-5")]
    for rec in records:
        assert rec["samples"]["train"] == rec["samples"]["val"] == 3 * 3  # k items per class in train and val
        assert rec["samples"]["test"] > 100  # the full test split
        peers = {c["peer"]: c for c in rec["candidates"]}
        assert set(peers) == {"low", "high", "wide", "untrained-image"}
        assert peers["untrained-image"]["control"] and not peers["low"]["control"]
        assert peers["wide"]["error"].startswith("skipped:") and "test" not in peers["wide"]  # other token width
        for name in ("low", "high", "untrained-image"):
            c = peers[name]
            assert c["error"] is None and 0.0 <= c["test"] <= 1.0
            assert set(c["scores"]) == SCORED  # no genesis: no kv_motion / kv_drift
            assert c["facts"]["changed_fraction"] > 0.5 and c["facts"]["borrowed_tensors"] > 10  # the backbone ran
        arms = unit_arms(rec)
        assert set(arms) == {"none", "untrained", "random", "kept", "oracle", "oracle_test", "oracle_null"} | {
            f"selected:{s}" for s in SCORED} | {f"selected:{s}>{k}" for s in ("ddv", "logme_kv") for k in (1, 2, 3)}
        by_val = max(("low", "high"), key=lambda n: (peers[n]["val"], -peers[n]["val_loss"]))
        assert arms["oracle"] == peers[by_val]["test"]  # picked on validation, reported on test
        assert arms["oracle_test"] == max(peers[n]["test"] for n in ("low", "high"))
        assert arms["oracle_null"] > arms["none"]  # the best of 2 zero-effect arms still reads above none
        assert arms["random"] == pytest.approx((peers["low"]["test"] + peers["high"]["test"]) / 2)
        assert rec["kept"] in ("selected", "none") and rec["keep_reason"]


def test_report_pairs_each_arm_with_none_and_the_control(bench_run):
    cfg, out, records = bench_run
    result = analyse(records, cfg.bootstrap)
    table = result["groups"]["all"]["arms"]
    diffs = [unit_arms(r)["oracle"] - unit_arms(r)["none"] for r in records]
    assert table["oracle"]["vs_none"]["mean"] == pytest.approx(sum(diffs) / len(diffs))
    assert table["oracle"]["vs_none"]["n"] == 2 and table["untrained"]["vs_untrained"] is None
    vs_control = [unit_arms(r)["oracle"] - unit_arms(r)["untrained"] for r in records]
    assert table["oracle"]["vs_untrained"]["mean"] == pytest.approx(sum(vs_control) / 2)
    assert set(result["groups"]) == {"all"} and set(result["groups"]["all"]["scores"]) == SCORED | {
        f"{s}>{k}" for s in ("ddv", "logme_kv") for k in (1, 2, 3)}
    assert any("wide" in s and "KV shapes" in s for s in result["skipped"])


def _unit(none: float, cands: list[tuple[str, float, float]], test_items: int = 200) -> dict:
    """A unit record: ``none``'s test accuracy and trained candidates (peer, val, test)."""
    return {"none": {"test": none}, "kept_test": none, "samples": {"test": test_items}, "seed": 0, "receiver": "rx",
            "shots": 2, "task": "t", "path": "backbone",
            "candidates": [{"peer": p, "control": False, "error": None, "val": v, "val_loss": 1.0, "test": t,
                            "scores": {"logme": -i}} for i, (p, v, t) in enumerate(cands)]}


def test_the_oracle_picks_on_validation_and_the_test_picked_maximum_is_only_an_upper_bound():
    rec = _unit(0.50, [("a", 0.9, 0.52), ("b", 0.4, 0.61), ("c", 0.7, 0.49)])
    arms = unit_arms(rec)
    assert arms["oracle"] == 0.52  # a validated best; b's 0.61 on test is what hindsight on test would claim
    assert arms["oracle_test"] == 0.61
    assert arms["selected:logme"] == 0.52  # logme ranks a first: no regret against the honest oracle
    from crossback.bench.report import score_table
    table = score_table([rec], {"resamples": 200, "confidence": 0.95, "seed": 0})
    assert table["logme"]["regret"]["mean"] == 0.0 and table["logme"]["picked_best"] == 1.0


def test_the_no_effect_null_is_the_expected_best_of_k_binomial_draws():
    import numpy as np
    from crossback.bench.report import expected_max_excess
    draws = np.random.default_rng(0).binomial(150, 0.6, size=(100_000, 4)).max(axis=1) / 150
    assert expected_max_excess(0.6, 150, 4) == pytest.approx(draws.mean() - 0.6, abs=5e-4)
    assert expected_max_excess(0.6, 150, 1) == pytest.approx(0.0, abs=1e-12)  # one arm: no selection, no bias
    assert expected_max_excess(0.6, 600, 4) < expected_max_excess(0.6, 150, 4)  # more test items, less noise
    rec = _unit(0.6, [(p, 0.5, 0.6) for p in "abcd"], test_items=150)
    assert unit_arms(rec)["oracle_null"] - 0.6 == pytest.approx(expected_max_excess(0.6, 150, 4))


def test_a_bare_task_name_and_its_superclass_spelled_out_give_the_same_task_split():
    """``tasks: [animal-mammal]`` is the superclass animal-mammal (docs/data.md): a donor that learned it is
    a same-task donor whichever way either side wrote it, and one that learned another group is not."""
    from crossback.bench.runner import same_task_donors

    def config(bare: bool):
        def task(group):
            return group if bare else {"name": f"task-{group}", "superclass": group}
        emoji = {"source": "emoji", "modality": "text"}
        return parse_bench_config(bench_dict(nodes=[
            {"name": "mammals", "role": "donor", **emoji, "tasks": [task("animal-mammal")]},
            {"name": "food", "role": "donor", **emoji, "tasks": [task("food-fruit")]},
            {"name": "rx", "role": "receiver", **emoji, "shots": [3], "tasks": [task("animal-mammal"), task("food-fruit")]}]))

    for bare in (True, False):
        cfg = config(bare)
        rx = cfg.nodes[-1]
        assert [same_task_donors(cfg, rx, t) for t in rx.tasks] == [{"mammals"}, {"food"}], bare


def test_rerun_resumes_and_a_fresh_run_reproduces_the_numbers(bench_run, tmp_path):
    cfg, out, records = bench_run
    units = sorted(out.glob("seed-*/units/*.json"))
    stamps = [p.stat().st_mtime_ns for p in units]
    assert run_bench(cfg, out, seeds=1, progress=False) == records
    assert [p.stat().st_mtime_ns for p in units] == stamps  # nothing was recomputed
    fresh = run_bench(cfg, tmp_path / "again", seeds=1, progress=False)
    timing = ("latency", "seconds", "payload_seconds", "score_seconds")  # wall times: the only thing a rerun may change
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("candidates", "none")} | {
        "none": {k: v for k, v in r["none"].items() if k not in timing},
        "candidates": [{k: v for k, v in c.items() if k not in timing} for c in r["candidates"]]} for r in rs]
    assert strip(fresh) == strip(records)
    other = parse_bench_config(bench_dict(adaptation={"epochs": 2}))
    with pytest.raises(ConfigError, match="different bench config"):
        run_bench(other, out, seeds=1, progress=False)


def test_cli_writes_results_table_and_plot(tmp_path):
    cfg = tmp_path / "bench.yaml"
    data = bench_dict()
    data["nodes"] = [n for n in data["nodes"] if n["name"] != "wide"]
    cfg.write_text(yaml.safe_dump(data))
    proc = subprocess.run([sys.executable, "-m", "crossback.app.cli", "bench", "transfer", "--config", str(cfg),
                           "--seeds", "1", "--out", str(tmp_path / "out"), "--quick", "--no-progress",
                           "--tensorboard", str(tmp_path / "board")],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "results.json").read_text())
    assert result["command"].endswith("--seeds 1 --out " + str(tmp_path / "out") + " --quick")
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| untrained |" in md and "| selected:ddv |" in md and "Spearman" in md
    assert (tmp_path / "out" / "results.png").stat().st_size > 10_000
    assert len(result["per_unit"]) == 2
    with open(tmp_path / "out" / "results.csv", newline="") as f:  # every arm of every unit, as results.json
        rows = list(csv.DictReader(f))
    for unit in result["per_unit"]:
        for arm, accuracy in unit["arms"].items():
            (row,) = [r for r in rows if r["task"] == unit["task"] and r["seed"] == str(unit["seed"])
                      and r["metric"] == f"Top1_Acc_Exp/eval_phase/test_stream/{arm}"]
            assert float(row["value"]) == accuracy
    assert any(r["metric"].startswith("Selection/ddv/") for r in rows)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (run,) = [p.parent for p in (tmp_path / "board").rglob("events.out.tfevents.*")]
    board = EventAccumulator(str(run), size_guidance={"scalars": 0})
    board.Reload()
    unit = result["per_unit"][0]
    index = next(int(r["index"]) for r in rows if r["task"] == unit["task"])
    none = [e.value for e in board.Scalars("Top1_Acc_Exp/eval_phase/test_stream/none") if e.step == index]
    assert none == [pytest.approx(unit["arms"]["none"], rel=1e-6)]
    # --report-only rewrites the report from the unit records, running nothing (even where the saved
    # config no longer matches: an older run, a newer analysis)
    (tmp_path / "out" / "config.json").write_text("{}")
    (tmp_path / "out" / "results.md").unlink()
    again = subprocess.run([sys.executable, "-m", "crossback.app.cli", "bench", "transfer", "--config", str(cfg),
                            "--seeds", "1", "--out", str(tmp_path / "out"), "--quick", "--report-only"],
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    rewritten = json.loads((tmp_path / "out" / "results.json").read_text())
    assert rewritten["per_unit"] == result["per_unit"] and rewritten["command"] == result["command"]
    assert (tmp_path / "out" / "results.md").read_text() == md
    empty = subprocess.run([sys.executable, "-m", "crossback.app.cli", "bench", "transfer", "--config", str(cfg),
                            "--seeds", "1", "--out", str(tmp_path / "nothing"), "--report-only"],
                           capture_output=True, text=True, timeout=600)
    assert empty.returncode != 0 and "holds no unit records" in empty.stderr


@pytest.mark.parametrize("over, needle", [
    ({"nodes": [{"name": "rx", "tasks": [LOW], "shots": [0]}]}, "shots must be at least 1"),
    ({"nodes": [{"name": "d", "role": "donor", "tasks": [LOW]}]}, "at least one node must be a receiver"),
    ({"nodes": [{"name": "rx", "role": "boss", "tasks": [LOW]}]}, r"nodes\[0\].role: 'boss' is not one of"),
    ({"adaptation": {"epochs": -1}}, "adaptation.epochs: must be at least 0"),
    ({"seeds": 0}, "seeds: must be at least 1"),
    ({"epochs": 3}, "key 'epochs' is misplaced: it belongs at 'train.epochs' or 'adaptation.epochs'"),
])
def test_bad_bench_configs_name_their_key(over, needle):
    with pytest.raises(ConfigError, match=needle):
        parse_bench_config(bench_dict(**over), "b.yaml")


def test_quick_overrides_apply_only_with_quick():
    assert parse_bench_config(bench_dict()).receiver_epochs == 3
    assert parse_bench_config(bench_dict(), quick=True).receiver_epochs == 1


def test_ci_over_seeds_keeps_the_tasks_fixed():
    # two tasks that differ a lot, each perfectly stable across seeds
    values, strata = [-0.3] * 5 + [0.0] * 5, ["digits"] * 5 + ["emoji"] * 5
    s = summary(values, 2000, 0.95, strata=strata)
    assert s["seeds_lo"] == pytest.approx(-0.15) and s["seeds_hi"] == pytest.approx(-0.15)
    assert s["lo"] < -0.2 and s["hi"] > -0.1  # over units, the spread between tasks widens it


def test_bootstrap_ci_and_spearman():
    assert bootstrap_ci([0.5] * 5, 200, 0.95) == (0.5, 0.5)
    lo, hi = bootstrap_ci([0.0, 0.1, 0.2, 0.3, 0.4], 2000, 0.95, seed=1)
    assert lo < 0.2 < hi and lo >= 0.0 and hi <= 0.4
    assert bootstrap_ci([0.0, 0.1, 0.2, 0.3, 0.4], 2000, 0.95, seed=1) == (lo, hi)  # seeded
    s = summary([0.1, -0.2, 0.0, 0.3], 500, 0.9)
    assert (s["wins"], s["losses"], s["ties"], s["n"]) == (2, 1, 1, 4)
    assert spearman([1, 2, 3], [0.1, 0.2, 0.3]) == pytest.approx(1.0)
    assert spearman([1, 2], [0.1, 0.2]) is None and spearman([1, 1, 1], [0.1, 0.2, 0.3]) is None


def _arm(val: float, val_loss: float, val_correct=None):
    from crossback.orchestrator_free.backbone import Arm

    return Arm(val=val, val_loss=val_loss, test=0.0, facts={}, seconds=0.0, state={}, val_correct=val_correct)


def test_a_borrowed_arm_is_kept_only_if_it_matches_none_on_validation():
    none = _arm(0.6, 1.0)
    kept, why = decide_keep({"none": none, "selected": _arm(0.55, 0.5)}, "selected")
    assert kept == "none" and "would degrade" in why
    assert decide_keep({"none": none, "selected": _arm(0.7, 2.0)}, "selected")[0] == "selected"
    # a tie in accuracy (a handful of validation items) is decided by the validation loss
    assert decide_keep({"none": none, "selected": _arm(0.6, 0.9)}, "selected")[0] == "selected"
    kept, why = decide_keep({"none": none, "selected": _arm(0.6, 1.1)}, "selected")
    assert kept == "none" and "no evidence" in why
    assert decide_keep({"none": none}, "selected") == ("none", "no selected arm (no usable candidate)")
    assert decide_keep({"none": none, "selected": _arm(0.9, 0.1)}, "none")[0] == "none"


def test_the_node_keeps_none_when_the_borrowed_arm_loses_on_validation(bench_run):
    _, _, records = bench_run
    for rec in records:
        chosen = next(c for c in rec["candidates"] if c["peer"] == rec["chosen"])
        assert (rec["kept"] == "selected") == (chosen["val"] > rec["none"]["val"] or (
            chosen["val"] == rec["none"]["val"] and chosen["val_loss"] <= rec["none"]["val_loss"]))
        assert rec["kept_test"] == (chosen["test"] if rec["kept"] == "selected" else rec["none"]["test"])


def test_genesis_gives_every_node_the_same_starting_core():
    import torch

    from crossback.bench.runner import _learner

    for genesis, same in ((True, True), (False, False)):
        cfg = parse_bench_config(bench_dict(genesis=genesis))
        a, b = (_learner(cfg, cfg.nodes[i], 3, i) for i in (0, 3))
        assert all(torch.equal(a.layers[n].weight, b.layers[n].weight) for n in a.layers) == same
        assert a.seed != b.seed  # their own seeds still drive everything else


def test_a_regime_can_start_from_a_base_config_and_override_named_nodes(tmp_path):
    import yaml

    from crossback.config.bench import load_bench_config
    from crossback.config.errors import ConfigError

    (tmp_path / "base.yaml").write_text(yaml.safe_dump(bench_dict()))
    (tmp_path / "child.yaml").write_text(yaml.safe_dump({"base": "base.yaml", "regime": "child", "genesis": True,
                                                         "node_overrides": {"rx": {"shots": [2, 4]}}}))
    cfg, _ = load_bench_config(tmp_path / "child.yaml")
    assert cfg.regime == "child" and cfg.genesis and cfg.nodes[3].shots == (2, 4) and cfg.nodes[0].name == "low"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"base": "base.yaml", "node_overrides": {"nobody": {}}}))
    with pytest.raises(ConfigError, match="no node named \\['nobody'\\]"):
        load_bench_config(tmp_path / "bad.yaml")


def test_a_mona_bench_fetches_each_donors_gradient_and_reports_directions(tmp_path):
    """Every adapted candidate (the untrained control included, on the items of the donor it mirrors)
    came with a body and an outer-loss gradient; the report pairs each donor's arm by direction."""
    cfg = parse_bench_config(bench_dict(transfer={"strategy": "mona", "mona": {"stage1_epochs": 1}}))
    records = run_bench(cfg, tmp_path / "mona", seeds=1, progress=False)
    for rec in records:
        peers = {c["peer"]: c for c in rec["candidates"]}
        for name in ("low", "high", "untrained-image"):
            c = peers[name]
            assert c["error"] is None and c["extra"]["sample_count"] >= 2 and c["facts"]["stage1_steps"] > 0
        assert peers["untrained-image"]["extra"]["sample_count"] == peers["low"]["extra"]["sample_count"]
        assert peers["untrained-image"]["extra"]["outer_loss"] != peers["low"]["extra"]["outer_loss"]
        assert "grad_cosine" in peers["low"]["facts"]
    result = analyse(records, cfg.bootstrap)
    (direction,) = result["directions"].items()
    key, row = direction
    assert key == "image <- image" and row["arms"] == 2 * len(records)  # low and high, every unit
    mean = sum(c["test"] - r["none"]["test"] for r in records for c in r["candidates"]
               if c["peer"] in ("low", "high")) / row["arms"]
    assert row["vs_none"]["mean"] == pytest.approx(mean)


def test_compare_pairs_the_same_donors_arm_across_two_runs(bench_run, tmp_path):
    import copy

    from crossback.bench.compare import compare, markdown, read_units

    cfg, out, records = bench_run
    same = compare(read_units(out), records)
    assert same["units"] == len(records) and same["missing"] == 0
    assert set(same["directions"]) == {"image <- image", "image <- untrained"}
    assert all(d["mean"] == 0.0 and d["ties"] == d["n"] for d in [same["none"], *same["directions"].values()])
    better = copy.deepcopy(records)
    for rec in better:
        for c in rec["candidates"]:
            if c["peer"] == "low":
                c["test"] += 0.1
    moved = compare(better, records)["directions"]
    assert moved["image <- image"]["mean"] == pytest.approx(0.05) and moved["image <- image"]["wins"] == len(records)
    assert moved["image <- untrained"]["mean"] == 0.0
    assert "| image <- image | 4 | +5.0" in markdown(compare(better, records), "A", "B")
    assert compare(better[:1], records[1:])["missing"] == 1


def test_the_same_task_keep_rule_needs_none_to_be_significantly_better():
    import torch

    def arm(right: list[int]):
        return _arm(sum(right) / len(right), 1.0, torch.tensor(right, dtype=torch.bool))

    # none right on 2 items the borrowed task misses, borrowed on 0: a sign test cannot tell that from noise
    kept, why = decide_keep({"none": arm([1, 1, 1, 0]), "selected": arm([0, 0, 1, 0])}, "selected", "sign")
    assert kept == "selected" and "not significantly worse" in why
    # ... the accuracy rule would have thrown the peer's same task away
    assert decide_keep({"none": arm([1, 1, 1, 0]), "selected": arm([0, 0, 1, 0])}, "selected")[0] == "none"
    kept, why = decide_keep({"none": arm([1] * 12), "selected": arm([0] * 12)}, "selected", "sign")
    assert kept == "none" and "none is right on 12" in why and "significantly worse" in why


def test_the_fallback_keeps_a_backbone_of_another_task_only_on_a_margin_of_validation_items():
    import torch

    from crossback.transfer.crossback import TaskTransfer

    def arm(right: list[int]):
        return _arm(sum(right) / len(right), 1.0, torch.tensor(right, dtype=torch.bool))

    none = arm([1, 0, 0, 0, 1, 0])
    one_up = {"none": none, "selected": arm([1, 1, 0, 0, 1, 0])}  # right on one more item: luck as often as not
    assert decide_keep(one_up, "selected")[0] == "selected"  # the accuracy rule keeps it
    kept, why = decide_keep(one_up, "selected", "margin")
    assert kept == "none" and "fewer than 2 more" in why
    kept, why = decide_keep({"none": none, "selected": arm([1, 1, 1, 0, 1, 0])}, "selected", "margin")
    assert kept == "selected" and "right on 2 validation items none gets wrong, none on 0" in why
    # a win on 3 items and a loss on 1 is a net 2
    assert decide_keep({"none": none, "selected": arm([0, 1, 1, 1, 1, 0])}, "selected", "margin")[0] == "selected"
    task = TaskTransfer()
    assert (task.keep_rule, task.fallback.keep_rule) == ("sign", "margin")


def test_a_task_bench_borrows_matched_tasks_reports_the_limit_and_falls_back_elsewhere(tmp_path):
    cfg = parse_bench_config(bench_dict(
        transfer={"borrow": "task"},
        nodes=[{"name": "low", "role": "donor", **DIGITS, "tasks": [LOW]},
               {"name": "rx", "role": "receiver", **DIGITS, "shots": [3],
                "tasks": [{"name": "mine", "classes": ["2", "0", "1"]}, HIGH]}]))
    same, new = run_bench(cfg, tmp_path, seeds=1, progress=False)
    assert same["kind"] == "same-task" and same["path"] == "task" and same["chosen"] == "low"
    (match,) = [c for c in same["candidates"] if c["peer"] == "low"]
    assert "task_val" in match["scores"] and "test" in match
    control = [c for c in same["candidates"] if c["control"]]
    assert control and "test" in control[0]  # the untrained donor, borrowed the fallback way
    assert same["limit"]["donor"] == "low" and 0 < same["limit"]["accuracy"] <= 1
    arms = unit_arms(same)
    assert arms["selected:task_val"] == match["test"] and arms["limit"] == same["limit"]["accuracy"]
    assert new["kind"] == "new-task" and new["path"] == "fallback" and "limit" not in new
    group = analyse([same, new], cfg.bootstrap)["groups"]["same-task"]
    assert "of_limit" in group["arms"]["kept"] and group["arms"]["kept"]["vs_limit"]["n"] == 1


@pytest.mark.parametrize("node, needle", [
    ({"name": "rx", "role": "receiver", **DIGITS, "tasks": [{"name": "t", "classes": ["0", "x"]}]},
     "nodes[1] (rx): task 't' names unknown class 'x'"),
    ({"name": "rx", "role": "receiver", "source": "folder", "tasks": [LOW]}, "nodes[1] (rx): root is required"),
])
def test_every_nodes_tasks_are_checked_before_anything_trains(tmp_path, node, needle):
    cfg = parse_bench_config(bench_dict(nodes=[{"name": "low", "role": "donor", **DIGITS, "tasks": [LOW]}, node]))
    with pytest.raises(ConfigError) as err:
        run_bench(cfg, tmp_path, seeds=1, progress=False)
    assert needle in str(err.value)
    assert not (tmp_path / "seed-0").exists()  # no donor trained


def test_a_superclass_too_small_to_split_names_its_folder_and_counts(tmp_path):
    root = tmp_path / "data"
    for cls, n in (("a", 3), ("b", 25)):
        folder = root / "animals" / cls
        folder.mkdir(parents=True)
        for i in range(n):
            (folder / f"{i}.txt").write_text(f"{cls} item {i}")
    cfg = parse_bench_config(bench_dict(split={"train": 0.5, "val": 0.1, "test": 0.4, "min_items_per_class": 20},
                                        nodes=[{"name": "rx", "role": "receiver", "source": "folder", "root": str(root),
                                                "modality": "text", "tasks": [{"name": "animals"}]}]))
    with pytest.raises(ConfigError) as err:
        run_bench(cfg, tmp_path / "out", seeds=1, progress=False)
    msg = str(err.value)
    assert "nodes[0] (rx)" in msg and str(root) in msg and "b: 25, a: 3" in msg and "min_items_per_class=20" in msg


def test_the_average_arm_adapts_on_the_mean_of_every_trained_candidates_payload(tmp_path):
    import torch

    from crossback.models.borrowed import average_parts

    a, b = {"w": torch.ones(2, 2), "only_a": torch.zeros(1)}, {"w": 3 * torch.ones(2, 2)}
    assert set(average_parts([a, b])) == {"w"} and torch.equal(average_parts([a, b])["w"], 2 * torch.ones(2, 2))
    assert average_parts([a]) == {}
    cfg = parse_bench_config(bench_dict(average=True, genesis=True, transfer={"borrow": "backbone"},
                                        selection={"score": "kv_motion", "shortlist": 2, "confirm": "logme",
                                                   "combine": "average",
                                                   "probe": {"pair_count": 8, "token_count": 4}}))
    records = run_bench(cfg, tmp_path, seeds=1, progress=False)
    for rec in records:
        assert rec["average"]["peers"] == 2 and 0 <= rec["average"]["test"] <= 1  # low and high; wide has other shapes
        assert unit_arms(rec)["average"] == rec["average"]["test"]
        # the shortlist (top 2 by kv_motion) holds both trained donors: its soup is the same payload, the same arm
        assert rec["shortlist_average"]["peers"] == ["high", "low"]
        assert rec["shortlist_average"]["test"] == rec["average"]["test"]
        assert unit_arms(rec)["shortlist_average"] == rec["shortlist_average"]["test"]
        # combine: average — the node keeps the soup or its own arm, as the keep rule says
        assert rec["kept_test"] == (rec["shortlist_average"] if rec["kept"] == "selected" else rec["none"])["test"]
    assert "vs_average" in analyse(records, cfg.bootstrap)["groups"]["all"]["arms"]["kept"]


def test_the_benchmark_chooses_what_a_node_chooses_when_a_shortlisted_payload_fails(tmp_path):
    """One selection pipeline: the benchmark's unit and a node's transfer step, on the same served
    snapshots and the same local model, choose the same peer when a shortlisted candidate's payload
    fails (a peer that serves a donor's K/V, so it ranks as that donor, and a backbone of other shapes)."""
    import torch

    from crossback.bench.peers import serve_snapshots
    from crossback.bench.runner import ReceiverUnits, _donors, _learner, _tasks, _train_opts
    from crossback.config.selection import ExperimentConfig
    from crossback.models.methods import learn_task
    from crossback.node.server import PeerServicer
    from crossback.node.wire import encode_all
    from crossback.orchestrator_free.backbone import ArmPlan, PeerAccess, transfer_step
    from crossback.orchestrator_free.selection import TaskAtHand

    class Liar(PeerServicer):
        def FetchPayload(self, request, context):
            yield from encode_all({"core.latents": torch.zeros(3, 3)}, self.snapshot().version)

    cfg = parse_bench_config(bench_dict(genesis=True, selection={
        "score": "kv_motion", "shortlist": 2, "probe": {"pair_count": 8, "token_count": 4}}))
    catalogs, seed, index = {}, 0, 3
    snaps = _donors(cfg, seed, tmp_path, catalogs)
    snaps["a-liar"] = snaps["low"]  # ranks as low in stage 1, sorts before it on a tie
    rx = cfg.nodes[index]
    data, info = _tasks(cfg, rx, seed, 3, catalogs)[0]
    with serve_snapshots(snaps, tmp_path / "logs", servicers={"a-liar": Liar}) as addresses:
        unit = ReceiverUnits(cfg, rx, _learner(cfg, rx, seed, index), 3, seed, addresses)
        try:
            record = unit.task(0, data, info)
            learner = _learner(cfg, rx, seed, index)
            learn_task(learner, data, cfg.method, _train_opts(cfg, rx, receiving=True))
            events = []
            transfer_step(TaskAtHand(learner, 0, data), PeerAccess(rx.name, unit.donors, unit.clients, unit.genesis),
                          cfg.selection, ArmPlan(unit.strategy, unit.opts, seed),
                          lambda event, **fields: events.append({"event": event, **fields}),
                          ExperimentConfig(random=False))
        finally:
            unit.clients.close()
    selected = next(e for e in events if e["event"] == "backbone_selected")
    liar = next(c for c in selected["candidates"] if c["peer"] == "a-liar")
    assert liar["shortlisted"] and "lacks" in liar["error"]  # the case: a shortlisted payload failed
    assert record["chosen"] is not None and record["chosen"] == selected["chosen"]
    assert "lacks" in next(c for c in record["candidates"] if c["peer"] == "a-liar")["error"]
