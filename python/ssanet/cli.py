"""The ``ssanet`` command line.

ssanet predict --checkpoint CKPT IMAGE... [--topk 5] [--draw OUT.png|OUT.jpg [--candidates]]
               [--overwrite]
ssanet make-synthetic OUT [--preset default|fine|demo] [--num-classes 10] [--images-per-class 40]
ssanet train --config CONFIG --data ROOT --out RUN_DIR [--set KEY=VALUE ...]
ssanet train --resume RUN_DIR [--data ROOT]
ssanet eval --checkpoint CKPT --data ROOT [--out DIR] [--overwrite]
ssanet ablation RUN_DIR... --out DIR [--data ROOT]
ssanet ablation --train CONFIG --data ROOT --out DIR [--seeds 3] [--jobs 2] [--threads 1]

A user's mistake (a missing file, a bad value, a device this machine lacks, a missing or
mismatched torchvision, a download that fails offline) ends in one line naming the argument
and what to do, with exit status 2; anything else is a bug, reported in one line with exit
status 1; ``--debug`` shows the traceback of either. torch and the model are imported after the
arguments are parsed and the files they name are found, so ``--help``, ``--version`` and a
missing file answer at once, without torchvision too.
"""

from __future__ import annotations

import argparse
import sys
from importlib import metadata
from pathlib import Path

from .commands import (
    MAX_STAGE_EPOCHS_ENV,
    CommandError,
    ablation_command,
    eval_command,
    int_at_least,
    make_synthetic_command,
    predict_command,
    train_command,
)
from .predict import PICTURE_FORMATS

USAGE_ERROR = 2  # argparse's exit status for a bad command line; also a user's mistake
BUG = 1  # an error the package did not expect: its traceback is wanted (--debug)
EXIT_STATUSES = (
    "exit status: 0 done; 2 a mistake in the command line, its files or the environment, "
    "said in one line; 1 an unexpected error (a bug: rerun with --debug for its traceback); "
    "130 interrupted"
)


# Argument types -----------------------------------------------------------------------------


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


# The ablation study (ablation --train) ------------------------------------------------------


def add_study_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``ssanet ablation --train`` options (the study); see
    :func:`ssanet.ablation.run_study`."""
    from .ablation import ROWS

    parser.add_argument(
        "--train",
        default=None,
        metavar="CONFIG",
        help="train and evaluate the whole study with this config (e.g. synthetic_fine) "
        "instead of tabulating RUN_DIRs; needs --data",
    )
    parser.add_argument(
        "--work", type=Path, default=None, help="with --train: the runs' folder (OUT/work)"
    )
    parser.add_argument("--seeds", type=int, default=3, help="with --train: seeds (3)")
    parser.add_argument("--jobs", type=int, default=2, help="with --train: runs at once (2)")
    parser.add_argument(
        "--threads", type=int, default=1, help="with --train: torch threads per run (1)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="with --train: change the base config (repeatable)",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        default=None,
        help=f"with --train: only these rows {[r for r, _ in ROWS]}",
    )


# The parser ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ssanet",
        description="SSANet fine-grained recognition: predict, make-synthetic, train, eval, "
        "ablation (ssanet COMMAND --help for each)",
        epilog=EXIT_STATUSES,
    )
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = _Parser(add_help=False)
    common.add_argument(
        "--debug",
        action="store_true",
        help="show the full traceback of an error (by default one line: exit status 2 for a "
        "mistake in the command line, its files or the environment, 1 for a bug)",
    )

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
        "--topk", type=int_at_least(1), default=5, help="classes to print (5)"
    )
    predict_parser.add_argument(
        "--image-size",
        type=int_at_least(1),
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
        "--overwrite", action="store_true", help="replace the --draw picture of an earlier run"
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
    synthetic.add_argument("--num-classes", type=int_at_least(1), default=None, help="1..30 (10)")
    synthetic.add_argument(
        "--images-per-class", type=int_at_least(1), default=None, help="(default 40, fine 100)"
    )
    synthetic.add_argument(
        "--image-size", type=int_at_least(16), default=None, help="square side (128; fine 192)"
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
        type=int_at_least(1),
        default=None,
        metavar="EPOCHS",
        help="stop after this many epochs (--resume continues)",
    )
    train_parser.add_argument(
        "--max-stage-epochs",
        type=int_at_least(1),
        default=None,
        metavar="N",
        help="a trial run: cap every stage at N epochs (the run's config.json records it); "
        f"default: ${MAX_STAGE_EPOCHS_ENV} if set, else the config's epochs",
    )
    train_parser.add_argument("--device", default=None, help="default: cuda:LOCAL_RANK or cpu")
    train_parser.add_argument("--quiet", action="store_true", help="no progress bars")
    train_parser.add_argument("--threads", type=int_at_least(1), default=None, help=threads_help)
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
    eval_parser.add_argument("--batch-size", type=int_at_least(1), default=32)
    eval_parser.add_argument("--workers", type=int_at_least(0), default=0)
    eval_parser.add_argument("--device", default=None, help="default: cuda if it works, else cpu")
    eval_parser.add_argument(
        "--angles",
        type=float,
        nargs="+",
        default=None,
        help="rotation angles of Table 1 in degrees (default: the paper's, 0 15 30 45 90 180)",
    )
    eval_parser.add_argument("--quiet", action="store_true", help="no progress bar")
    eval_parser.add_argument("--threads", type=int_at_least(1), default=None, help=threads_help)
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
    add_study_arguments(ablation)
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
    except Exception as error:
        if args.debug:
            raise
        if _is_users_to_fix(error):
            print(f"ssanet {args.command}: error: {_message(error)}", file=sys.stderr)
            return USAGE_ERROR
        first_line = (str(error).strip().splitlines() or [""])[0]
        print(
            f"ssanet {args.command}: unexpected error: {type(error).__name__}: {first_line} "
            "(rerun with --debug for the traceback, and report it)",
            file=sys.stderr,
        )
        return BUG


def _is_users_to_fix(error: Exception) -> bool:
    """Whether `error` is a mistake the user can fix: the library raises ValueError for bad
    input and OSError for missing or unwritable files and failed downloads, each naming the
    file or setting; an ImportError is a missing (or mismatched) optional dependency, unless
    it is one of this package's own modules; torch's OutOfMemoryError asks for a smaller batch
    or images. Anything else is a bug."""
    if isinstance(error, ImportError):
        return (error.name or "").partition(".")[0] not in ("ssanet", "ssanet_ops")
    # By name: torch may not be imported (and needs not be, to tell).
    if type(error).__name__ == "OutOfMemoryError":
        return True
    return isinstance(error, CommandError | ValueError | OSError)


def _message(error: Exception) -> str:
    # OSError(errno, text, file) prints as "[Errno 2] text: 'file'": the errno means nothing
    # to a user.
    if isinstance(error, OSError) and error.strerror and error.filename:
        return f"{error.strerror}: {error.filename}"
    if type(error).__name__ == "OutOfMemoryError":
        # torch's message runs over several lines of allocator statistics.
        first_line = str(error).strip().splitlines()[0]
        return f"{first_line} (a smaller --batch-size or --set batch_size=N needs less memory)"
    if isinstance(error, ModuleNotFoundError) and error.name:
        return f"{error}: install it (the 'train' extra of ssanet-ops lists what ssanet needs)"
    # One line: a message of several (torch's often are) is joined.
    return " ".join(line.strip() for line in str(error).strip().splitlines())


if __name__ == "__main__":
    raise SystemExit(main())
