"""The GPU check (benchmarks/gpu_check.sh) where no GPU is: its sanitizer test list names tests
that exist, its caps fit one command of the GPU machine, it stops cleanly without a GPU and packs
what it wrote where asked, a copy of the tree without .git names its commit, and its summary
counts what the steps left."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
SANITIZERS = ["memcheck", "racecheck", "synccheck", "initcheck"]
# The GPU machine this project is checked on runs one command for at most this long.
DEVICE_COMMAND_LIMIT_S = 600


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


def script_plan() -> tuple[dict[str, int], int, int]:
    """The script's step caps, its reserve for the summary and the archive, and the total its
    header says the check ends within."""
    text = SCRIPT.read_text()
    plan = re.search(r"^plan=\((.*?)\)", text, re.MULTILINE | re.DOTALL).group(1)
    caps = {name: int(cap) for name, cap in re.findall(r"([\w-]+):(\d+)", plan)}
    finish = int(re.search(r"^finish_cap=(\d+)", text, re.MULTILINE).group(1))
    stated = int(re.search(r"the check ends within (\d+) s", text).group(1))
    return caps, finish, stated


def test_caps_add_up_to_the_stated_budget_inside_one_command():
    caps, finish, stated = script_plan()
    assert sum(caps.values()) + finish == stated
    # The GPU machine runs one command for at most 600 s; a minute stays for the unforeseen.
    assert stated <= DEVICE_COMMAND_LIMIT_S - 60
    # Every step has a cap, and a step that runs pytest has time for its 20 s of start-up and
    # report besides its session limit.
    steps = ["facts", "build", "import", "kernels", "tests", *SANITIZERS, "bench-ops"]
    assert list(caps) == [*steps, "bench-model", "times", "ncu"]
    # The default selection (GPU_CHECK_STEPS unset) is every step but facts, which always runs.
    text = SCRIPT.read_text()
    default = " ".join(re.findall(r'^all_steps\+?="([^"\n]*)"', text, re.MULTILINE)).split()
    assert default == list(caps)[1:]
    assert all(caps[step] >= 30 for step in ["kernels", "tests", *SANITIZERS])


@pytest.mark.skipif(shutil.which("timeout") is None, reason="needs coreutils' timeout")
def test_without_a_gpu_it_stops_and_packs_what_it_wrote(tmp_path):
    # CUDA_VISIBLE_DEVICES="" hides any GPU from torch, as on a machine without one.
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHON=sys.executable)
    back = tmp_path / "back"
    done = subprocess.run(
        ["bash", str(SCRIPT), "--archive", str(back), str(tmp_path / "out")],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "no GPU found" in done.stderr
    # What comes back from the GPU machine: two files, no folder.
    assert sorted(path.name for path in back.iterdir()) == ["gpu_check.tar.gz", "summary.md"]
    summary = (back / "summary.md").read_text()
    assert summary.startswith("# GPU check: STOPPED before the build")
    assert "no GPU found" in summary
    describe = subprocess.run(
        ["git", "-C", str(REPO), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    if describe:
        assert f"commit {describe}\n" in summary
    # The summary is the output's last words.
    assert done.stdout.rstrip().endswith(summary.rstrip())
    with tarfile.open(back / "gpu_check.tar.gz") as archive:
        names = {name.removeprefix("./") for name in archive.getnames()}
        assert {"summary.md", "facts.json", "steps.tsv", "logs/facts.log"} <= names
        assert "logs/build.log" not in names
        assert archive.extractfile("./summary.md").read().decode() == summary
        facts = json.loads(archive.extractfile("./facts.json").read())
    assert facts["stop"].startswith("no GPU found")
    assert (tmp_path / "out" / "summary.md").read_text() == summary


def git(repo: Path, *arguments: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), *arguments], capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_a_copy_without_git_names_the_commit_of_its_stamp(tmp_path):
    report = load_report()
    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)
    (repo / "src" / "kernel.cu").write_text("__global__ void k() {}\n")
    (repo / ".gitignore").write_text("build/\n")
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one")
    (repo / "notes.txt").write_text("untracked, not ignored: copied too\n")
    (repo / "build").mkdir()
    (repo / "build" / "lib.so").write_text("ignored: not copied\n")
    assert report.write_stamp(repo) == 0
    describe = git(repo, "describe", "--always", "--dirty")
    assert report.commit_of(repo) == describe

    # The copy the GPU machine gets: the files git would copy, and the stamp; no .git. Placed
    # inside another repository, whose commit it must not report.
    outer = tmp_path / "outer"
    outer.mkdir()
    git(outer, "init", "-q")
    copy = outer / "copy"
    for name in ["src/kernel.cu", ".gitignore", "notes.txt", report.STAMP]:
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(repo / name, copy / name)
    commit = report.commit_of(copy)
    assert commit.startswith(f"{describe} (from {report.STAMP}")
    assert "the tree matches it" in commit

    (copy / "src" / "kernel.cu").write_text("__global__ void k(int n) {}\n")
    (copy / "notes.txt").unlink()
    stale = report.commit_of(copy)
    assert stale.startswith(f"{describe}, but STALE: 2 files changed")
    assert "notes.txt" in stale and "src/kernel.cu" in stale
    (copy / report.STAMP).unlink()
    assert report.commit_of(copy).startswith("unknown (no .git")


FACTS = {
    "date": "2026-11-30 10:00 UTC",
    "commit": "abc1234",
    "python": "3.12.3",
    "kernel": "6.18.44-fc-v310-gpu",
    "runtime": "Firecracker",
    "cpus": 16,
    "nvcc": "13.0.88",
    "compute_sanitizer": "2025.3.1",
    "pytest_timeout": "2.4.0",
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


def write_steps(out: Path, steps: dict[str, str], notes: dict[str, str] | None = None) -> None:
    """steps.tsv as the script writes it; a step's log is logs/<step>.log, or its sanitizer's."""

    def log(step: str) -> str:
        return f"logs/sanitizer-{step}.log" if step in SANITIZERS else f"logs/{step}.log"

    (out / "steps.tsv").write_text(
        "step\tstatus\tseconds\tlog\tnote\n"
        + "".join(
            f"{step}\t{status}\t10\t{log(step)}\t{(notes or {}).get(step, '')}\n"
            for step, status in steps.items()
        )
    )


def test_summary_reports_failures_sanitizer_errors_and_missed_targets(tmp_path, monkeypatch):
    report = load_report()
    out = tmp_path / "out"
    (out / "logs").mkdir(parents=True)
    (out / "facts.json").write_text(json.dumps(FACTS))
    monkeypatch.setenv("GPU_CHECK_START", str(time.time() - 60))
    write_steps(
        out,
        {"build": "ok", "kernels": "ok", "tests": "failed", "memcheck": "failed"}
        | {"racecheck": "ok", "synccheck": "timeout", "initcheck": "failed"}
        | {"bench-ops": "ok", "bench-model": "ok"},
    )
    # pytest stopped by its session limit, after a test that a signal interrupted (JUnit then
    # holds an empty testcase for it).
    (out / "logs" / "tests.log").write_text("!!! session-timeout: 60.0 sec exceeded !!!\n")
    (out / "tests.xml").write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.test_a" name="test_one[cuda]"/>'
        '<testcase classname="tests.test_a" name="test_two[cuda]"><failure message="x"/>'
        "</testcase>"
        '<testcase classname="tests.test_a" name="test_three[cuda]"><skipped/></testcase>'
        '<testcase time="0.000" />'
        "</testsuite></testsuites>"
    )
    (out / "logs" / "sanitizer-memcheck.log").write_text("========= ERROR SUMMARY: 3 errors\n")
    (out / "logs" / "sanitizer-racecheck.log").write_text("========= ERROR SUMMARY: 0 errors\n")
    # Stopped at its deadline, before compute-sanitizer could count.
    (out / "logs" / "sanitizer-synccheck.log").write_text("========= COMPUTE-SANITIZER\n")
    (out / "logs" / "sanitizer-initcheck.log").write_text(
        "========= Uninitialized __global__ memory read of size 4 bytes\n"
        "=========     at void at::native::reduce_kernel<512, 1>(float *)+0x1a0\n"
        "=========     by thread (3,0,0) in block (0,0,0)\n"
        "=========\n"
        "========= ERROR SUMMARY: 1 error\n"
    )
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
    assert "- step tests: failed (its time limit stopped pytest before the last test)" in summary
    assert (
        "| initcheck | 1 | Uninitialized __global__ memory read of size 4 bytes, "
        "at void at::native::reduce_kernel<512, 1>(float *)+0x1a0 |"
    ) in summary
    assert "| memcheck | 3 |" in summary and "| racecheck | 0 |" in summary
    assert "synccheck: no error summary" in summary
    assert f"launches {len(kernels) - 1} of the {len(kernels)} kernels" in summary
    assert f"Not launched: {kernels[0]}." in summary
    assert "| 6.50x | >= 5x | met |" in summary and "| 2.00x | >= 3x | NOT MET |" in summary
    assert "| 4.00 ms | <= 5 ms | met |" in summary and "| 1.20x | >= 1.5x | NOT MET |" in summary


def test_summary_reports_a_refused_sanitizer_as_not_checked(tmp_path, monkeypatch):
    # The gVisor-based machines: compute-sanitizer says "Device not supported"; everything else
    # passed.
    report = load_report()
    out = tmp_path / "out"
    (out / "logs").mkdir(parents=True)
    (out / "facts.json").write_text(json.dumps(FACTS | {"kernel": "4.4.0", "runtime": "gVisor"}))
    monkeypatch.setenv("GPU_CHECK_START", str(time.time() - 60))
    refused = "compute-sanitizer: Device not supported"
    write_steps(
        out,
        {"build": "ok", "import": "ok", "kernels": "ok", "tests": "ok"}
        | dict.fromkeys(SANITIZERS, "unsupported")
        | {"bench-ops": "not selected", "bench-model": "not selected"},
        notes=dict.fromkeys(SANITIZERS, refused),
    )
    build = {"version": "0.1", "torch_version": "2.11.0", "cuda": True, "cuda_architectures": "90"}
    (out / "build_info.json").write_text(json.dumps(build))
    (out / "tests.xml").write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.test_a" name="test_one[cuda]"/>'
        "</testsuite></testsuites>"
    )
    kernels = report.declared_kernels(REPO)
    (out / "kernels_launched.txt").write_text(
        "".join(
            f"void ssanet_ops::{k.replace('::', '::(anonymous namespace)::')}<float>()\n"
            for k in kernels
        )
    )

    assert report.write_summary(out, REPO) == 0
    summary = (out / "summary.md").read_text()
    assert summary.startswith(
        "# GPU check on NVIDIA H200: PASS, with parts not checked here, steps run:"
    )
    assert "kernel 4.4.0 (gVisor)" in summary
    assert "## Problems" not in summary
    assert (
        "- memcheck, racecheck, synccheck, initcheck: compute-sanitizer refused this GPU "
        f"({refused}), as on the gVisor-based machines"
    ) in summary
