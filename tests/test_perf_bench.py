"""The speed benchmarks run and report what they claim to (their figures are not asserted: speed
targets live in benchmarks/, not in timed tests)."""
import json
import runpy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_masked_step_benchmark_reports_every_method(tmp_path, monkeypatch, capsys):
    out = tmp_path / "perf.json"
    monkeypatch.setattr(sys, "argv", ["masked_step.py", "--steps", "2", "--batch", "4", "--image-size", "16",
                                      "--json", str(out)])
    try:
        runpy.run_path(str(ROOT / "benchmarks/perf/masked_step.py"), run_name="__main__")
    except SystemExit as exc:
        assert exc.code == 0
    figures = json.loads(out.read_text())
    assert set(figures["methods"]) == {"packnet", "piggyback", "cpg"} and "cores" in figures["machine"]
    for method, f in figures["methods"].items():
        assert f["train_step"]["ratio"] > 0 and f["inference"]["folded_ratio"] > 0, method
    assert "folded/plain" in capsys.readouterr().out


def _run_script(name, argv, monkeypatch):
    monkeypatch.setattr(sys, "argv", [name, *argv])
    try:
        runpy.run_path(str(ROOT / "benchmarks/perf" / name), run_name="__main__")
    except SystemExit as exc:
        assert exc.code == 0


def test_gossip_benchmark_measures_traffic_and_detection(tmp_path, monkeypatch):
    out = tmp_path / "gossip.json"
    _run_script("gossip.py", ["--sizes", "3,4", "--fanouts", "1", "--window", "2", "--interval", "0.5",
                              "--failure-timeout", "3", "--json", str(out)], monkeypatch)
    rows = json.loads(out.read_text())["rows"]
    assert [r["nodes"] for r in rows] == [3, 4]
    for r in rows:
        assert r["messages_per_node_s"] > 0 and r["detect_all_s"] is not None and r["false_positives"] >= 0


def test_swarm_benchmark_runs_real_nodes_and_a_late_receiver(tmp_path, monkeypatch):
    out = tmp_path / "swarm.json"
    _run_script("swarm.py", ["--nodes", "2", "--serve-for", "1", "--late-epochs", "4", "--score", "ddv",
                             "--borrow", "kv", "--json", str(out)], monkeypatch)
    figures = json.loads(out.read_text())
    assert figures["late_receiver"]["candidates"] == 2 and figures["late_receiver"]["scored"] == 2
    assert figures["rss_mib"]["serving"] > 0 and 0 < figures["bytes_per_candidate_vs_model"] < 0.5


def test_ddp_benchmark_runs_one_process_and_two_ranks_side_by_side(tmp_path, monkeypatch):
    out = tmp_path / "ddp.json"
    _run_script("ddp.py", ["--scales", "1", "--epochs", "1", "--json", str(out)], monkeypatch)
    (row,) = json.loads(out.read_text())["rows"]
    assert row["task_seconds_ratio"] > 0 and len(row["one_process"]["task_s"]) == 3
    assert row["2_ranks"]["ranks"] == {"world_size": 2, "in_step": True, "synced": True}
    assert row["accuracy_gap"] <= 0.02


def test_selection_scale_benchmark_probes_at_most_m_peers_of_a_large_view(tmp_path, monkeypatch):
    out = tmp_path / "scale.json"
    _run_script("selection_scale.py", ["--peers", "6,12", "--max-candidates", "3,0", "--servers", "3", "--repeats", "1",
                                       "--json", str(out)], monkeypatch)
    rows = {(r["peers"], r["max_candidates"]): r for r in json.loads(out.read_text())["rows"]}
    assert rows[(6, 3)]["probed"] == rows[(12, 3)]["probed"] == 3 and rows[(12, 0)]["probed"] == 12
    assert rows[(12, 3)]["bytes_median"] < rows[(12, 0)]["bytes_median"]


def test_metrics_benchmark_measures_training_rpcs_a_flood_and_scrapes(tmp_path, monkeypatch):
    out = tmp_path / "metrics.json"
    _run_script("metrics_cost.py", ["--repeats", "1", "--calls", "20", "--flood", "50", "--scrapes", "20",
                               "--json", str(out)], monkeypatch)
    figures = json.loads(out.read_text())
    assert figures["training"]["ratio"] > 0 and 0 < figures["training"]["metrics_share_of_a_step"] < 0.02
    assert figures["rpc"]["ratio"] > 0 and figures["flood"]["distinct_caller_ids"] == 50
    assert figures["flood"]["added"] <= 5  # distinct hostile ids never become labels
    for name in ("busy_node", "every_label"):
        scrape = figures["scrape"][name]
        assert scrape["count"] == 60 and scrape["series"] > 100 and scrape["node_p50_ms"] > 0
        assert len(scrape["node_p99_ms_by_round"]) == 3
    assert figures["scrape"]["every_label"]["series"] > figures["scrape"]["busy_node"]["series"]


def test_node_memory_benchmark_starts_served_nodes_both_ways_and_reads_their_pss(tmp_path):
    import subprocess

    out = tmp_path / "memory.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks/perf/node_memory.py"), "--nodes", "2", "--timeout", "240",
                    "--json", str(out)], check=True, capture_output=True, timeout=600)
    result = json.loads(out.read_text())
    assert [r["mode"] for r in result["rows"]] == ["fork", "spawn"] and result["nodes"] == 2
    for row in result["rows"]:  # every node served (the script fails otherwise) and was measured
        assert row["seconds_to_all_serving"] > 0
        assert 0 < row["per_node_mib"]["Pss"] <= row["per_node_mib"]["Rss"]
    fork, spawn = result["rows"]
    assert fork["parent_pss_mib"] > 0 and spawn["parent_pss_mib"] is None
    assert fork["pss_per_node_mib"] == pytest.approx(fork["per_node_mib"]["Pss"] + fork["parent_pss_mib"] / 2, abs=0.2)
