"""Times two builds of ssanet_ops side by side on the same workloads (issue 11: the port to the
stable ABI must not slow the operators down; issue 24: the CPU kernels must not slow down).

    python benchmarks/compare_builds.py --before /tmp/before/.venv/bin/python \
        --after .venv/bin/python --out benchmarks/results/stable_abi_port.md

    python benchmarks/compare_builds.py --before ../old/.venv/bin/python --after .venv/bin/python \
        --interleave workload --dtypes float32 bfloat16 float64 --each-gradient scale_align

Each build is a Python interpreter whose environment has that build of ssanet_ops installed.
Each times the "ssanet_ops" implementation of every full-size workload of benchmarks/cases
(forward, and forward+backward; with --each-gradient OP, also forward+backward for each
differentiable input of OP alone, the others not requiring a gradient) on the CPU, in each dtype
of --dtypes: the median of --repeats runs after 2 warm-up runs, inputs drawn from the same seed
in both builds. Two ways to interleave the builds (--interleave):

- process (the default): every round runs one process per build, which times all workloads,
  alternating which build goes first;
- workload: one long-lived process per build; in every round, each workload is timed by one
  build right after the other (alternating which goes first, by round and by workload), so
  the two times of a pair are seconds apart instead of minutes.

The table gives, per workload, the median over the rounds for each build, and the ratio
after / before of each round (the two builds measured one right after the other) as its median
and range over the rounds (below 1: the after build is faster). A shared, noisy machine slows
both builds alike within a pair, which is why they alternate rather than run one after the
other; the range shows how much noise is left. --json keeps every round's times.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
OPS = ("oriented_pool", "multiscale_roi_crop", "scale_align")
DTYPES = ("float32", "bfloat16", "float16", "float64")
ALONE = "forward+backward, d {} only"


def worker_workloads(ops: list[str], dtypes: list[str], each_gradient: list[str]) -> dict:
    """{workload key: (case, dtype name, pass name)} of the builds' shared benchmark cases."""
    import torch

    sys.path.insert(0, str(HERE))
    from cases import oriented_pool, roi_crop, scale_align

    workloads = {}
    for module in (oriented_pool, roi_crop, scale_align):
        for case in module.cases(quick=False):
            if "ssanet_ops" not in case.implementations or case.op not in ops:
                continue
            passes = list(case.passes)
            if case.op in each_gradient and "forward+backward" in passes:
                # The differentiable inputs' names, from inputs made on the meta device (no data).
                inputs = case.make_inputs(torch.device("meta"), torch.float32)
                names = [key for key, value in inputs.items() if value.requires_grad]
                if len(names) > 1:
                    passes += [ALONE.format(name) for name in names]
            for dtype in dtypes:
                for pass_name in passes:
                    key = f"{case.op} | {case.size} | {dtype} | {pass_name}"
                    workloads[key] = (case, dtype, pass_name)
    return workloads


def time_workload(workload: tuple, repeats: int) -> float:
    """Median ms of one workload of worker_workloads in this interpreter's ssanet_ops."""
    import torch
    from bench_ops import make_step
    from timing import median_ms

    case, dtype, pass_name = workload
    device = torch.device("cpu")
    torch.manual_seed(0)
    inputs = case.make_inputs(device, getattr(torch, dtype))
    if pass_name.startswith("forward+backward, d "):
        alone = pass_name.removeprefix("forward+backward, d ").removesuffix(" only")
        for key, value in inputs.items():
            if isinstance(value, torch.Tensor) and value.requires_grad and key != alone:
                inputs[key] = value.detach()
        pass_name = "forward+backward"
    step = make_step(case, "ssanet_ops", inputs, pass_name)
    return median_ms(step, device, repeats, warmup=2)


def worker_header() -> dict:
    import torch

    import ssanet_ops

    return {"build": ssanet_ops.build_info(), "torch": torch.__version__}


def run_worker(args: argparse.Namespace) -> None:
    """--interleave process: prints {"times": {workload: median ms}, ...} of all workloads.
    --interleave workload (--serve): prints the workload keys, then times each key read from
    stdin, one JSON line per key."""
    import torch

    torch.set_num_threads(args.threads)
    workloads = worker_workloads(args.ops, args.dtypes, args.each_gradient)
    if not args.serve:
        times = {key: time_workload(workload, args.repeats) for key, workload in workloads.items()}
        print(json.dumps({"times": times, **worker_header()}))
        return
    print(json.dumps({"workloads": list(workloads), **worker_header()}), flush=True)
    for line in sys.stdin:
        key = line.strip()
        if key:
            print(json.dumps({"ms": time_workload(workloads[key], args.repeats)}), flush=True)


def worker_command(python: str, args: argparse.Namespace, serve: bool) -> list[str]:
    # An absolute path (the worker runs in another folder), not resolved: a virtual environment's
    # interpreter is a link, and it is that environment only when called through the link.
    command = [
        os.path.abspath(python),
        str(Path(__file__).resolve()),
        "--worker",
        f"--repeats={args.repeats}",
    ]
    command += [f"--threads={args.threads}", "--ops", *args.ops, "--dtypes", *args.dtypes]
    if args.each_gradient:
        command += ["--each-gradient", *args.each_gradient]
    return command + (["--serve"] if serve else [])


