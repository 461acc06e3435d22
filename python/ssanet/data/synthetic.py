"""A small synthetic fine-grained dataset in the CUB-200-2011 layout.

Every image shows one bird-like figure (body, head, beak, wing, tail, legs) on a cluttered
background, at a random position, size, rotation and mirroring, with a random muted body
colour. Classes differ only in small, localized parts:

- the spot on the head: one of five saturated colours (:data:`HEAD_COLORS`);
- the tail: plain or with two light stripes (:data:`TAIL_PATTERNS`);
- the wing: plain, with a light spot, or with a light bar (:data:`WING_MARKS`).

Class ``c`` has head colour ``c % 5``, tail pattern ``(c // 5) % 2`` and wing mark ``c // 10``, so
up to 30 classes; with the default 10 the wing is plain for all and the head and tail decide.
Five part keypoints (:data:`PART_NAMES`) and the figure's box are written as CUB writes them,
so :class:`ssanet.data.CUBDataset` reads the result. The output depends only on the arguments:
image ``i`` is drawn from a random generator seeded with ``(seed, i)``.

Three presets (:data:`SYNTHETIC_PRESETS`, ``ssanet make-synthetic --preset``):

- ``"default"``: large figures (45-80 % of the image side) at any rotation, 128x128 images, 40
  per class. A quick smoke test of the pipeline; its figures fill the image, so a whole-image
  classifier sees the details as well as a part crop does.
- ``"fine"``: fine-grained in the paper's sense (CUB: a bird in the image, the marks that tell
  the species apart a small fraction of it). Each discriminative detail (the head spot, each
  tail stripe) covers under 0.5 % of the image area (:func:`detail_area_fraction`): a fraction
  of one cell of the backbone's stride-32 map, diluted among the whole image's features by
  the global average pooling, while a part crop around the head or the tail makes it a large
  share of the part's own map. The background holds ``distractors``: spots in the head
  colours and light bars as wide as the tail stripes, so the presence of a colour or a stripe
  anywhere in the image says nothing: only where it sits on the figure does. Figures are
  upright (mirrored left / right only), as a photographed bird is: the rotation protocol of
  Table 1 rotates test images only. 192x192 images with figures 0.3 to 0.45 of the side long
  (58-86 pixels), so that, as on CUB (a 448-pixel global view, 224-pixel part crops of a
  fraction of it), the parts see what the global view only half sees: the ``synthetic_fine``
  config crops 176x176 inputs and gives the backbone's global view a 64x64 copy, where the
  head spot is 3.6-5.3 pixels across (the antialiasing mixes its colour with the head's
  around it) and a tail stripe 1.3-1.9 pixels wide, and crops the parts from the 176-pixel
  input at 64 pixels, 1.7-2.7 times the global view's resolution (the head spot 6-14
  pixels across). So the plain network on the global view is good but limited, as the
  paper's ResNet-50 on CUB: in the ablation it tells the tails apart (a striped tail still
  reads lighter) on 95-98 % of the test images but the head colours on 66-71 % (red for
  magenta, blue for cyan). 100 images per class: 70 for training
  (of which the config holds out 30 % for validation: 490 training images) and 30 for
  testing; a run trains in minutes on one CPU core.
- ``"demo"``: the README's demo, easy on purpose: large upright figures (0.55-0.65 of the
  side long) near the centre (``center_range``), so the head spot and the tail stripes are
  always in view (in the ``synthetic_demo`` config's 64-pixel input the head spot is about
  7 pixels across), little clutter, no distractors; 68x68 images, 100 per class (70 for
  training). A plain ResNet-18 from random weights learns it in a few epochs on one core,
  where on the default preset's smaller, rotated figures it had not learned the head colours
  after 25 epochs (benchmarks/results/training_synthetic.md).
"""

from __future__ import annotations

import colorsys
import json
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

