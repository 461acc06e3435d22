"""The ``ssanet`` command line.

ssanet predict --checkpoint CKPT IMAGE... [--topk 5] [--draw OUT.png [--candidates]]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torchvision

from .checkpoint import load_checkpoint
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
