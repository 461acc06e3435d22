"""The ``ssanet`` command line.

ssanet predict --checkpoint CKPT IMAGE... [--topk 5] [--draw OUT.png|OUT.jpg [--candidates]]
ssanet make-synthetic OUT [--preset default|fine|demo] [--num-classes 10] [--images-per-class 40]
ssanet train --config CONFIG --data ROOT --out RUN_DIR [--set KEY=VALUE ...]
ssanet train --resume RUN_DIR [--data ROOT]
ssanet eval --checkpoint CKPT --data ROOT [--out DIR] [--overwrite]
ssanet ablation RUN_DIR... --out DIR [--data ROOT]
ssanet ablation --train CONFIG --data ROOT --out DIR [--seeds 3] [--jobs 2] [--threads 1]

A user's mistake (a missing file, a bad value, a device this machine lacks) ends in one line
naming the argument and what to do, with exit status 2; ``--debug`` shows the traceback. torch
and the model are imported after the arguments are parsed, so ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from importlib import metadata
from pathlib import Path

from .predict import PICTURE_FORMATS

# The environment variable that caps every training stage at this many epochs (a trial run;
# CI runs the README's training commands with it). --max-stage-epochs takes precedence.
MAX_STAGE_EPOCHS_ENV = "SSANET_MAX_STAGE_EPOCHS"
USAGE_ERROR = 2  # argparse's exit status for a bad command line


class CommandError(Exception):
    """A mistake in the command line or its files: reported in one line, exit status 2."""


# Argument types -----------------------------------------------------------------------------


def _int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def _picture_path(text: str) -> Path:
    path = Path(text)
    if path.suffix.lower() not in PICTURE_FORMATS:
        raise argparse.ArgumentTypeError(
            f"{text}: name a file ending in {', '.join(PICTURE_FORMATS)} "
            "(the ending chooses PNG or JPEG)"
        )
    return path


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors in two lines: the error, and where to read the options."""

    def error(self, message: str):
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message}\n(see {self.prog} --help)\n")


# Checks that need torch (run after parsing) ---------------------------------------------------