PART_NAMES = ("beak", "head", "wing", "tail", "belly")
HEAD_COLORS = {
    "red": (225, 35, 35),
    "yellow": (245, 215, 30),
    "cyan": (30, 205, 225),
    "magenta": (215, 50, 215),
    "blue": (35, 80, 235),
}
TAIL_PATTERNS = ("plain", "striped")
WING_MARKS = ("plain", "spotted", "barred")
MAX_CLASSES = len(HEAD_COLORS) * len(TAIL_PATTERNS) * len(WING_MARKS)
MARKER = "synthetic.json"
#: Keyword arguments of make_synthetic per preset (see the module docstring).
SYNTHETIC_PRESETS: dict[str, dict] = {
    "default": {},
    "fine": {
        "images_per_class": 100,
        "image_size": 192,
        "train_fraction": 0.7,
        "scale_range": (0.3, 0.45),
        "max_rotation": 0.0,
        "upright": True,
        "distractors": 4,
    },
    "demo": {
        "images_per_class": 100,
        "image_size": 68,
        "train_fraction": 0.7,
        "scale_range": (0.55, 0.65),
        "center_range": (0.45, 0.55),
        "max_rotation": 0.0,
        "upright": True,
        "clutter": 3,
    },
}
# The parts whose look differs between classes (the others are shared by all classes).
DISCRIMINATIVE_PARTS = ("head", "tail", "wing")
_SUPERSAMPLE = 2  # drawn at twice the size, then averaged down: smooth edges

# The figure in its own frame: x along the body towards the head, y down, unit = figure length.
_BODY = ((0.0, 0.0), (0.42, 0.22))  # ellipse centre, semi-axes
_HEAD = ((0.46, -0.12), 0.15)  # circle centre, radius
_HEAD_SPOT_RADIUS = 0.085
_BEAK = ((0.57, -0.19), (0.57, -0.05), (0.80, -0.12))
_TAIL = ((-0.36, -0.07), (-0.36, 0.07), (-0.74, 0.17), (-0.74, -0.17))
_TAIL_STRIPES = (-0.50, -0.64)  # x of each light stripe across the tail
_STRIPE_WIDTH = 0.06
_WING = ((-0.04, -0.03), (0.24, 0.11))
_WING_SPOT_RADIUS = 0.06
_WING_BAR_WIDTH = 0.08
_LEGS = (((0.04, 0.2), (0.0, 0.36)), ((-0.08, 0.2), (-0.12, 0.36)))
_KEYPOINTS = {  # PART_NAMES order
    "beak": (0.80, -0.12),
    "head": _HEAD[0],
    "wing": _WING[0],
    "tail": (-0.60, 0.0),
    "belly": (0.0, 0.16),
}


