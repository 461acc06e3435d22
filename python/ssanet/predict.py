"""Inference helpers: top-k predictions, image loading and drawing the parts."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torchvision
from torchvision.transforms.v2 import functional as TF

from .data.transforms import IMAGENET_MEAN, IMAGENET_STD
from .model import SSANet

__all__ = ["Prediction", "draw_parts", "load_images", "predict"]

# One colour per part index (part j = the j-th best proposal); cycled beyond eight parts.
PART_COLORS = ("lime", "orange", "deepskyblue", "magenta", "yellow", "red", "cyan", "white")


class Prediction(NamedTuple):
    probabilities: torch.Tensor  # [B, k] softmax of the final logits, best first
    classes: torch.Tensor  # [B, k] class indices
    part_boxes: torch.Tensor | None  # [B, K, 4]
    candidate_boxes: torch.Tensor | None  # [B, K, S, 4]
    aligned_scale: torch.Tensor | None  # [B, K]


@torch.no_grad()
def predict(model: SSANet, images: torch.Tensor, topk: int = 5) -> Prediction:
    """The `topk` most probable classes of ``images [B, 3, H, W]`` (or one ``[3, H, W]``).

    Runs the model in eval mode (its training mode is restored afterwards). The images must be
    normalized as the model expects (see :func:`load_images`).
    """
    single = images.dim() == 3
    if single:
        images = images.unsqueeze(0)
    was_training = model.training
    model.eval()
    try:
        output = model(images)
    finally:
        model.train(was_training)
    probabilities = output.logits.float().softmax(dim=-1)
    top = probabilities.topk(min(topk, probabilities.shape[-1]), dim=-1)
    prediction = Prediction(
        top.values, top.indices, output.part_boxes, output.candidate_boxes, output.aligned_scale
    )
    if single:
        prediction = Prediction(*(None if t is None else t[0] for t in prediction))
    return prediction


def load_images(
    paths: Sequence[str | os.PathLike], image_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reads image files as RGB and resizes them to ``image_size x image_size``.

    Returns the model input ``[B, 3, S, S]`` (float, ImageNet-normalized) and the resized
    images as ``uint8 [B, 3, S, S]`` for drawing.
    """
    resized = []
    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"image file {path} does not exist")
        image = torchvision.io.decode_image(os.fspath(path), mode=torchvision.io.ImageReadMode.RGB)
        resized.append(TF.resize(image, [image_size, image_size], antialias=True))
    pixels = torch.stack(resized)
    normalized = TF.normalize(
        TF.to_dtype(pixels, torch.float32, scale=True), IMAGENET_MEAN, IMAGENET_STD
    )
    return normalized, pixels


def draw_parts(
    image: torch.Tensor,
    part_boxes: torch.Tensor,
    candidate_boxes: torch.Tensor | None = None,
    width: int = 3,
) -> torch.Tensor:
    """``uint8 [3, H, W]`` with the K part boxes ``[K, 4]`` drawn in one colour per part index
    and, if given, their candidates ``[K, S, 4]`` in the same colour, one pixel wide."""
    colors = [PART_COLORS[index % len(PART_COLORS)] for index in range(len(part_boxes))]
    if candidate_boxes is not None:
        scales = candidate_boxes.shape[1]
        image = torchvision.utils.draw_bounding_boxes(
            image,
            candidate_boxes.reshape(-1, 4).float().cpu(),
            colors=[color for color in colors for _ in range(scales)],
            width=1,
        )
    labels = [str(index) for index in range(len(part_boxes))]
    return torchvision.utils.draw_bounding_boxes(
        image, part_boxes.float().cpu(), labels=labels, colors=colors, width=width
    )
