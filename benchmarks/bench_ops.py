"""Times every ssanet_ops operator against its plain PyTorch reference (and peers).

    python benchmarks/bench_ops.py            # full sizes, CPU and (if present) CUDA
    python benchmarks/bench_ops.py --quick    # small sizes, a minute on a laptop

Reports the median of repeated runs of the forward and of forward+backward, with ratios
against the baseline measured in the same run, prints a table and writes it (Markdown and
JSON) to benchmarks/results/ops_<device>.md, naming the machine and the torch version.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cases import Case  # noqa: E402
from cases import oriented_pool as oriented_pool_cases  # noqa: E402
from cases import roi_crop as roi_crop_cases  # noqa: E402
from cases import scale_align as scale_align_cases  # noqa: E402
from timing import copy_bandwidth_gbs, device_name, device_slug, median_ms  # noqa: E402

import ssanet_ops  # noqa: E402

CASE_MODULES = {
    "oriented_pool": oriented_pool_cases,
    "multiscale_roi_crop": roi_crop_cases,
    "scale_align": scale_align_cases,
}
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def first_output(result: object) -> torch.Tensor:
    return result[0] if isinstance(result, (tuple, list)) else result


def make_step(case: Case, name: str, inputs: dict, pass_name: str):
    """A no-argument function running one pass of implementation `name`."""
    implementation = case.implementations[name]
    if pass_name == "forward":

        def forward():
            with torch.no_grad():
                implementation(**inputs)

        return forward

    differentiable = [value for value in inputs.values() if getattr(value, "requires_grad", False)]
    output = first_output(implementation(**inputs))
    grad_output = torch.randn_like(output)

    def forward_backward():
        torch.autograd.grad(first_output(implementation(**inputs)), differentiable, grad_output)

    return forward_backward


def run_case(
    case: Case,
    device: torch.device,
    dtype: torch.dtype,
    repeats: int,
    warmup: int,
    bandwidth_gbs: float | None,
    with_targets: bool = True,
) -> list[dict]:
    inputs = case.make_inputs(device, dtype)
    if case.max_repeats is not None:
        repeats, warmup = min(repeats, case.max_repeats), min(warmup, 1)
    rows = []
    for pass_name in case.passes:
        times = {}
        for name in case.implementations:
            step = make_step(case, name, inputs, pass_name)
            times[name] = median_ms(step, device, repeats, warmup)
        for name, ms in times.items():
            row = {
                "op": case.op,
                "size": case.size,
                "device": device.type,
                "dtype": str(dtype).removeprefix("torch."),
                "pass": pass_name,
                "implementation": name,
                "median_ms": ms,
                "ratio": times[case.baseline] / ms,
                "baseline": case.baseline,
            }
            if name in case.flops and pass_name == "forward":
                row["gflops"] = case.flops[name] / (ms * 1e-3) / 1e9
            if case.forward_elements and bandwidth_gbs and pass_name == "forward":
                forward_bytes = case.forward_elements * dtype.itemsize
                copy_ms = forward_bytes / (bandwidth_gbs * 1e9) * 1e3
                row["copy_ms"] = copy_ms
                row["x_copy_time"] = ms / copy_ms
            target = case.targets.get(device.type, {}).get(pass_name) if with_targets else None
            if target is not None and name == "ssanet_ops":
                row["target"] = target
                row["meets_target"] = row["ratio"] >= target
            rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    """The rows as Markdown; the target column only where some row has a target."""
    with_targets = any("target" in row for row in rows)
    header = (
        "| op | size | dtype | pass | implementation | median ms | speed-up vs baseline "
        f"| GFLOP/s | x copy time |{' target |' if with_targets else ''}"
    )
    lines = [header, f"|---|---|---|---|---|---:|---:|---:|---:|{'---|' if with_targets else ''}"]
    for row in rows:
        ratio = "baseline" if row["implementation"] == row["baseline"] else f"{row['ratio']:.2f}x"
        gflops = f"{row['gflops']:.1f}" if "gflops" in row else ""
        copy = f"{row['x_copy_time']:.2f}" if "x_copy_time" in row else ""
        target = ""
        if "target" in row:
            target = f">= {row['target']:g}x: {'met' if row['meets_target'] else 'NOT MET'}"
        lines.append(
            f"| {row['op']} | {row['size']} | {row['dtype']} | {row['pass']} "
            f"| {row['implementation']} | {row['median_ms']:.3f} | {ratio} | {gflops} | {copy} |"
            + (f" {target} |" if with_targets else "")
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes and fewer repeats")
    parser.add_argument(
        "--device",
        choices=["cpu", "cuda", "all"],
        default="all",
        help="where to run (default: the CPU, and CUDA when present)",
    )
    parser.add_argument(
        "--ops",
        nargs="+",
        choices=sorted(CASE_MODULES),
        default=sorted(CASE_MODULES),
        help="which operators",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed runs per measurement (default 5 quick, 20 full)",
    )
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)

    devices = []
    if args.device in ("cpu", "all"):
        devices.append(torch.device("cpu"))
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    elif args.device == "cuda":
        parser.error("--device cuda: no CUDA device is available")
    repeats = args.repeats or (5 if args.quick else 20)
    warmup = 2 if args.quick else 5

    for device in devices:
        dtypes = [torch.float32]
        if device.type == "cuda":
            dtypes.append(torch.bfloat16)
        cases = [case for op in args.ops for case in CASE_MODULES[op].cases(args.quick)]
        bandwidth = copy_bandwidth_gbs(device, 64 if args.quick else 512)
        rows = []
        work = [(case, dtype) for case in cases for dtype in dtypes]
        for case, dtype in tqdm(work, desc=f"benchmarks on {device.type}", file=sys.stderr):
            # The targets were set for the full sizes: a quick run has none to meet.
            rows.extend(run_case(case, device, dtype, repeats, warmup, bandwidth, not args.quick))

        title = (
            f"ssanet_ops operator benchmarks on {device_name(device)}"
            f"{' (quick sizes)' if args.quick else ''}"
        )
        facts = {
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "device": device_name(device),
            "torch": torch.__version__,
            "ssanet_ops": ssanet_ops.build_info(),
            "repeats": repeats,
            "copy_bandwidth_gbs": bandwidth,
        }
        table = format_table(rows)
        text = (
            f"# {title}\n\n"
            f"- date: {facts['date']}\n- device: {facts['device']}\n"
            f"- torch {facts['torch']}, ssanet_ops {facts['ssanet_ops']['version']} "
            f"(CUDA kernels compiled: {facts['ssanet_ops']['cuda']})\n"
            f"- median of {repeats} runs after {warmup} warm-up runs"
            f"{'; CUDA events' if device.type == 'cuda' else ''}\n"
            f"- measured copy bandwidth (read + write): {bandwidth:.1f} GB/s\n"
            "- speed-up = baseline median / implementation median (above 1: faster); "
            "x copy time = forward time / time to read the input and write the output once "
            "at the measured copy bandwidth\n\n"
            f"{table}\n"
        )
        print(text)
        args.output_dir.mkdir(parents=True, exist_ok=True)
        stem = f"ops_{device_slug(device)}{'_quick' if args.quick else ''}"
        (args.output_dir / f"{stem}.md").write_text(text)
        (args.output_dir / f"{stem}.json").write_text(
            json.dumps({"facts": facts, "rows": rows}, indent=2) + "\n"
        )
        print(f"wrote {args.output_dir / (stem + '.md')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
