"""The ``ssanet`` command line.

ssanet predict --checkpoint CKPT IMAGE... [--topk 5] [--draw OUT.png [--candidates]]
ssanet make-synthetic OUT [--preset default|fine] [--num-classes 10] [--images-per-class 40]
ssanet train --config CONFIG --data ROOT --out RUN_DIR [--set KEY=VALUE ...]
ssanet train --resume RUN_DIR [--data ROOT]
ssanet eval --checkpoint CKPT --data ROOT [--out DIR]
ssanet ablation RUN_DIR... --out DIR [--data ROOT]
ssanet ablation --train CONFIG --data ROOT --out DIR [--seeds 3] [--jobs 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import torchvision

from .checkpoint import load_checkpoint
from .metrics import DEFAULT_ROTATION_ANGLES
from .predict import draw_parts, load_images, predict


def predict_command(args: argparse.Namespace) -> int:
    loaded = load_checkpoint(args.checkpoint, map_location=args.device)
    image_size = args.image_size or loaded.image_size
    images, pixels = load_images(args.images, image_size)
    prediction = predict(loaded.model, images.to(args.device), topk=args.topk)
    for index, path in enumerate(args.images):
        print(path)
        for rank, (probability, label) in enumerate(
            zip(
                prediction.probabilities[index].tolist(),
                prediction.classes[index].tolist(),
                strict=True,
            ),
            start=1,
        ):
            print(f"  {rank}. {probability:.4f}  {loaded.class_names[label]} ({label})")
    if args.draw is not None:
        if prediction.part_boxes is None:
            print("the model has no proposals (proposals=False): nothing to draw", file=sys.stderr)
            return 1
        drawn = [
            draw_parts(
                pixels[index],
                prediction.part_boxes[index],
                prediction.candidate_boxes[index] if args.candidates else None,
            )
            for index in range(len(args.images))
        ]
        # Several images go side by side into one PNG.
        picture = drawn[0]
        if len(drawn) > 1:
            picture = torchvision.utils.make_grid(drawn, nrow=len(drawn))
        args.draw.parent.mkdir(parents=True, exist_ok=True)
        torchvision.io.write_png(picture, str(args.draw))
        print(f"wrote {args.draw}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ssanet", description="SSANet fine-grained recognition")
    commands = parser.add_subparsers(dest="command", required=True)

    predict_parser = commands.add_parser(
        "predict", help="top-k classes of images, optionally drawing the part proposals"
    )
    predict_parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    predict_parser.add_argument(
        "--checkpoint", required=True, type=Path, help="a file written by ssanet.save_checkpoint"
    )
    predict_parser.add_argument("--topk", type=int, default=5, help="classes to print (5)")
    predict_parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="resize images to this square side (default: the checkpoint's image_size)",
    )
    predict_parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    predict_parser.add_argument(
        "--draw",
        type=Path,
        default=None,
        metavar="OUT.png",
        help="write the image(s) with the K part boxes drawn",
    )
    predict_parser.add_argument(
        "--candidates",
        action="store_true",
        help="with --draw, also draw each part's S scale candidates",
    )
    predict_parser.set_defaults(run=predict_command)
    add_training_commands(commands)
    return parser


def make_synthetic_command(args: argparse.Namespace) -> int:
    from .data import make_synthetic, synthetic_preset

    options = synthetic_preset(
        args.preset,
        num_classes=args.num_classes,
        images_per_class=args.images_per_class,
        image_size=args.image_size,
        train_fraction=args.train_fraction,
    )
    path = make_synthetic(args.out, seed=args.seed, overwrite=args.overwrite, **options)
    count = options.get("num_classes", 10) * options.get("images_per_class", 40)
    print(f"wrote {count} images to {path}", file=sys.stderr)
    return 0


def _set_threads(threads: int | None) -> None:
    if threads is not None:
        if threads < 1:
            raise SystemExit(f"ssanet: --threads must be positive, got {threads}")
        torch.set_num_threads(threads)


def train_command(args: argparse.Namespace) -> int:
    from .train import train

    _set_threads(args.threads)
    if args.resume is not None:
        if args.out is not None and args.out.resolve() != args.resume.resolve():
            raise SystemExit("ssanet train: --out and --resume name different folders")
        run_dir, resume = args.resume, True
    else:
        missing = [
            flag
            for flag, value in [
                ("--config", args.config),
                ("--data", args.data),
                ("--out", args.out),
            ]
            if value is None
        ]
        if missing:
            raise SystemExit(f"ssanet train: a new run needs {', '.join(missing)}")
        run_dir, resume = args.out, False
    if args.strategy is not None:
        args.overrides.append(f"strategy={args.strategy}")
    summary = train(
        args.config,
        args.data,
        run_dir,
        resume=resume,
        overrides=args.overrides,
        stop_after_epochs=args.stop_after,
        device=args.device,
        progress=not args.quiet,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary, indent=2))
    return 0


def eval_command(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_checkpoint

    _set_threads(args.threads)
    results = evaluate_checkpoint(
        args.checkpoint,
        args.data,
        args.out,
        dataset=args.dataset,
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        angles=args.angles,
        progress=not args.quiet,
    )
    accuracy = results["accuracy"]
    print(
        f"{results['label']}: top-1 {accuracy['top1']:.4f}, top-5 {accuracy['top5']:.4f}, "
        f"mean per-class {accuracy['mean_class_accuracy']:.4f} "
        f"({accuracy['num_samples']} test images)"
    )
    for name, path in results["files"].items():
        print(f"  {name}: {path}")
    return 0


def ablation_command(args: argparse.Namespace) -> int:
    from .evaluate import ablation_table

    if args.train is not None:
        from .ablation import train_command as study_command

        return study_command(args)
    if not args.runs:
        raise SystemExit("ssanet ablation: give RUN_DIRs to tabulate, or --train CONFIG")

    table = ablation_table(
        args.runs, args.out, args.data, device=args.device, progress=not args.quiet
    )
    for row in table["rows"]:
        print(f"{row['top1']:.4f}  {row['method']}")
    print(f"wrote {args.out / 'ablation.md'}, {args.out / 'ablation.json'}", file=sys.stderr)
    return 0


def add_training_commands(commands) -> None:
    """The make-synthetic, train, eval and ablation subcommands."""
    synthetic = commands.add_parser(
        "make-synthetic", help="write the synthetic fine-grained dataset (CUB-200-2011 layout)"
    )
    synthetic.add_argument("out", type=Path, metavar="OUT", help="folder to write (empty)")
    synthetic.add_argument(
        "--preset",
        default="default",
        choices=["default", "fine"],
        help="default: large figures at any rotation (a smoke test); fine: small upright "
        "figures among distractors, fine-grained as CUB (the ablation's benchmark)",
    )
    synthetic.add_argument("--num-classes", type=int, default=None, help="1..30 (10)")
    synthetic.add_argument(
        "--images-per-class", type=int, default=None, help="(default 40, fine 80)"
    )
    synthetic.add_argument("--image-size", type=int, default=None, help="square side (128)")
    synthetic.add_argument(
        "--train-fraction",
        type=float,
        default=None,
        help="share of training images (default 0.5, fine 0.625)",
    )
    synthetic.add_argument("--seed", type=int, default=0)
    synthetic.add_argument(
        "--overwrite", action="store_true", help="replace a dataset written earlier here"
    )
    synthetic.set_defaults(run=make_synthetic_command)

    train_parser = commands.add_parser(
        "train",
        help="train SSANet (three-stage or joint); run under torchrun for several processes",
    )
    train_parser.add_argument(
        "--config",
        default=None,
        help="a JSON config file or a built-in name: cub, cars, aircraft, synthetic",
    )
    train_parser.add_argument("--data", type=Path, default=None, help="the dataset's folder")
    train_parser.add_argument("--out", type=Path, default=None, help="the run folder to create")
    train_parser.add_argument(
        "--resume", type=Path, default=None, metavar="RUN_DIR", help="continue this run exactly"
    )
    train_parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change a config entry, e.g. --set batch_size=8 --set model.op=none (repeatable)",
    )
    train_parser.add_argument(
        "--strategy", default=None, help="three_stage or joint (default: the config's)"
    )
    train_parser.add_argument(
        "--stop-after",
        type=int,
        default=None,
        metavar="EPOCHS",
        help="stop after this many epochs (--resume continues)",
    )
    train_parser.add_argument("--device", default=None, help="default: cuda:LOCAL_RANK or cpu")
    train_parser.add_argument("--quiet", action="store_true", help="no progress bars")
    train_parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads of torch (default: torch's choice; 1 can be faster on a busy CPU)",
    )
    train_parser.set_defaults(run=train_command)

    eval_parser = commands.add_parser(
        "eval", help="accuracy, rotation (Table 1), reduced input (Table 2), Fig. 4 distances"
    )
    eval_parser.add_argument("--checkpoint", required=True, type=Path)
    eval_parser.add_argument("--data", required=True, type=Path, help="the dataset's folder")
    eval_parser.add_argument(
        "--out", type=Path, default=None, help="output folder (default: eval/ beside the file)"
    )
    eval_parser.add_argument("--dataset", default=None, help="default: the checkpoint's")
    eval_parser.add_argument("--batch-size", type=int, default=32)
    eval_parser.add_argument("--workers", type=int, default=0)
    eval_parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    eval_parser.add_argument(
        "--angles",
        type=float,
        nargs="+",
        default=list(DEFAULT_ROTATION_ANGLES),
        help="rotation angles of Table 1 in degrees (0 15 30 45 90 180)",
    )
    eval_parser.add_argument("--quiet", action="store_true", help="no progress bar")
    eval_parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads of torch (default: torch's choice; 1 can be faster on a busy CPU)",
    )
    eval_parser.set_defaults(run=eval_command)

    ablation = commands.add_parser(
        "ablation",
        help="Table 3 from several runs' evaluations, or (--train) train and evaluate the whole "
        "study: Table 3, Tables 1-2, Fig. 4 (JSON, Markdown, PNG)",
    )
    ablation.add_argument("runs", nargs="*", type=Path, metavar="RUN_DIR")
    ablation.add_argument("--out", required=True, type=Path, help="output folder")
    ablation.add_argument(
        "--data", type=Path, default=None, help="evaluate runs that have no eval/ yet on this data"
    )
    ablation.add_argument("--device", default=None)
    ablation.add_argument("--quiet", action="store_true")
    from .ablation import add_train_arguments

    add_train_arguments(ablation)
    ablation.set_defaults(run=ablation_command)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
