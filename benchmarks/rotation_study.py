"""Table 1 taken apart (issue 22, target 2): why SSANet loses more points than its plain
network on rotated test images. For trained runs (an SSANet run and the plain run it started
from, one pair per seed), on the test split and its rotations by Table 1's angles:

(a) the OP head alone: its top-1 when its own input maps (each part's aligned candidate, of
    the upright image) are rotated (``ssanet.rotation.rotate_maps``: exact quarter turns,
    bilinear resampling otherwise), and how often its prediction stays the upright one;
(b) the backbones' equivariance: per-position cosine similarity of the global view's
    stride-16 and stride-32 maps of the rotated image against the rotated maps of the upright
    image (``equivariance_cosine``), for SSANet's and the plain run's backbone, beside the
    cosine of the upright maps of two images of different classes (the level of "unrelated");
(c) each head's top-1 on the rotated images (the plain network, SSANet's final, DSM and OP);
(d) each head's top-1 when the model is given the rotated maps of the upright image in place
    of the rotated image's own (``SSANet.forward_maps``): what the model would score on
    rotated images with a backbone whose global-view maps rotate with the image; at quarter
    turns also the share of its K part boxes that are the upright image's boxes turned
    (``ssanet.rotation.turn_boxes``): whether the proposals turned with the maps.

    python benchmarks/rotation_study.py --data ROOT --full RUN... --plain RUN... \\
        [--json OUT.json] [--limit N] [--threads 1]

Prints progress to stderr and the markdown tables to stdout. Evaluation only (no training):
about a minute a pair of runs on one thread.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from ssanet import load_checkpoint
from ssanet.data import config_test_split
from ssanet.data.transforms import Rotate
from ssanet.evaluate import DEFAULT_ROTATION_ANGLES
from ssanet.rotation import equivariance_cosine, position_cosine, rotate_maps, turn_boxes

HEADS = ("plain", "final", "dsm", "op")
BATCH = 50


def _top1_counts(output, plain_logits, targets) -> dict[str, int]:
    logits = {
        "plain": plain_logits,
        "final": output.logits,
        "dsm": output.dsm_logits,
        "op": output.op_logits,
    }
    return {head: int((value.argmax(1) == targets).sum()) for head, value in logits.items()}


def _pooled_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.mean((-2, -1)), b.mean((-2, -1)), dim=1)


class _Upright:
    """The upright batch's maps: both backbones' global-view maps and the OP's input."""

    def __init__(self, full, plain, images: torch.Tensor) -> None:
        captured = []
        hook = full.op.register_forward_hook(lambda module, args, out: captured.append(args[0]))
        self.full_maps = full.backbone(full.global_view(images))
        self.output = full.forward_maps(images, *self.full_maps)
        hook.remove()
        self.op_input = captured[0]  # [B, K, C, h, w]
        self.plain_maps = plain.backbone(plain.global_view(images))


def _batch_measures(full, plain, images, targets, angle: float, upright: _Upright) -> dict:
    """Sums over one batch at one angle: top-1 counts (c), (d), (a) and cosines (b)."""
    rotated = images if angle == 0 else Rotate(angle)(images)
    full_maps = full.backbone(full.global_view(rotated))
    plain_maps = plain.backbone(plain.global_view(rotated))
    output = full.forward_maps(rotated, *full_maps)
    sums = {
        "actual": _top1_counts(output, plain.forward_maps(rotated, *plain_maps).logits, targets)
    }

    def turned(maps):
        return [rotate_maps(m, angle, "border") for m in maps]

    oracle = full.forward_maps(rotated, *turned(upright.full_maps))
    oracle_plain = plain.forward_maps(rotated, *turned(upright.plain_maps)).logits
    sums["equivariant backbone"] = _top1_counts(oracle, oracle_plain, targets)
    if angle % 90 == 0:
        # Did the parts turn with the maps? Each of the K boxes found among the turned
        # upright boxes (to 0.01 pixel), counted as a fraction of K.
        size = images.shape[-1]
        expected = turn_boxes(upright.output.part_boxes, angle, size)
        gaps = (oracle.part_boxes[:, :, None] - expected[:, None]).abs().amax(-1)
        found = (gaps.amin(-1) < 0.01).float().mean(-1)
        sums["parts_turned"] = float(found.sum())
    # (a): the OP head on its own upright input, rotated.
    op_upright = upright.output.op_logits.argmax(1)
    op_turned = full.op(rotate_maps(upright.op_input, angle, "border")).sum(1).argmax(1)
    sums["op_on_turned_input"] = int((op_turned == targets).sum())
    sums["op_agreement"] = int((op_turned == op_upright).sum())
    # (b): equivariance of the global-view maps (stride 16, stride 32), and of their GAP.
    for name, maps, up in (
        ("ssanet", full_maps, upright.full_maps),
        ("plain", plain_maps, upright.plain_maps),
    ):
        for level, rotated_map, upright_map in zip(("s16", "s32"), maps, up, strict=True):
            key = f"cos {name} {level}"
            sums[key] = float(equivariance_cosine(rotated_map, upright_map, angle).sum())
        sums[f"cos {name} pooled"] = float(_pooled_cosine(maps[1], up[1]).sum())
    return sums


def _add(total: dict, part: dict) -> dict:
    for key, value in part.items():
        if isinstance(value, dict):
            _add(total.setdefault(key, {}), value)
        else:
            total[key] = total.get(key, 0) + value
    return total


def _scale(total: dict, count: int) -> dict:
    return {
        key: _scale(value, count) if isinstance(value, dict) else round(value / count * 100, 2)
        for key, value in total.items()
    }


