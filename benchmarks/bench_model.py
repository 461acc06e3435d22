"""End-to-end inference latency of SSANet (eval mode, 448x448 images, ResNet-50).

    python benchmarks/bench_model.py                       # the full grid, CPU and (if any) CUDA
    python benchmarks/bench_model.py --quick               # batch 1, eager only, few repeats
    python benchmarks/bench_model.py --device cuda --batch-sizes 1 --compile on

Times one forward (``torch.inference_mode``) for every combination of:
- ``part_features``: "image" (the paper: every scale candidate cropped from the image at
  224x224 and run through the backbone) and "shared" (candidates cropped from the stride-16
  map, only the last stage run on them: the speed-up of the paper's section 4.1);
- operators: the ssanet_ops kernels, and the plain PyTorch ``ssanet_ops.reference`` ops swapped
  in with ``ssanet.use_reference_ops()`` (same model, same weights), for the ratio;
- ``torch.compile`` off and on;
- precision: float32 and, on CUDA, bfloat16 autocast with channels-last memory format;
- the batch sizes (default 1 and 32).

Prints a table and writes it (Markdown and JSON) to benchmarks/results/model_<device>.md, with
the paper's budget beside it (50 ms per image on a Tesla P40) and the targets on an H100-class
GPU (batch 1: "image" at most 10 ms, "shared" at most 5 ms; kernels at least 1.5x faster than
the reference ops in "shared" mode).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import itertools
import json
import sys
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ssanet  # noqa: E402
from timing import device_name, device_slug, median_ms  # noqa: E402

import ssanet_ops  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PAPER_BUDGET_MS = 50.0  # per image, Tesla P40 (paper section 4.1)
# Batch-1 latency targets on an H100-class GPU (the issue), per part_features mode.
GPU_LATENCY_TARGET_MS = {"image": 10.0, "shared": 5.0}
# Kernels vs reference ops, end to end, in "shared" mode on a GPU.
GPU_SPEEDUP_TARGET = 1.5


def precision_context(precision: str, device: torch.device):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def convolutions_to(model: torch.nn.Module, memory_format: torch.memory_format) -> None:
    """Puts the convolution weights (backbone, proposal head) in `memory_format`; the other
    4-d parameters (ScaleAlign's [K, C, S, D] filters) are not images and stay as they are."""
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            module.to(memory_format=memory_format)


def make_step(model, images: torch.Tensor, operators: str, precision: str):
    """One forward of `model` on `images` with the given operators and precision."""
    device = images.device

    def step():
        with (
            torch.inference_mode(),
            ssanet.use_reference_ops(operators == "reference"),
            precision_context(precision, device),
        ):
            model(images)

    return step


def run(args: argparse.Namespace, device: torch.device) -> list[dict]:
    precisions = ["fp32"] + (["bf16"] if device.type == "cuda" and not args.fp32_only else [])
    compiles = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    models = {}
    for part_features in args.part_features:
        torch.manual_seed(0)
        model = ssanet.SSANet(args.num_classes, backbone=args.backbone, crop_from=part_features).to(
            device
        )
        models[part_features] = model.eval()

    grid = list(
        itertools.product(
            args.part_features, precisions, compiles, args.batch_sizes, ["ssanet_ops", "reference"]
        )
    )
    rows = []
    for part_features, precision, compiled, batch, operators in tqdm(
        grid, desc=f"model on {device.type}", file=sys.stderr
    ):
        model = models[part_features]
        memory_format = torch.channels_last if precision == "bf16" else torch.contiguous_format
        convolutions_to(model, memory_format)
        if compiled:
            torch._dynamo.reset()
            model = torch.compile(model)
        images = torch.randn(batch, 3, args.image_size, args.image_size, device=device)
        images = images.contiguous(memory_format=memory_format)
        step = make_step(model, images, operators, precision)
        # Compilation happens in the warm-up runs.
        ms = median_ms(step, device, args.repeats, args.warmup + (2 if compiled else 0))
        rows.append(
            {
                "part_features": part_features,
                "precision": precision,
                "compile": compiled,
                "batch": batch,
                "operators": operators,
                "median_ms": ms,
                "ms_per_image": ms / batch,
            }
        )

    by_key = {
        (r["part_features"], r["precision"], r["compile"], r["batch"], r["operators"]): r
        for r in rows
    }
    for row in rows:
        reference = by_key[
            (row["part_features"], row["precision"], row["compile"], row["batch"], "reference")
        ]
        row["speedup_vs_reference"] = reference["median_ms"] / row["median_ms"]
        row["within_paper_budget"] = row["ms_per_image"] <= PAPER_BUDGET_MS
        if device.type == "cuda" and row["operators"] == "ssanet_ops" and row["batch"] == 1:
            row["latency_target_ms"] = GPU_LATENCY_TARGET_MS[row["part_features"]]
            row["meets_latency_target"] = row["median_ms"] <= row["latency_target_ms"]
            if row["part_features"] == "shared":
                row["meets_speedup_target"] = row["speedup_vs_reference"] >= GPU_SPEEDUP_TARGET
    return rows


def format_table(rows: list[dict]) -> str:
    lines = [
        "| part_features | precision | compile | batch | operators | median ms | ms / image "
        "| kernels vs reference | paper budget (50 ms / image, P40) | H100 target |",
        "|---|---|---|---:|---|---:|---:|---:|---|---|",
    ]
    for row in rows:
        ratio = (
            "baseline" if row["operators"] == "reference" else f"{row['speedup_vs_reference']:.2f}x"
        )
        budget = "within" if row["within_paper_budget"] else "over"
        target = ""
        if "latency_target_ms" in row:
            target = (
                f"<= {row['latency_target_ms']:g} ms: "
                f"{'met' if row['meets_latency_target'] else 'NOT MET'}"
            )
            if "meets_speedup_target" in row:
                target += (
                    f"; >= {GPU_SPEEDUP_TARGET:g}x: "
                    f"{'met' if row['meets_speedup_target'] else 'NOT MET'}"
                )
        lines.append(
            f"| {row['part_features']} | {row['precision']} | {'on' if row['compile'] else 'off'} "
            f"| {row['batch']} | {row['operators']} | {row['median_ms']:.1f} "
            f"| {row['ms_per_image']:.1f} | {ratio} | {budget} | {target} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="batch 1, compile off, 3 repeats (unless given otherwise)",
    )
    parser.add_argument(
        "--device",
        choices=["cpu", "cuda", "all"],
        default="all",
        help="where to run (default: the CPU, and CUDA when present)",
    )
    parser.add_argument(
        "--batch-sizes",
        type=int,
        nargs="+",
        default=None,
        help="batch sizes (default 1 32; --quick: 1)",
    )
    parser.add_argument(
        "--part-features", nargs="+", choices=["image", "shared"], default=["image", "shared"]
    )
    parser.add_argument(
        "--compile",
        choices=["off", "on", "both"],
        default=None,
        help="torch.compile the model (default both; --quick: off)",
    )
    parser.add_argument(
        "--fp32-only", action="store_true", help="skip the bfloat16 + channels-last runs on CUDA"
    )
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--image-size", type=int, default=448)
    parser.add_argument("--num-classes", type=int, default=200, help="200: CUB-200-2011")
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed runs per measurement (default 3 quick, 10 full)",
    )
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    args.batch_sizes = args.batch_sizes or ([1] if args.quick else [1, 32])
    args.compile = args.compile or ("off" if args.quick else "both")
    args.repeats = args.repeats or (3 if args.quick else 10)
    args.warmup = 1 if args.quick else 3

    devices = []
    if args.device in ("cpu", "all"):
        devices.append(torch.device("cpu"))
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    elif args.device == "cuda":
        parser.error("--device cuda: no CUDA device is available")

    # Fixed shapes: let cuDNN pick the fastest convolution algorithms (during the warm-up).
    torch.backends.cudnn.benchmark = True
    for device in devices:
        rows = run(args, device)
        facts = {
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "device": device_name(device),
            "torch": torch.__version__,
            "ssanet_ops": ssanet_ops.build_info(),
            "backbone": args.backbone,
            "image_size": args.image_size,
            "num_classes": args.num_classes,
            "repeats": args.repeats,
            "warmup": args.warmup,
        }
        title = (
            f"SSANet end-to-end inference on {facts['device']}{' (quick)' if args.quick else ''}"
        )
        text = (
            f"# {title}\n\n"
            f"- date: {facts['date']}\n"
            f"- torch {facts['torch']}, ssanet_ops {facts['ssanet_ops']['version']} "
            f"(CUDA kernels compiled: {facts['ssanet_ops']['cuda']})\n"
            f"- SSANet({args.num_classes} classes, K=4, S=5, {args.backbone}), eval mode, "
            f"{args.image_size}x{args.image_size} images, random weights; one forward under "
            "torch.inference_mode\n"
            f"- median of {args.repeats} runs after {args.warmup} warm-up runs (2 more when "
            f"compiled){'; CUDA events' if device.type == 'cuda' else ''}\n"
            "- operators: the ssanet_ops kernels, or ssanet_ops.reference through "
            "ssanet.use_reference_ops(); kernels vs reference = reference median / kernels "
            "median (above 1: the kernels are faster)\n"
            "- bf16 = torch.autocast(bfloat16) with the convolutions and images in channels-last"
            f"{'; cudnn.benchmark on, TF32 as PyTorch sets it' if device.type == 'cuda' else ''}\n"
            f"- the paper runs in {PAPER_BUDGET_MS:g} ms per image on a Tesla P40; targets on an "
            "H100-class GPU, batch 1: image <= 10 ms, shared <= 5 ms, and in shared mode the "
            f"kernels >= {GPU_SPEEDUP_TARGET:g}x the reference ops\n\n"
            f"{format_table(rows)}\n"
        )
        print(text)
        args.output_dir.mkdir(parents=True, exist_ok=True)
        stem = f"model_{device_slug(device)}{'_quick' if args.quick else ''}"
        (args.output_dir / f"{stem}.md").write_text(text)
        (args.output_dir / f"{stem}.json").write_text(
            json.dumps({"facts": facts, "rows": rows}, indent=2) + "\n"
        )
        print(f"wrote {args.output_dir / (stem + '.md')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
