"""Inference helpers: top-k predictions, image loading, and pictures of where the parts landed.

torch, torchvision and PIL are imported inside the functions: ``import ssanet`` binds this
module's names eagerly (the function ``ssanet.predict`` shares its name with this module) and
must stay light, so that ``ssanet --help`` answers without loading torch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    import torch

    from .model import SSANet

__all__ = [
    "PICTURE_FORMATS",
    "Prediction",
    "draw_parts",
    "load_images",
    "picture_grid",
    "predict",
    "write_picture",
]

#: One colour per part index (part j = the j-th best proposal); cycled beyond eight parts.
PART_COLORS = ("lime", "orange", "deepskyblue", "magenta", "yellow", "red", "cyan", "white")
#: File name endings write_picture knows, and the encoder of each.
PICTURE_FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg"}
# Pictures are drawn at least this large on their long side, so that boxes, part numbers and
# scores stay readable on the small images of the synthetic data (96 pixels).
MIN_LONG_SIDE = 512


class Prediction(NamedTuple):
    probabilities: torch.Tensor  # [B, k] softmax of the final logits, best first
    classes: torch.Tensor  # [B, k] class indices
    part_boxes: torch.Tensor | None  # [B, K, 4]
    candidate_boxes: torch.Tensor | None  # [B, K, S, 4]
    aligned_scale: torch.Tensor | None  # [B, K]
    part_scores: torch.Tensor | None = None  # [B, K] proposal-head scores of part_boxes


def predict(model: SSANet, images: torch.Tensor, topk: int = 5) -> Prediction:
    """The `topk` most probable classes of ``images [B, 3, H, W]`` (or one ``[3, H, W]``).

    Runs the model in eval mode without gradients (its training mode is restored afterwards).
    The images must be normalized as the model expects (see :func:`load_images`).
    """
    import torch

    single = images.dim() == 3
    if single:
        images = images.unsqueeze(0)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = model(images)
    finally:
        model.train(was_training)
    probabilities = output.logits.float().softmax(dim=-1)
    top = probabilities.topk(min(topk, probabilities.shape[-1]), dim=-1)
    prediction = Prediction(
        top.values,
        top.indices,
        output.part_boxes,
        output.candidate_boxes,
        output.aligned_scale,
        output.part_scores,
    )
    if single:
        prediction = Prediction(*(None if t is None else t[0] for t in prediction))
    return prediction


def load_images(
    paths: Sequence[str | os.PathLike], image_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reads image files as RGB (with PIL, as the datasets read theirs) and resizes them to
    ``image_size x image_size`` (bilinear with antialiasing, as the datasets' transforms).

    Returns the model input ``[B, 3, S, S]`` (float, ImageNet-normalized) and the resized
    images as ``uint8 [B, 3, S, S]`` for drawing. A missing file raises FileNotFoundError, a
    folder or a file that is not an image ValueError, each naming the path.
    """
    import numpy as np
    import torch
    from PIL import Image
    from torchvision.transforms.v2 import functional as TF

    from .data.transforms import IMAGENET_MEAN, IMAGENET_STD

    resized = []
    for path in paths:
        if os.path.isdir(path):
            raise ValueError(f"{path} is a folder: name an image file")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"image file {path} does not exist")
        try:
            with Image.open(path) as decoded:
                rgb = decoded.convert("RGB")
        except (OSError, SyntaxError, ValueError) as error:  # what PIL raises for bad content
            raise ValueError(f"{path} is not an image PIL can read ({error})") from error
        image = torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1)
        resized.append(TF.resize(image, [image_size, image_size], antialias=True))
    pixels = torch.stack(resized)
    normalized = TF.normalize(
        TF.to_dtype(pixels, torch.float32, scale=True), IMAGENET_MEAN, IMAGENET_STD
    )
    return normalized, pixels