def class_attributes(label: int) -> tuple[str, str, str]:
    """(head colour, tail pattern, wing mark) of class ``label`` (0-based)."""
    if not 0 <= label < MAX_CLASSES:
        raise ValueError(f"label must be in 0..{MAX_CLASSES - 1}, got {label}")
    colors = list(HEAD_COLORS)
    return (
        colors[label % len(colors)],
        TAIL_PATTERNS[(label // len(colors)) % len(TAIL_PATTERNS)],
        WING_MARKS[label // (len(colors) * len(TAIL_PATTERNS))],
    )


def class_name(label: int) -> str:
    head, tail, wing = class_attributes(label)
    return f"{head}_head_{tail}_tail_{wing}_wing"


def make_synthetic(
    out_dir: str | os.PathLike,
    num_classes: int = 10,
    images_per_class: int = 40,
    image_size: int = 128,
    train_fraction: float = 0.5,
    seed: int = 0,
    scale_range: tuple[float, float] = (0.45, 0.8),
    max_rotation: float = 180.0,
    clutter: int = 6,
    overwrite: bool = False,
    upright: bool = False,
    distractors: int = 0,
    center_range: tuple[float, float] = (0.3, 0.7),
) -> Path:
    """Write the dataset to ``out_dir`` in the CUB-200-2011 layout and return its path.

    ``num_classes`` (1..30) classes of ``images_per_class`` images, ``image_size`` pixels square,
    the first ``round(train_fraction * images_per_class)`` of each class in the training split.
    The figure's length is ``scale_range`` times the image size, its rotation uniform in
    ``[-max_rotation, max_rotation]`` degrees; ``clutter`` muted shapes fill the background.
    ``center_range``: the figure's centre, uniform in it along each axis, in units of the
    image side. ``upright``: a mirrored figure is flipped left / right (facing the other way,
    legs down) rather than top / bottom. ``distractors``: small head-coloured spots and light
    bars drawn on the background, behind the figure (the ``"fine"`` preset's; see the module
    docstring).
    ``out_dir`` must be empty or absent, or, with ``overwrite``, a dataset written earlier by
    this function (which is then replaced). Defaults: 400 images of 128x128 (6.5 MB), written
    in a few seconds on one CPU core.
    """
    _check_options(
        num_classes, images_per_class, image_size, train_fraction, scale_range, distractors
    )
    if not 0.0 <= center_range[0] <= center_range[1] <= 1.0:
        raise ValueError(
            f"center_range must be (low, high) with 0 <= low <= high <= 1, got {center_range}"
        )
    out_dir = Path(out_dir)
    _prepare(out_dir, overwrite)

    parameters = {
        "num_classes": num_classes,
        "images_per_class": images_per_class,
        "image_size": image_size,
        "train_fraction": train_fraction,
        "seed": seed,
        "scale_range": list(scale_range),
        "max_rotation": max_rotation,
        "clutter": clutter,
    }
    # Written only when set: a default dataset's marker stays as it was.
    if upright:
        parameters["upright"] = True
    if distractors:
        parameters["distractors"] = distractors
    if tuple(center_range) != (0.3, 0.7):
        parameters["center_range"] = list(center_range)
    num_train = round(train_fraction * images_per_class)
    images, labels, splits, boxes, part_locs = [], [], [], [], []
    classes = [f"{label + 1:03d}.{class_name(label)}" for label in range(num_classes)]
    for label, folder in enumerate(classes):
        (out_dir / "images" / folder).mkdir(parents=True)
        for number in range(images_per_class):
            image_id = len(images) + 1
            rng = np.random.default_rng([seed, image_id])
            image, box, keypoints = _draw(rng, label, parameters)
            relative = f"{folder}/{class_name(label)}_{number + 1:04d}.jpg"
            image.save(out_dir / "images" / relative, quality=95, subsampling=0)
            images.append(f"{image_id} {relative}")
            labels.append(f"{image_id} {label + 1}")
            splits.append(f"{image_id} {int(number < num_train)}")
            x1, y1, x2, y2 = box
            boxes.append(f"{image_id} {x1:.1f} {y1:.1f} {x2 - x1:.1f} {y2 - y1:.1f}")
            for part_id, (x, y, visible) in enumerate(keypoints, start=1):
                part_locs.append(f"{image_id} {part_id} {x:.1f} {y:.1f} {visible}")

    _write_lines(out_dir / "images.txt", images)
    _write_lines(out_dir / "image_class_labels.txt", labels)
    _write_lines(out_dir / "train_test_split.txt", splits)
    _write_lines(out_dir / "classes.txt", [f"{i + 1} {name}" for i, name in enumerate(classes)])
    _write_lines(out_dir / "bounding_boxes.txt", boxes)
    (out_dir / "parts").mkdir()
    part_lines = [f"{part_id} {name}" for part_id, name in enumerate(PART_NAMES, start=1)]
    _write_lines(out_dir / "parts" / "parts.txt", part_lines)
    _write_lines(out_dir / "parts" / "part_locs.txt", part_locs)
    (out_dir / MARKER).write_text(json.dumps(parameters, indent=2) + "\n")
    return out_dir


def _check_options(
    num_classes: int,
    images_per_class: int,
    image_size: int,
    train_fraction: float,
    scale_range: tuple[float, float],
    distractors: int,
) -> None:
    if not 1 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"num_classes must be in 1..{MAX_CLASSES}, got {num_classes}")
    if images_per_class < 1:
        raise ValueError(f"images_per_class must be positive, got {images_per_class}")
    if image_size < 16:
        raise ValueError(f"image_size must be at least 16, got {image_size}")
    if not 0.0 <= train_fraction <= 1.0:
        raise ValueError(f"train_fraction must be in [0, 1], got {train_fraction}")
    if not 0.0 < scale_range[0] <= scale_range[1]:
        raise ValueError(f"scale_range must be (low, high) with 0 < low <= high, got {scale_range}")
    if distractors < 0:
        raise ValueError(f"distractors must be >= 0, got {distractors}")


def synthetic_preset(name: str, **overrides) -> dict:
    """The keyword arguments of :func:`make_synthetic` for preset ``name``, with
    ``overrides`` (those that are not None) applied."""
    if name not in SYNTHETIC_PRESETS:
        raise ValueError(f"preset must be one of {sorted(SYNTHETIC_PRESETS)}, got {name!r}")
    given = {key: value for key, value in overrides.items() if value is not None}
    return {**SYNTHETIC_PRESETS[name], **given}


def detail_area_fraction(label: int, length: float, image_size: int) -> dict[str, float]:
    """Area of each discriminative detail of class ``label`` over the image area, for a figure
    of ``length`` pixels in a ``image_size`` square image: ``{"head_spot", "tail_stripe",
    "wing_mark"}`` (one stripe; absent details are left out)."""
    _, tail_pattern, wing_mark = class_attributes(label)
    areas = {"head_spot": np.pi * _HEAD_SPOT_RADIUS**2}
    if tail_pattern == "striped":
        areas["tail_stripe"] = _polygon_area(
            _band(_TAIL_STRIPES[0], _STRIPE_WIDTH, _tail_half_height)
        )
    if wing_mark == "spotted":
        areas["wing_mark"] = np.pi * _WING_SPOT_RADIUS**2
    elif wing_mark == "barred":
        areas["wing_mark"] = _polygon_area(
            _band(_WING[0][0], _WING_BAR_WIDTH, _wing_half_height, _WING[0][1])
        )
    return {name: float(area * length**2 / image_size**2) for name, area in areas.items()}


def _polygon_area(points) -> float:
    x, y = np.asarray(points, dtype=np.float64).T
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def _prepare(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out_dir} is not empty (pass overwrite=True to replace it)")
        if not (out_dir / MARKER).is_file():
            raise FileExistsError(
                f"{out_dir} is not empty and holds no {MARKER}: not replacing what "
                "make_synthetic did not write"
            )
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)


def _write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines))