def _device(name: str | None):
    """The torch.device of a --device value (default: CUDA where it works, else the CPU)."""
    import torch

    import ssanet_ops

    kernels_have_cuda = ssanet_ops.build_info()["cuda"]
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() and kernels_have_cuda else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CommandError(
            f"argument --device: {name!r} is not a device; use cpu, cuda or cuda:N"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            reason = (
                "no GPU is visible"
                if torch.version.cuda
                else f"torch {torch.__version__} is a CPU-only build"
            )
            raise CommandError(
                f"argument --device: {name} is not available here ({reason}); use --device cpu"
            )
        if not kernels_have_cuda:
            raise CommandError(
                f"argument --device: {name}: ssanet_ops was built without its CUDA kernels; "
                "rebuild it with SSANET_OPS_CUDA=on (README, Building) or use --device cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CommandError(
                f"argument --device: {name}: this machine has {torch.cuda.device_count()} GPU(s), "
                f"cuda:0 to cuda:{torch.cuda.device_count() - 1}"
            )
    elif device.type != "cpu":
        raise CommandError(f"argument --device: {name}: ssanet_ops runs on cpu and cuda only")
    return device


def _set_threads(threads: int | None) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


# Commands -----------------------------------------------------------------------------------


def predict_command(args: argparse.Namespace) -> int:
    from .checkpoint import load_checkpoint
    from .predict import draw_parts, load_images, picture_grid, predict, write_picture

    device = _device(args.device)
    loaded = load_checkpoint(args.checkpoint, map_location=device)
    if args.draw is not None and not loaded.model.config.get("proposals", True):
        raise CommandError(
            f"argument --draw: {args.checkpoint} is a model without proposals "
            "(proposals=False): it has no parts to draw"
        )
    image_size = args.image_size or loaded.image_size
    images, pixels = load_images(args.images, image_size)
    prediction = predict(loaded.model, images.to(device), topk=args.topk)
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
        pictures = [
            draw_parts(
                pixels[index],
                prediction.part_boxes[index],
                prediction.candidate_boxes[index] if args.candidates else None,
                part_scores=prediction.part_scores[index],
                caption=[
                    Path(path).name,
                    f"{loaded.class_names[prediction.classes[index, 0].item()]}: "
                    f"{prediction.probabilities[index, 0].item():.3f}",
                ],
            )
            for index, path in enumerate(args.images)
        ]
        args.draw.parent.mkdir(parents=True, exist_ok=True)
        write_picture(picture_grid(pictures), args.draw)
        print(f"wrote {args.draw}", file=sys.stderr)
    return 0


def make_synthetic_command(args: argparse.Namespace) -> int:
    from .data import make_synthetic, synthetic_preset

    if args.out.is_dir() and any(args.out.iterdir()) and not args.overwrite:
        raise CommandError(
            f"{args.out} is not empty: pass --overwrite to replace a dataset written there "
            "earlier, or name another folder"
        )
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


def _stage_epoch_caps(config, overrides: list[str], cap: int) -> list[str]:
    """``--set`` overrides that cap every stage of the run's strategy at ``cap`` epochs,
    dropping learning-rate milestones at or past the cap."""
    from .config import load_config

    resolved = load_config(config, overrides)
    strategy = resolved["strategy"]
    caps = []
    for index, stage in enumerate(resolved["strategies"][strategy]):
        if stage["epochs"] > cap:
            key = f"strategies.{strategy}.{index}"
            milestones = [epoch for epoch in stage["milestones"] if epoch < cap]
            caps += [f"{key}.epochs={cap}", f"{key}.milestones={json.dumps(milestones)}"]
    return caps


def train_command(args: argparse.Namespace) -> int:
    _set_threads(args.threads)
    device = None if args.device is None else _device(args.device)
    cap = args.max_stage_epochs
    if args.resume is not None:
        if args.out is not None and args.out.resolve() != args.resume.resolve():
            raise CommandError("--out and --resume name different folders: give one of them")
        if cap is not None:
            raise CommandError(
                "--max-stage-epochs starts a new run; --resume continues with the run's config"
            )
        run_dir, resume = args.resume, True
    else:
        given = {"--config": args.config, "--data": args.data, "--out": args.out}
        missing = [flag for flag, value in given.items() if value is None]
        if missing:
            raise CommandError(f"a new run needs {', '.join(missing)} (or --resume RUN_DIR)")
        run_dir, resume = args.out, False
        if cap is None and os.environ.get(MAX_STAGE_EPOCHS_ENV):
            try:
                cap = _int_at_least(1)(os.environ[MAX_STAGE_EPOCHS_ENV])
            except argparse.ArgumentTypeError as error:
                raise CommandError(f"{MAX_STAGE_EPOCHS_ENV}: {error}") from None
    from .train import train

    if args.strategy is not None:
        args.overrides.append(f"strategy={args.strategy}")
    if cap is not None:
        args.overrides += _stage_epoch_caps(args.config, args.overrides, cap)
        print(f"ssanet train: every stage capped at {cap} epoch(s) (a trial run)", file=sys.stderr)
    summary = train(
        args.config,
        args.data,
        run_dir,
        resume=resume,
        overrides=args.overrides,
        stop_after_epochs=args.stop_after,
        device=device,
        progress=not args.quiet,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary, indent=2))
    return 0