def draw_parts(
    image: torch.Tensor,
    part_boxes: torch.Tensor | None = None,
    candidate_boxes: torch.Tensor | None = None,
    width: int = 3,
    *,
    part_scores: torch.Tensor | None = None,
    caption: Sequence[str] = (),
    min_long_side: int = MIN_LONG_SIDE,
) -> torch.Tensor:
    """A picture of where the parts landed: ``uint8 [3, H', W']``.

    ``image`` (``uint8 [3, H, W]``) is upscaled so its long side is at least ``min_long_side``
    pixels. The K part boxes ``[K, 4]`` (x1, y1, x2, y2 in pixels of ``image``; None: no boxes)
    are drawn ``width`` pixels wide in one colour per part index (:data:`PART_COLORS`), each
    labelled with its number (1 = the best proposal) and, given ``part_scores [K]``, its
    proposal-head score; their scale candidates ``[K, S, 4]``, if given, one pixel wide in the
    part's colour. The ``caption`` lines (for instance the file name and the predicted class)
    go in a white band above the image.
    """
    import numpy as np
    import torch
    from PIL import Image, ImageDraw
    from torchvision.transforms.v2 import functional as TF

    if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be uint8 [3, H, W], got {image.dtype} {list(image.shape)}")
    height, width_pixels = image.shape[1:]
    scale = max(1.0, min_long_side / max(height, width_pixels))
    size = [round(height * scale), round(width_pixels * scale)]
    if scale > 1.0:
        image = TF.resize(image, size, antialias=True)
    picture = Image.fromarray(image.permute(1, 2, 0).cpu().numpy())
    draw = ImageDraw.Draw(picture)
    font = _font(max(size))
    if part_boxes is not None:
        part_boxes = part_boxes.detach().float().cpu() * scale
        colors = [PART_COLORS[index % len(PART_COLORS)] for index in range(len(part_boxes))]
        if candidate_boxes is not None:
            candidates = candidate_boxes.detach().float().cpu() * scale
            for color, boxes in zip(colors, candidates, strict=True):
                for box in boxes.tolist():
                    draw.rectangle(box, outline=color, width=1)
        for box, color in zip(part_boxes.tolist(), colors, strict=True):
            draw.rectangle(box, outline=color, width=width)
        # Labels after all boxes, so no box is drawn over a label.
        scores = None if part_scores is None else part_scores.detach().float().cpu().tolist()
        for index, (box, color) in enumerate(zip(part_boxes.tolist(), colors, strict=True)):
            label = str(index + 1) if scores is None else f"{index + 1}: {scores[index]:.2f}"
            _label(draw, label, box, color, font, picture.size)
    if caption:
        picture = _with_caption(picture, caption, font)
    return torch.from_numpy(np.asarray(picture).copy()).permute(2, 0, 1).contiguous()


def picture_grid(
    pictures: Sequence[torch.Tensor], columns: int | None = None, gap: int = 8
) -> torch.Tensor:
    """Lays ``uint8 [3, H_i, W_i]`` pictures out in rows of ``columns`` (default: up to four),
    top-left aligned in cells of the largest size, ``gap`` white pixels apart."""
    import torch

    if not pictures:
        raise ValueError("picture_grid needs at least one picture")
    columns = columns or min(len(pictures), 4)
    if columns < 1:
        raise ValueError(f"columns must be positive, got {columns}")
    rows = -(-len(pictures) // columns)
    cell_height = max(picture.shape[1] for picture in pictures)
    cell_width = max(picture.shape[2] for picture in pictures)
    grid = torch.full(
        (3, rows * cell_height + (rows - 1) * gap, columns * cell_width + (columns - 1) * gap),
        255,
        dtype=torch.uint8,
    )
    for index, picture in enumerate(pictures):
        top = (index // columns) * (cell_height + gap)
        left = (index % columns) * (cell_width + gap)
        grid[:, top : top + picture.shape[1], left : left + picture.shape[2]] = picture
    return grid


def write_picture(picture: torch.Tensor, path: str | os.PathLike) -> None:
    """Writes ``uint8 [3, H, W]`` in the format the file name's ending names
    (:data:`PICTURE_FORMATS`: PNG, or JPEG at quality 95)."""
    from PIL import Image

    suffix = os.path.splitext(os.fspath(path))[1].lower()
    if suffix not in PICTURE_FORMATS:
        raise ValueError(
            f"{path}: the file name must end in one of {', '.join(PICTURE_FORMATS)} "
            "(the format is chosen by the ending)"
        )
    image = Image.fromarray(picture.permute(1, 2, 0).contiguous().cpu().numpy())
    image.save(path, format=PICTURE_FORMATS[suffix], quality=95)


def _font(long_side: int):
    from PIL import ImageFont

    # 16 pixels at 512: readable on screen and in a document; PIL's bundled scalable font.
    return ImageFont.load_default(size=max(12, long_side // 32))


def _label(draw, text: str, box: list[float], color: str, font, canvas_size) -> None:
    """``text`` on a box of ``color`` at the part box's top-left corner, inside the picture."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    text_width, text_height = right - left + 6, bottom - top + 4
    x = min(max(box[0], 0), canvas_size[0] - text_width)
    y = min(max(box[1], 0), canvas_size[1] - text_height)
    draw.rectangle([x, y, x + text_width - 1, y + text_height - 1], fill=color)
    draw.text((x + 3 - left, y + 2 - top), text, fill="black", font=font)


def _with_caption(picture, lines: Sequence[str], font):
    from PIL import Image, ImageDraw

    measure = ImageDraw.Draw(picture)
    line_height = font.size + font.size // 3
    fitted = [_fit(measure, line, font, picture.width - 8) for line in lines]
    band = len(fitted) * line_height + 8
    framed = Image.new("RGB", (picture.width, picture.height + band), "white")
    framed.paste(picture, (0, band))
    draw = ImageDraw.Draw(framed)
    for number, line in enumerate(fitted):
        draw.text((4, 4 + number * line_height), line, fill="black", font=font)
    return framed


def _fit(draw, text: str, font, width: int) -> str:
    """``text``, shortened in the middle with an ellipsis where it is wider than ``width``."""
    if draw.textlength(text, font=font) <= width:
        return text
    keep = len(text)
    while keep > 1:
        keep -= 1
        head, tail = text[: (keep + 1) // 2], text[len(text) - keep // 2 :]
        shortened = f"{head}\u2026{tail}"
        if draw.textlength(shortened, font=font) <= width:
            return shortened
    return "\u2026"
