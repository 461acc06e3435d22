"""The GPU check (benchmarks/gpu_check.sh) where no GPU is: its sanitizer test list names tests
that exist, it stops cleanly without a GPU, and its summary counts what the steps left."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"


def load_report():
    spec = importlib.util.spec_from_file_location(
        "gpu_check_report", REPO / "benchmarks" / "gpu_check_report.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sanitizer_test_ids() -> list[str]:
    lines = (REPO / "benchmarks" / "sanitizer_tests.txt").read_text().splitlines()
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


def test_sanitizer_list_names_existing_tests(tmp_path):
    ids = sanitizer_test_ids()
    assert ids and all("cuda" in test_id for test_id in ids)
    # pytest exits 4 ("not found") on an id that no longer exists. Started outside the source
    # root, whose ssanet_ops/ would shadow an installed (not editable) package on sys.path.
    command = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"]
    done = subprocess.run(
        [*command, *(str(REPO / test_id) for test_id in ids)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    collected = [line for line in done.stdout.splitlines() if "::" in line]
    assert sorted(collected) == sorted(ids)


def test_declared_kernels_are_every_global_function_by_op(tmp_path):
    report = load_report()
    (tmp_path / "csrc" / "pool").mkdir(parents=True)
    (tmp_path / "csrc" / "common").mkdir()
    (tmp_path / "csrc" / "pool" / "kernels.cuh").write_text(
        "template <typename T>\n__global__ void forward_kernel(const T* x) {}\n"
        "__global__ void __launch_bounds__(256)\n    products_kernel(int n) {}\n"
        "__device__ float helper(float x) { return x; }\n"
    )
    (tmp_path / "csrc" / "pool" / "cpu.cpp").write_text("__global__ void not_cuda(int n) {}\n")
    (tmp_path / "csrc" / "common" / "simulation.h").write_text(
        "#define __global__\n#define __device__\n__global__ void fill_kernel(float* x) {}\n"
    )
    declared = report.declared_kernels(tmp_path)
    assert declared == ["common::fill_kernel", "pool::forward_kernel", "pool::products_kernel"]
    # Kernels of the same name in two ops are told apart by the op's namespace.
    launched = [
        "void ssanet_ops::pool::(anonymous namespace)::forward_kernel<float>(float const*)",
        "void ssanet_ops::crop::forward_kernel<float>(float const*)",
        "void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>>()",
    ]
    assert report.launches_of("pool::forward_kernel", launched) == launched[:1]
    assert report.launches_of("pool::products_kernel", launched) == []
    assert report.launches_of("common::fill_kernel", launched) == []


@pytest.mark.skipif(shutil.which("timeout") is None, reason="needs coreutils' timeout")
def test_stops_cleanly_without_a_gpu(tmp_path):
    # CUDA_VISIBLE_DEVICES="" hides any GPU from torch, as on a machine without one.
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHON=sys.executable)
    done = subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path / "out")], env=env, capture_output=True, text=True
    )
    assert done.returncode == 2, done.stdout + done.stderr
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "STOPPED, no usable GPU" in summary
    assert "no GPU found" in summary and "no GPU found" in done.stderr
    facts = json.loads((tmp_path / "out" / "facts.json").read_text())
    assert facts["stop"].startswith("no GPU found")
    assert not (tmp_path / "out" / "logs" / "build.log").exists()


def test_summary_reports_failures_sanitizer_errors_and_missed_targets(tmp_path, monkeypatch):
    report = load_report()
    out = tmp_path / "out"
    (out / "logs").mkdir(parents=True)
    facts = {
        "date": "2026-11-30 10:00 UTC",
        "commit": "abc1234",
        "python": "3.12.3",
        "nvcc": "13.0.88",
        "compute_sanitizer": "2025.3.1",
        "missing_python_packages": [],
        "stop": None,
        "nvidia_smi": "NVIDIA H200, 580.65, 143771 MiB",
        "torch": "2.11.0+cu130",
        "torch_cuda": "13.0",
        "gpu": "NVIDIA H200",
        "gpu_slug": "nvidia-h200",
        "gpu_arch": "9.0",
        "gpu_memory_gib": 139.8,
        "gpu_count": 1,
    }
    (out / "facts.json").write_text(json.dumps(facts))
    monkeypatch.setenv("GPU_CHECK_START", str(time.time() - 60))
    steps = {"build": "ok", "kernels": "ok", "tests": "failed", "memcheck": "failed"}
    steps |= {"racecheck": "ok", "synccheck": "timeout", "bench-ops": "ok", "bench-model": "ok"}
    (out / "steps.tsv").write_text(
        "step\tstatus\tseconds\tlog\tnote\n"
        + "".join(f"{step}\t{status}\t10\t\t\n" for step, status in steps.items())
    )
    (out / "tests.xml").write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.test_a" name="test_one[cuda]"/>'
        '<testcase classname="tests.test_a" name="test_two[cuda]"><failure message="x"/>'
        "</testcase>"
        '<testcase classname="tests.test_a" name="test_three[cuda]"><skipped/></testcase>'
        "</testsuite></testsuites>"
    )
    (out / "logs" / "sanitizer-memcheck.log").write_text("========= ERROR SUMMARY: 3 errors\n")
    (out / "logs" / "sanitizer-racecheck.log").write_text("========= ERROR SUMMARY: 0 errors\n")
    kernels = report.declared_kernels(REPO)
    (out / "kernels_launched.txt").write_text(
        "".join(
            f"void ssanet_ops::{k.replace('::', '::(anonymous namespace)::')}<float>()\n"
            for k in kernels[1:]
        )
    )
    ops_rows = [
        {
            "op": "oriented_pool",
            "size": "B=96",
            "dtype": "float32",
            "pass": "forward+backward",
            "ratio": 6.5,
            "target": 5.0,
            "meets_target": True,
        },
        {
            "op": "scale_align",
            "size": "N=96",
            "dtype": "bfloat16",
            "pass": "forward+backward",
            "ratio": 2.0,
            "target": 3.0,
            "meets_target": False,
        },
    ]
    (out / "ops_nvidia-h200.json").write_text(json.dumps({"rows": ops_rows}))
    model_rows = [
        {
            "part_features": "shared",
            "precision": "fp32",
            "batch": 1,
            "median_ms": 4.0,
            "latency_target_ms": 5.0,
            "meets_latency_target": True,
            "speedup_vs_reference": 1.2,
            "meets_speedup_target": False,
        },
    ]
    (out / "model_nvidia-h200.json").write_text(json.dumps({"rows": model_rows}))

    assert report.write_summary(out, REPO) == 1
    summary = (out / "summary.md").read_text()
    assert summary.startswith("# GPU check on NVIDIA H200: FAIL")
    assert "1 passed, 1 failed, 0 errors, 1 skipped." in summary
    assert "- FAILED tests.test_a::test_two[cuda]" in summary
    assert "- step synccheck: timeout (" in summary
    assert "| memcheck | 3 |" in summary and "| racecheck | 0 |" in summary
    assert "synccheck: no error summary" in summary
    assert f"launches {len(kernels) - 1} of the {len(kernels)} kernels" in summary
    assert f"Not launched: {kernels[0]}." in summary
    assert "| 6.50x | >= 5x | met |" in summary and "| 2.00x | >= 3x | NOT MET |" in summary
    assert "| 4.00 ms | <= 5 ms | met |" in summary and "| 1.20x | >= 1.5x | NOT MET |" in summary