def eval_command(args: argparse.Namespace) -> int:
    from .evaluate import DEFAULT_ROTATION_ANGLES, RESULTS_FILE, evaluate_checkpoint

    _set_threads(args.threads)
    device = _device(args.device)
    out = args.out if args.out is not None else args.checkpoint.parent / "eval"
    if (out / RESULTS_FILE).exists() and not args.overwrite:
        raise CommandError(
            f"{out / RESULTS_FILE} exists from an earlier evaluation: pass --overwrite to "
            "replace it, or --out another folder"
        )
    results = evaluate_checkpoint(
        args.checkpoint,
        args.data,
        out,
        dataset=args.dataset,
        batch_size=args.batch_size,
        workers=args.workers,
        device=device,
        angles=DEFAULT_ROTATION_ANGLES if args.angles is None else args.angles,
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
        raise CommandError("ablation: give RUN_DIRs to tabulate, or --train CONFIG")
    device = _device(args.device)
    table = ablation_table(args.runs, args.out, args.data, device=device, progress=not args.quiet)
    for row in table["rows"]:
        print(f"{row['top1']:.4f}  {row['method']}")
    print(f"wrote {args.out / 'ablation.md'}, {args.out / 'ablation.json'}", file=sys.stderr)
    return 0


# The parser ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ssanet",
        description="SSANet fine-grained recognition: predict, make-synthetic, train, eval, "
        "ablation (ssanet COMMAND --help for each)",
    )
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the full traceback of an error")

    predict_parser = commands.add_parser(
        "predict",
        parents=[common],
        help="top-k classes of images, optionally drawing the part proposals",
    )
    predict_parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    predict_parser.add_argument(
        "--checkpoint", required=True, type=Path, help="a file written by ssanet.save_checkpoint"
    )
    predict_parser.add_argument(
        "--topk", type=_int_at_least(1), default=5, help="classes to print (5)"
    )
    predict_parser.add_argument(
        "--image-size",
        type=_int_at_least(1),
        default=None,
        help="resize images to this square side (default: the checkpoint's image_size)",
    )
    predict_parser.add_argument(
        "--device", default=None, help="cpu, cuda or cuda:N (default: cuda if it works, else cpu)"
    )
    predict_parser.add_argument(
        "--draw",
        type=_picture_path,
        default=None,
        metavar="OUT.png",
        help="write a picture per image (file name, predicted class and probability above it; "
        "the K part boxes numbered by rank, with their proposal scores), side by side; "
        ".png or .jpg",
    )
    predict_parser.add_argument(
        "--candidates",
        action="store_true",
        help="with --draw, also draw each part's S scale candidates",
    )
    predict_parser.set_defaults(run=predict_command)
    _add_training_commands(commands, common)
    return parser