def _muted_color(rng: np.random.Generator, saturation: tuple[float, float]) -> tuple[int, ...]:
    red, green, blue = colorsys.hsv_to_rgb(
        rng.uniform(), rng.uniform(*saturation), rng.uniform(0.35, 0.85)
    )
    return tuple(int(255 * channel) for channel in (red, green, blue))


def _ellipse(center, axes, points: int = 48) -> np.ndarray:
    angles = np.linspace(0.0, 2.0 * np.pi, points, endpoint=False)
    return np.stack(
        [center[0] + axes[0] * np.cos(angles), center[1] + axes[1] * np.sin(angles)], axis=1
    )


def _background(rng: np.random.Generator, big: int, clutter: int) -> Image.Image:
    """A gradient between two muted colours, then `clutter` muted shapes, `big` pixels square."""
    start, end = (np.array(_muted_color(rng, (0.1, 0.4)), dtype=np.float32) for _ in range(2))
    direction = rng.uniform(0.0, 2.0 * np.pi)
    grid_y, grid_x = np.mgrid[0:big, 0:big].astype(np.float32) / big
    ramp = np.cos(direction) * grid_x + np.sin(direction) * grid_y
    ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6)
    background = start + ramp[..., None] * (end - start)
    image = Image.fromarray(background.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(clutter):
        center = rng.uniform(0, big, size=2)
        axes = rng.uniform(0.04, 0.14, size=2) * big
        points = _rotate(_ellipse((0, 0), axes, 24), rng.uniform(0, 2 * np.pi)) + center
        draw.polygon([tuple(p) for p in points], fill=_muted_color(rng, (0.1, 0.45)))
    return image


def _draw(rng: np.random.Generator, label: int, parameters: dict):
    """One image: (PIL image, box (x1, y1, x2, y2), [(x, y, visible)] per part)."""
    size = parameters["image_size"]
    big = size * _SUPERSAMPLE
    image = _background(rng, big, parameters["clutter"])
    draw = ImageDraw.Draw(image)

    # The figure's pose: length, rotation, mirroring, centre (in output pixels).
    length = rng.uniform(*parameters["scale_range"]) * size
    angle = np.deg2rad(rng.uniform(-parameters["max_rotation"], parameters["max_rotation"]))
    mirror = rng.uniform() < 0.5
    center = rng.uniform(*parameters.get("center_range", (0.3, 0.7)), size=2) * size
    if mirror and parameters.get("upright", False):
        angle += np.pi  # the top / bottom flip below, turned by 180 degrees: a left / right flip
    _draw_distractors(draw, rng, parameters.get("distractors", 0), length, big)

    def place(points) -> np.ndarray:
        points = np.asarray(points, dtype=np.float64).reshape(-1, 2) * length
        if mirror:
            points = points * np.array([1.0, -1.0])
        return _rotate(points, angle) + center

    body_color = np.array(_muted_color(rng, (0.15, 0.5)))
    dark, light = tuple(int(c) for c in body_color * 0.45), (240, 240, 228)
    head_color, tail_pattern, wing_mark = class_attributes(label)
    shapes = [  # (figure-frame polygon, fill), back to front
        (_TAIL, dark),
        (_ellipse(*_BODY), tuple(body_color)),
        (_ellipse(*_WING), tuple((body_color * 0.7).astype(int))),
        (_ellipse(_HEAD[0], (_HEAD[1], _HEAD[1])), tuple(body_color)),
        (_BEAK, (235, 150, 40)),
        (_ellipse(_HEAD[0], (_HEAD_SPOT_RADIUS, _HEAD_SPOT_RADIUS)), HEAD_COLORS[head_color]),
    ]
    if tail_pattern == "striped":
        shapes += [(_band(x, _STRIPE_WIDTH, _tail_half_height), light) for x in _TAIL_STRIPES]
    if wing_mark == "spotted":
        shapes.append((_ellipse(_WING[0], (_WING_SPOT_RADIUS, _WING_SPOT_RADIUS)), light))
    elif wing_mark == "barred":
        shapes.append((_band(_WING[0][0], _WING_BAR_WIDTH, _wing_half_height, _WING[0][1]), light))
    figure_points = []
    for polygon, fill in shapes:
        points = place(polygon)
        figure_points.append(points)
        draw.polygon([tuple(p) for p in points * _SUPERSAMPLE], fill=tuple(int(c) for c in fill))
    leg_width = max(1, round(0.025 * length * _SUPERSAMPLE))
    for leg in _LEGS:
        ends = place(leg)
        draw.line([tuple(p) for p in ends * _SUPERSAMPLE], fill=dark, width=leg_width)
        figure_points.append(ends)
    image = image.reduce(_SUPERSAMPLE)

    noisy = np.asarray(image, dtype=np.float32) + rng.normal(0.0, 6.0, size=(size, size, 3))
    image = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")

    outline = np.concatenate(figure_points)
    x1, y1 = np.clip(outline.min(axis=0), 0, size)
    x2, y2 = np.clip(outline.max(axis=0), 0, size)
    keypoints = []
    for name in PART_NAMES:
        x, y = place(_KEYPOINTS[name])[0]
        inside = 0 <= x < size and 0 <= y < size
        keypoints.append((x, y, 1) if inside else (0.0, 0.0, 0))  # CUB: hidden parts at (0, 0)
    return image, (x1, y1, x2, y2), keypoints


def _draw_distractors(
    draw: ImageDraw.ImageDraw, rng: np.random.Generator, count: int, length: float, big: int
) -> None:
    """``count`` background details as large as the figure's: spots in a random head colour
    and light bars as wide as a tail stripe, anywhere (the figure is drawn over them)."""
    colors = list(HEAD_COLORS.values())
    scale = length * _SUPERSAMPLE
    for _ in range(count):
        center = rng.uniform(0, big, size=2)
        if rng.uniform() < 0.5:
            radius = _HEAD_SPOT_RADIUS * scale
            points = _ellipse(center, (radius, radius), 24)
            fill = colors[rng.integers(len(colors))]
        else:
            half_width, half_height = _STRIPE_WIDTH * scale / 2, 0.12 * scale
            corners = np.array(
                [
                    (-half_width, -half_height),
                    (half_width, -half_height),
                    (half_width, half_height),
                    (-half_width, half_height),
                ]
            )
            points = _rotate(corners, rng.uniform(0, np.pi)) + center
            fill = (240, 240, 228)
        draw.polygon([tuple(p) for p in points], fill=fill)


def _tail_half_height(x: float) -> float:
    """Half the tail's height at ``x``: it widens linearly from its root to its tip."""
    (root_x, root_y), (tip_x, tip_y) = _TAIL[1], _TAIL[2]
    return root_y + (x - root_x) / (tip_x - root_x) * (tip_y - root_y)


def _wing_half_height(x: float) -> float:
    (center_x, _), (axis_x, axis_y) = _WING
    return axis_y * float(np.sqrt(max(0.0, 1.0 - ((x - center_x) / axis_x) ** 2)))


def _band(x: float, width: float, half_height, center_y: float = 0.0) -> tuple:
    """A band across a part, between ``x -+ width / 2``, inside the part's outline."""
    left, right = x - width / 2, x + width / 2
    return (
        (left, center_y - half_height(left)),
        (right, center_y - half_height(right)),
        (right, center_y + half_height(right)),
        (left, center_y + half_height(left)),
    )


def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    cos, sin = np.cos(angle), np.sin(angle)
    return points @ np.array([[cos, sin], [-sin, cos]])