def measure(python: str, args: argparse.Namespace) -> dict:
    # From a neutral folder, so the interpreter imports its installed ssanet_ops, not a source
    # tree's copy.
    command = worker_command(python, args, serve=False)
    result = subprocess.run(command, capture_output=True, text=True, cwd="/", check=False)
    if result.returncode != 0:
        sys.exit(f"{python} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_by_process(names: dict, args: argparse.Namespace, done: Callable) -> dict:
    runs: dict[str, list[dict]] = {"before": [], "after": []}
    for round_index in range(args.rounds):
        order = ("before", "after") if round_index % 2 == 0 else ("after", "before")
        for label in order:
            print(f"round {round_index + 1}/{args.rounds}: {label}", file=sys.stderr, flush=True)
            runs[label].append(measure(names[label], args))
        done(runs)
    return runs


class Server:
    """One build's long-lived worker (--serve): ask(key) times one workload."""

    def __init__(self, python: str, args: argparse.Namespace) -> None:
        self.python = python
        self.process = subprocess.Popen(
            worker_command(python, args, serve=True),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd="/",
        )
        self.header = self._read()

    def _read(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            sys.exit(f"{self.python} failed (its error output is above)")
        return json.loads(line)

    def ask(self, key: str) -> float:
        self.process.stdin.write(key + "\n")
        self.process.stdin.flush()
        return self._read()["ms"]

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def run_by_workload(names: dict, args: argparse.Namespace, done: Callable) -> dict:
    servers = {label: Server(names[label], args) for label in ("before", "after")}
    workloads = servers["before"].header["workloads"]
    if workloads != servers["after"].header["workloads"]:
        sys.exit("the two builds list different workloads")
    runs: dict[str, list[dict]] = {"before": [], "after": []}
    for round_index in range(args.rounds):
        times: dict[str, dict] = {"before": {}, "after": {}}
        for index, key in enumerate(workloads):
            print(f"round {round_index + 1}/{args.rounds}: {key}", file=sys.stderr, flush=True)
            first_before = (round_index + index) % 2 == 0
            for label in ("before", "after") if first_before else ("after", "before"):
                times[label][key] = servers[label].ask(key)
        for label in runs:
            runs[label].append({"times": times[label], **servers[label].header})
        done(runs)
    for server in servers.values():
        server.close()
    return runs


def format_report(names: dict, runs: dict, args: argparse.Namespace) -> str:
    before, after = runs["before"], runs["after"]
    workloads = list(before[0]["times"])
    load = os.getloadavg()
    interleave = {
        "process": "one process per build and round, alternating which goes first",
        "workload": "one process per build; each workload timed by one build right after the "
        "other, alternating which goes first",
    }[args.interleave]
    lines = [
        "# Two builds of ssanet_ops side by side (benchmarks/compare_builds.py)",
        "",
        f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; CPU, "
        f"{', '.join(args.dtypes)}, {args.threads} threads; load average at the end "
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (a shared machine: compare the ratios, "
        "not the times)",
        f"- {len(before)} rounds ({interleave}); in each, the median of {args.repeats} runs "
        "after 2 warm-up runs; below, the median over the rounds",
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
        "| op | size | dtype | pass | before ms | after ms | after / before, median of rounds "
        "| range |",
        "|---|---|---|---|---:|---:|---:|---|",
    ]
    for workload in workloads:
        before_ms = statistics.median(run["times"][workload] for run in before)
        after_ms = statistics.median(run["times"][workload] for run in after)
        ratios = [
            a["times"][workload] / b["times"][workload] for a, b in zip(after, before, strict=True)
        ]
        lines.append(
            f"| {workload} | {before_ms:.2f} | {after_ms:.2f} | "
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
    parser.add_argument(
        "--dtypes", nargs="+", choices=DTYPES, default=["float32"], help="which dtypes"
    )
    parser.add_argument(
        "--each-gradient",
        nargs="+",
        choices=OPS,
        default=[],
        metavar="OP",
        help="also time forward+backward for each differentiable input of OP alone",
    )
    parser.add_argument(
        "--interleave",
        choices=("process", "workload"),
        default="process",
        help="alternate the builds per round (a process each) or per workload (see above)",
    )
    parser.add_argument("--out", type=Path, help="Markdown file to write (default: print only)")
    parser.add_argument("--json", type=Path, help="also write every round's times here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        run_worker(args)
        return
    if not (args.before and args.after):
        parser.error("--before and --after are required")
    names = {"before": args.before, "after": args.after}

    def write(runs: dict) -> None:
        # After every round, so that an interrupted run keeps the rounds it finished.
        if args.out:
            args.out.write_text(format_report(names, runs, args))
        if args.json:
            args.json.write_text(json.dumps({"names": names, "runs": runs}, indent=1) + "\n")

    run = run_by_workload if args.interleave == "workload" else run_by_process
    runs = run(names, args, write)
    print(format_report(names, runs, args))


if __name__ == "__main__":
    main()
