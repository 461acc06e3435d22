"""What each ``ssanet`` command does, once :mod:`ssanet.cli` has parsed its arguments: the
checks of the files it names (before torch is imported), then the work, through the layers
below (data, training, evaluation, prediction, the study). A mistake raises
:class:`CommandError` (or the library's ValueError/OSError), which ``cli.main`` reports in one
line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
from pathlib import Path

# The environment variable that caps every training stage at this many epochs (a trial run;
# CI runs the README's training commands with it). --max-stage-epochs takes precedence.
MAX_STAGE_EPOCHS_ENV = "SSANET_MAX_STAGE_EPOCHS"


class CommandError(Exception):
    """A mistake in the command line or its files: reported in one line, exit status 2."""


# Argument values ------------------------------------------------------------------------------


def int_at_least(minimum: int):
    """An argparse type: an integer at least `minimum` (also read from the environment)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


# Checks of the files named (before torch is imported) -----------------------------------------


def _require_file(path: Path, flag: str) -> None:
    if path.is_dir():
        raise CommandError(f"argument {flag}: {path} is a folder: name the file")
    if not path.is_file():
        raise CommandError(f"argument {flag}: {path} does not exist")


def _require_folder(path: Path, flag: str) -> None:
    if not path.exists():
        raise CommandError(f"argument {flag}: folder {path} does not exist")
    if not path.is_dir():
        raise CommandError(f"argument {flag}: {path} is a file, not a folder")


def _require_new_picture(path: Path | None, overwrite: bool) -> None:
    if path is not None and path.exists() and not overwrite:
        raise CommandError(
            f"argument --draw: {path} exists from an earlier run: pass --overwrite to replace "
            "it, or name another file"
        )


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
    _require_file(args.checkpoint, "--checkpoint")
    for image in args.images:
        _require_file(Path(image), "IMAGE")
    _require_new_picture(args.draw, args.overwrite)
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


@contextlib.contextmanager
def _sigterm_interrupts():
    """Within it, SIGTERM (what batch systems and preemptible machines send before killing)
    stops like Ctrl-C: a KeyboardInterrupt, so the run ends cleanly with a message. Python
    handles signals in the main thread only; elsewhere SIGTERM keeps its handler."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signal_number, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def train_command(args: argparse.Namespace) -> int:
    if args.data is not None:
        _require_folder(args.data, "--data")
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
                cap = int_at_least(1)(os.environ[MAX_STAGE_EPOCHS_ENV])
            except argparse.ArgumentTypeError as error:
                raise CommandError(f"{MAX_STAGE_EPOCHS_ENV}: {error}") from None
    _set_threads(args.threads)
    device = None if args.device is None else _device(args.device)
    from .train import train

    if args.strategy is not None:
        args.overrides.append(f"strategy={args.strategy}")
    if cap is not None:
        args.overrides += _stage_epoch_caps(args.config, args.overrides, cap)
        print(f"ssanet train: every stage capped at {cap} epoch(s) (a trial run)", file=sys.stderr)
    with _sigterm_interrupts():
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
    _require_file(args.checkpoint, "--checkpoint")
    _require_folder(args.data, "--data")
    from .evaluate import DEFAULT_ROTATION_ANGLES, RESULTS_FILE, evaluate_checkpoint

    out = args.out if args.out is not None else args.checkpoint.parent / "eval"
    if (out / RESULTS_FILE).exists() and not args.overwrite:
        raise CommandError(
            f"{out / RESULTS_FILE} exists from an earlier evaluation: pass --overwrite to "
            "replace it, or --out another folder"
        )
    _set_threads(args.threads)
    device = _device(args.device)
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
    if args.data is not None:
        _require_folder(args.data, "--data")
    from .evaluate import ablation_table

    if args.train is not None:
        return study_command(args)
    if not args.runs:
        raise CommandError("ablation: give RUN_DIRs to tabulate, or --train CONFIG")
    device = _device(args.device)
    table = ablation_table(args.runs, args.out, args.data, device=device, progress=not args.quiet)
    for row in table["rows"]:
        print(f"{row['top1']:.4f}  {row['method']}")
    print(f"wrote {args.out / 'ablation.md'}, {args.out / 'ablation.json'}", file=sys.stderr)
    return 0


def study_command(args: argparse.Namespace) -> int:
    """``ssanet ablation --train CONFIG``: the whole study (:func:`ssanet.ablation.run_study`)."""
    from .ablation import run_study

    if args.data is None:
        raise CommandError("ablation --train needs --data")
    if args.runs:
        raise CommandError("ablation: give either RUN_DIRs or --train, not both")
    run_study(
        args.train,
        args.data,
        args.out,
        args.work if args.work is not None else args.out / "work",
        seeds=args.seeds,
        jobs=args.jobs,
        threads=args.threads,
        overrides=args.overrides,
        only=args.only,
    )
    return 0