def measure_pair(full_dir: Path, plain_dir: Path, root: Path, angles, limit, log) -> dict:
    """All measures of one (SSANet, plain) pair of runs: {angle: ...}, percentages (cosines
    x 100), and the unrelated-images cosines under "baseline"."""
    loaded = load_checkpoint(full_dir / "best.pt")
    full, plain = loaded.model.eval(), load_checkpoint(plain_dir / "best.pt").model.eval()
    if full.op is None or full.dsm is None or plain.proposals:
        raise ValueError(f"{full_dir} must be an SSANet run with DSM and OP, {plain_dir} plain")
    data = config_test_split(loaded.extra, root)
    count = len(data) if limit is None else min(limit, len(data))
    # A fixed shuffle, so that neighbours in a batch (the baseline's pairs) mix the classes.
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:count]
    totals: dict = {}
    pairs = 0
    started = time.monotonic()
    with torch.no_grad():
        for start in range(0, count, BATCH):
            items = [data[int(i)] for i in order[start : start + BATCH]]
            images = torch.stack([item["image"] for item in items])
            targets = torch.tensor([int(item["label"]) for item in items])
            upright = _Upright(full, plain, images)
            for angle in angles:
                part = _batch_measures(full, plain, images, targets, float(angle), upright)
                _add(totals.setdefault(float(angle), {}), part)
            # The baseline: each upright image against its neighbour of another class.
            other = targets != targets.roll(1)
            pairs += int(other.sum())
            baseline = {}
            for name, up in (("ssanet", upright.full_maps), ("plain", upright.plain_maps)):
                maps = [m.roll(1, 0) for m in up]
                for level, cosine in (
                    ("s16", position_cosine(maps[0], up[0])),
                    ("s32", position_cosine(maps[1], up[1])),
                    ("pooled", _pooled_cosine(maps[1], up[1])),
                ):
                    baseline[f"cos {name} {level}"] = float(cosine[other].sum())
            _add(totals.setdefault("baseline", {}), baseline)
            done = min(start + BATCH, count)
            log(f"  {full_dir.name}: {done}/{count} images ({time.monotonic() - started:.0f} s)")
    baseline = _scale(totals.pop("baseline"), pairs)
    scaled = {str(key): _scale(value, count) for key, value in totals.items()}
    return scaled | {"baseline": baseline, "images": count, "baseline_pairs": pairs}


def _mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def markdown(results: list[dict], angles) -> str:
    """The tables: per head top-1 by angle, actual and with an equivariant backbone, with the
    mean drop; the OP head on its rotated input; the equivariance cosines."""
    turned = [float(a) for a in angles if float(a) != 0]
    header = "| | " + " | ".join(f"{a:g}°" for a in map(float, angles)) + " | mean drop |"
    rule = "|---" * (len(angles) + 2) + "|"
    lines = [f"Top-1 % (mean ± sd over {len(results)} pair(s) of runs)", "", header, rule]
    for mode in ("actual", "equivariant backbone"):
        for head in HEADS:
            row = [[r[str(float(a))][mode][head] for r in results] for a in angles]
            drops = [
                statistics.mean(r["0.0"][mode][head] - r[str(a)][mode][head] for a in turned)
                for r in results
            ]
            cells = " | ".join(_mean_sd(v) for v in row)
            lines.append(f"| {head}, {mode} | {cells} | {_mean_sd(drops)} |")
    for key, label in (
        ("op_on_turned_input", "OP head on its rotated upright input"),
        ("op_agreement", "OP prediction unchanged (%)"),
        ("parts_turned", "parts that turned with the maps (%), equivariant backbone"),
    ):
        cells = " | ".join(
            _mean_sd([r[str(float(a))][key] for r in results])
            if key in results[0][str(float(a))]
            else "-"
            for a in angles
        )
        lines.append(f"| {label} | {cells} | |")
    lines += [
        "",
        "Equivariance: cosine x 100 of f(rotated image) and rotated f(upright image)",
        "",
        "| map | "
        + " | ".join(f"{a:g}°" for a in map(float, angles))
        + " | two images of different classes |",
        "|---" * (len(angles) + 2) + "|",
    ]
    for name in ("ssanet", "plain"):
        for level in ("s16", "s32", "pooled"):
            key = f"cos {name} {level}"
            cells = [_mean_sd([r[str(float(a))][key] for r in results]) for a in angles]
            base = _mean_sd([r["baseline"][key] for r in results])
            lines.append(f"| {name} {level} | " + " | ".join(cells) + f" | {base} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="the dataset's root")
    parser.add_argument("--full", type=Path, nargs="+", required=True, help="SSANet run dirs")
    parser.add_argument(
        "--plain",
        type=Path,
        nargs="+",
        required=True,
        help="the plain run dirs, one per --full, in the same order",
    )
    parser.add_argument("--angles", type=float, nargs="+", default=list(DEFAULT_ROTATION_ANGLES))
    parser.add_argument("--limit", type=int, default=None, help="first N test images only")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1)")
    parser.add_argument("--json", type=Path, default=None, help="write the numbers here")
    args = parser.parse_args(argv)
    if len(args.full) != len(args.plain):
        parser.error("--full and --plain must name as many runs")
    if 0.0 not in args.angles:
        parser.error("--angles must include 0 (the drops are from it)")
    torch.set_num_threads(args.threads)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    results = []
    for full_dir, plain_dir in zip(args.full, args.plain, strict=True):
        log(f"{full_dir} against {plain_dir}")
        result = measure_pair(full_dir, plain_dir, args.data, args.angles, args.limit, log)
        results.append(result | {"full": str(full_dir), "plain": str(plain_dir)})
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    print(markdown(results, args.angles))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
