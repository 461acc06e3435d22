"""Times two builds of ssanet_ops side by side on the same workloads (issue 11: the port to the
stable ABI must not slow the operators down).

    python benchmarks/compare_builds.py --before /tmp/before/.venv/bin/python \
        --after .venv/bin/python --out benchmarks/results/stable_abi_port.md

Each build is a Python interpreter whose environment has that build of ssanet_ops installed.
Every round runs one process per build, alternating which goes first, and each process times
the "ssanet_ops" implementation of every full-size workload of benchmarks/cases (forward, and
forward+backward) on the CPU: the median of --repeats runs after warm-up. The table gives, per
workload, the median over the rounds for each build, and the ratio after / before of each
round (the two builds measured one right after the other) as its median and range over the
rounds (below 1: the after build is faster). A shared, noisy machine slows both builds alike
within a round, which is why they alternate rather than run one after the other; the range
shows how much noise is left.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OPS = ("oriented_pool", "multiscale_roi_crop", "scale_align")


def run_worker(repeats: int, threads: int, ops: list[str]) -> None:
    """Prints {workload: median ms} for the ssanet_ops installed in this interpreter."""
    import torch

    sys.path.insert(0, str(HERE))
    from bench_ops import make_step
    from cases import oriented_pool, roi_crop, scale_align
    from timing import median_ms

    import ssanet_ops

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    device = torch.device("cpu")
    times = {}
    for module in (oriented_pool, roi_crop, scale_align):
        for case in module.cases(quick=False):
            if "ssanet_ops" not in case.implementations or case.op not in ops:
                continue
            inputs = case.make_inputs(device, torch.float32)
            for pass_name in case.passes:
                step = make_step(case, "ssanet_ops", inputs, pass_name)
                times[f"{case.op} | {case.size} | {pass_name}"] = median_ms(
                    step, device, repeats, warmup=2
                )
    print(
        json.dumps({"times": times, "build": ssanet_ops.build_info(), "torch": torch.__version__})
    )


def measure(python: str, repeats: int, threads: int, ops: list[str]) -> dict:
    command = [python, str(Path(__file__).resolve()), "--worker", f"--repeats={repeats}"]
    command += [f"--threads={threads}", "--ops", *ops]
    # From a neutral folder, so the interpreter imports its installed ssanet_ops, not a source
    # tree's copy.
    result = subprocess.run(command, capture_output=True, text=True, cwd="/", check=False)
    if result.returncode != 0:
        sys.exit(f"{python} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def format_report(names: dict, runs: dict, args: argparse.Namespace) -> str:
    before, after = runs["before"], runs["after"]
    workloads = list(before[0]["times"])
    load = os.getloadavg()
    lines = [
        "# Two builds of ssanet_ops side by side (benchmarks/compare_builds.py)",
        "",
        f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; CPU, float32, "
        f"{args.threads} threads; load average at the end {load[0]:.1f} / {load[1]:.1f} / "
        f"{load[2]:.1f} (a shared machine: compare the ratios, not the times)",
        f"- {args.rounds} rounds, builds alternating; in each, the median of {args.repeats} "
        "runs after 2 warm-up runs; below, the median over the rounds",
    ]
    for label in ("before", "after"):
        info = runs[label][0]["build"]
        lines.append(
            f"- {label}: `{names[label]}`: torch {runs[label][0]['torch']}; built with torch "
            f"{info['torch_version']}"
            + (
                f" for torch >= {info['target_torch_version']}"
                if "target_torch_version" in info
                else ""
            )
        )
    lines += [
        "",
        "| op | size | pass | before ms | after ms | after / before, median of rounds | range |",
        "|---|---|---|---:|---:|---:|---|",
    ]
    for workload in workloads:
        before_ms = statistics.median(run["times"][workload] for run in before)
        after_ms = statistics.median(run["times"][workload] for run in after)
        ratios = [
            a["times"][workload] / b["times"][workload] for a, b in zip(after, before, strict=True)
        ]
        op, size, pass_name = workload.split(" | ")
        lines.append(
            f"| {op} | {size} | {pass_name} | {before_ms:.2f} | {after_ms:.2f} | "
            f"{statistics.median(ratios):.2f} | {min(ratios):.2f} - {max(ratios):.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", help="Python interpreter of the build before the change")
    parser.add_argument("--after", help="Python interpreter of the build after the change")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ops", nargs="+", choices=OPS, default=list(OPS), help="which operators")
    parser.add_argument("--out", type=Path, help="Markdown file to write (default: print only)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        run_worker(args.repeats, args.threads, args.ops)
        return
    if not (args.before and args.after):
        parser.error("--before and --after are required")
    names = {"before": args.before, "after": args.after}
    runs: dict[str, list[dict]] = {"before": [], "after": []}
    for round_index in range(args.rounds):
        order = ("before", "after") if round_index % 2 == 0 else ("after", "before")
        for label in order:
            print(f"round {round_index + 1}/{args.rounds}: {label}", file=sys.stderr, flush=True)
            runs[label].append(measure(names[label], args.repeats, args.threads, args.ops))
    report = format_report(names, runs, args)
    print(report)
    if args.out:
        args.out.write_text(report)


if __name__ == "__main__":
    main()