def _add_training_commands(commands, common: argparse.ArgumentParser) -> None:
    """The make-synthetic, train, eval and ablation subcommands."""
    threads_help = "CPU threads of torch (default: torch's choice; 1 can be faster on a busy CPU)"
    synthetic = commands.add_parser(
        "make-synthetic",
        parents=[common],
        help="write the synthetic fine-grained dataset (CUB-200-2011 layout)",
    )
    synthetic.add_argument("out", type=Path, metavar="OUT", help="folder to write (empty)")
    synthetic.add_argument(
        "--preset",
        default="default",
        choices=["default", "fine", "demo"],
        help="default: large figures at any rotation (a smoke test); fine: small upright "
        "figures among distractors, fine-grained as CUB (the ablation's benchmark); demo: "
        "large upright figures, easy (the README's demo, config synthetic_demo)",
    )
    synthetic.add_argument("--num-classes", type=_int_at_least(1), default=None, help="1..30 (10)")
    synthetic.add_argument(
        "--images-per-class", type=_int_at_least(1), default=None, help="(default 40, fine 100)"
    )
    synthetic.add_argument(
        "--image-size", type=_int_at_least(16), default=None, help="square side (128; fine 192)"
    )
    synthetic.add_argument(
        "--train-fraction",
        type=float,
        default=None,
        help="share of training images (0.5; fine, demo 0.7)",
    )
    synthetic.add_argument("--seed", type=int, default=0)
    synthetic.add_argument(
        "--overwrite", action="store_true", help="replace a dataset written earlier here"
    )
    synthetic.set_defaults(run=make_synthetic_command)

    train_parser = commands.add_parser(
        "train",
        parents=[common],
        help="train SSANet (three-stage or joint); run under torchrun for several processes",
    )
    train_parser.add_argument(
        "--config",
        default=None,
        help="a JSON config file or a built-in name: cub, cars, aircraft, synthetic, "
        "synthetic_fine, synthetic_demo",
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
        type=_int_at_least(1),
        default=None,
        metavar="EPOCHS",
        help="stop after this many epochs (--resume continues)",
    )
    train_parser.add_argument(
        "--max-stage-epochs",
        type=_int_at_least(1),
        default=None,
        metavar="N",
        help="a trial run: cap every stage at N epochs (the run's config.json records it); "
        f"default: ${MAX_STAGE_EPOCHS_ENV} if set, else the config's epochs",
    )
    train_parser.add_argument("--device", default=None, help="default: cuda:LOCAL_RANK or cpu")
    train_parser.add_argument("--quiet", action="store_true", help="no progress bars")
    train_parser.add_argument("--threads", type=_int_at_least(1), default=None, help=threads_help)
    train_parser.set_defaults(run=train_command)

    eval_parser = commands.add_parser(
        "eval",
        parents=[common],
        help="accuracy, rotation (Table 1), reduced input (Table 2), Fig. 4 distances",
    )
    eval_parser.add_argument("--checkpoint", required=True, type=Path)
    eval_parser.add_argument("--data", required=True, type=Path, help="the dataset's folder")
    eval_parser.add_argument(
        "--out", type=Path, default=None, help="output folder (default: eval/ beside the file)"
    )
    eval_parser.add_argument(
        "--overwrite", action="store_true", help="replace the results of an earlier evaluation"
    )
    eval_parser.add_argument("--dataset", default=None, help="default: the checkpoint's")
    eval_parser.add_argument("--batch-size", type=_int_at_least(1), default=32)
    eval_parser.add_argument("--workers", type=_int_at_least(0), default=0)
    eval_parser.add_argument("--device", default=None, help="default: cuda if it works, else cpu")
    eval_parser.add_argument(
        "--angles",
        type=float,
        nargs="+",
        default=None,
        help="rotation angles of Table 1 in degrees (default: the paper's, 0 15 30 45 90 180)",
    )
    eval_parser.add_argument("--quiet", action="store_true", help="no progress bar")
    eval_parser.add_argument("--threads", type=_int_at_least(1), default=None, help=threads_help)
    eval_parser.set_defaults(run=eval_command)

    ablation = commands.add_parser(
        "ablation",
        parents=[common],
        help="Table 3 from several runs' evaluations, or (--train) train and evaluate the whole "
        "study: Table 3, Tables 1-2, Fig. 4 (JSON, Markdown, PNG)",
    )
    ablation.add_argument("runs", nargs="*", type=Path, metavar="RUN_DIR")
    ablation.add_argument("--out", required=True, type=Path, help="output folder")
    ablation.add_argument(
        "--data", type=Path, default=None, help="evaluate runs that have no eval/ yet on this data"
    )
    ablation.add_argument("--device", default=None, help="default: cuda if it works, else cpu")
    ablation.add_argument("--quiet", action="store_true")
    from .ablation import add_train_arguments

    add_train_arguments(ablation)
    ablation.set_defaults(run=ablation_command)


def _version() -> str:
    try:
        return f"ssanet {metadata.version('ssanet-ops')}"
    except metadata.PackageNotFoundError:  # imported from a source tree that was never installed
        return "ssanet (not installed: no version)"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print(f"ssanet {args.command}: interrupted", file=sys.stderr)
        return 130
    # ValueError and OSError are what the library raises for bad input and missing or
    # unwritable files, with messages that name the file or setting. Anything else is a bug.
    except (CommandError, ValueError, OSError) as error:
        if args.debug:
            raise
        print(f"ssanet {args.command}: error: {_message(error)}", file=sys.stderr)
        return USAGE_ERROR


def _message(error: Exception) -> str:
    # OSError(errno, text, file) prints as "[Errno 2] text: 'file'": the errno means nothing
    # to a user.
    if isinstance(error, OSError) and error.strerror and error.filename:
        return f"{error.strerror}: {error.filename}"
    return str(error)


if __name__ == "__main__":
    raise SystemExit(main())
