"""Clean-build time of ssanet_ops (issue 11: "report the clean-build time before and after,
same machine, same flags").

    python benchmarks/build_time.py                      # this checkout's HEAD
    python benchmarks/build_time.py --rev 49ef643        # a commit, exported with git archive
    python benchmarks/build_time.py --source DIR         # a source tree as it is
    python benchmarks/build_time.py --builds cpu         # only the CPU-only build

Each build is what a user waits for: `pip wheel --no-build-isolation --no-deps` of the source
tree, against the torch of the Python running this script, from an empty build folder in a
temporary directory (the source tree's own build/ is not used), with
CMAKE_BUILD_PARALLEL_LEVEL=--jobs. The builds:

- cpu: SSANET_OPS_CUDA=off (the CPU kernels and the CUDA simulator);
- cuda-sm90: SSANET_OPS_CUDA=on, TORCH_CUDA_ARCH_LIST=9.0 (one architecture), nvcc from
  CUDACXX (default /usr/local/cuda-13.0/bin/nvcc).

Prints one Markdown table row per build: wall seconds; CPU seconds (user + system of every
process of the build), which depend much less than the wall time on what else the machine runs;
and the 1-minute load average before and after (on a shared machine, compare wall times taken
under similar load, e.g. one run right after the other with --rev). Needs
scikit-build-core, cmake and ninja where pip's build finds them (PATH).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_NVCC = "/usr/local/cuda-13.0/bin/nvcc"
BUILDS = {
    "cpu": {"SSANET_OPS_CUDA": "off"},
    "cuda-sm90": {"SSANET_OPS_CUDA": "on", "TORCH_CUDA_ARCH_LIST": "9.0"},
}


def export_revision(revision: str, destination: Path) -> Path:
    """The tree of `revision` of this repository, as `git archive` writes it (no build/)."""
    destination.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", revision],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(destination)], input=archive, check=True)
    return destination


def timed_build(source: Path, build: str, jobs: int, scratch: Path) -> tuple[float, float, str]:
    """Wall seconds and CPU seconds (user + system, of every process of the build) of one clean
    `pip wheel` of `source`, and the line saying what it configured. Exits with the tail of its
    log when it fails."""
    env = dict(os.environ, CMAKE_BUILD_PARALLEL_LEVEL=str(jobs), **BUILDS[build])
    if build.startswith("cuda"):
        env.setdefault("CUDACXX", DEFAULT_NVCC)
    build_dir = scratch / f"build-{build}"
    command = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-build-isolation",
        "--no-deps",
        "-v",
        "--wheel-dir",
        str(scratch / f"wheel-{build}"),
        # A fresh build folder, whatever the tree's pyproject.toml names (build/{wheel_tag}).
        "--config-settings",
        f"build-dir={build_dir}",
        str(source),
    ]
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_seconds = (cpu_after.ru_utime - cpu_before.ru_utime) + (
        cpu_after.ru_stime - cpu_before.ru_stime
    )
    if result.returncode != 0:
        tail = (result.stdout + result.stderr)[-4000:]
        raise SystemExit(f"build {build} of {source} failed:\n{tail}")
    log = (result.stdout + result.stderr).splitlines()
    chosen = [line.strip(" -") for line in log if "ssanet_ops: CUDA kernels" in line]
    return seconds, cpu_seconds, chosen[-1] if chosen else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--rev", help="a commit of this repository (default: HEAD)")
    where.add_argument("--source", type=Path, help="a source tree, built as it is")
    parser.add_argument("--builds", nargs="+", choices=sorted(BUILDS), default=list(BUILDS))
    parser.add_argument("--jobs", type=int, default=1, help="CMAKE_BUILD_PARALLEL_LEVEL")
    args = parser.parse_args()

    import torch

    with tempfile.TemporaryDirectory(prefix="ssanet-build-time-") as scratch_name:
        scratch = Path(scratch_name)
        if args.source is not None:
            source, label = args.source.resolve(), str(args.source)
        else:
            revision = args.rev or "HEAD"
            source = export_revision(revision, scratch / "source")
            label = subprocess.run(
                ["git", "-C", str(ROOT), "rev-parse", "--short", revision],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.strip()
        print(
            f"source {label}, torch {torch.__version__}, {args.jobs} job(s), "
            f"{os.cpu_count()} CPUs, niceness {os.nice(0)}",
            flush=True,
        )
        print("| source | build | wall s | CPU s | load avg before | load avg after | configured |")
        print("|---|---|---:|---:|---:|---:|---|", flush=True)
        for build in args.builds:
            before = os.getloadavg()[0]
            seconds, cpu_seconds, chosen = timed_build(source, build, args.jobs, scratch)
            after = os.getloadavg()[0]
            print(
                f"| {label} | {build} | {seconds:.0f} | {cpu_seconds:.0f} | {before:.2f} "
                f"| {after:.2f} | {chosen} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
