"""benchmarks/bench_ops.py: the targets of the issues are shown only for the sizes they were set
for (the full ones), never against a quick run's small sizes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

# bench_ops.py needs the "bench" extra: tqdm, and torchvision for its roi_align baseline.
pytest.importorskip("tqdm", reason="the benchmarks need tqdm (the 'bench' extra)")
# Without torchvision, or beside a torch it was not made for: ssanet's one-line reason.
pytest.importorskip("ssanet._vision", exc_type=ImportError)

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_bench_ops():
    spec = importlib.util.spec_from_file_location("bench_ops", BENCHMARKS / "bench_ops.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_quick_run_shows_no_targets(tmp_path, capsys):
    bench_ops = load_bench_ops()
    arguments = ["--quick", "--device", "cpu", "--ops", "oriented_pool", "--repeats", "1"]
    assert bench_ops.main([*arguments, "--output-dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    # The quick sizes' case has a CPU target at full size (3x): not shown here.
    assert bench_ops.CASE_MODULES["oriented_pool"].cases(False)[0].targets["cpu"]
    assert "target" not in printed and "MET" not in printed
    rows = json.loads((tmp_path / "ops_cpu_quick.json").read_text())["rows"]
    assert rows and not any("target" in row for row in rows)


def test_a_full_size_case_is_judged_against_its_target():
    bench_ops = load_bench_ops()

    def twice(x):
        return x * 2

    case = bench_ops.Case(
        op="double",
        size="4",
        make_inputs=lambda device, dtype: {"x": torch.ones(4, requires_grad=True)},
        implementations={"reference": twice, "ssanet_ops": twice},
        targets={"cpu": {"forward+backward": 1e-9}, "cuda": {"forward": 2.0}},
    )
    rows = bench_ops.run_case(case, torch.device("cpu"), torch.float32, 1, 0, None)
    judged = [row for row in rows if "target" in row]
    # Only the ssanet_ops row of the pass with a CPU target.
    assert [(row["implementation"], row["pass"]) for row in judged] == [
        ("ssanet_ops", "forward+backward")
    ]
    assert judged[0]["meets_target"] == (judged[0]["ratio"] >= 1e-9)
    table = bench_ops.format_table(rows)
    assert table.splitlines()[0].endswith("| target |")
    assert ">= 1e-09x: met" in table
    assert "target" not in bench_ops.format_table(
        bench_ops.run_case(case, torch.device("cpu"), torch.float32, 1, 0, None, False)
    )
