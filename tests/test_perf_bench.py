"""The speed benchmarks run and report what they claim to (their figures are not asserted: speed
targets live in benchmarks/, not in timed tests)."""
import json
import runpy
import sys
from pathlib import Path

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
