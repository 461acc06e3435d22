"""Datasets, transforms, the synthetic generator and the evaluation metrics (python/ssanet).

Every loader reads a tiny folder written here in the dataset's official layout; results are
compared with what was written, decoded independently with PIL, or computed by direct loops.
"""

from __future__ import annotations

import filecmp
import math
from pathlib import Path

import numpy as np
import pytest
import torch

# The model layer needs torchvision, an optional dependency (the "train" extra): without it,
# or beside a torch it was not made for, this module is skipped, with ssanet's one-line reason.
# The imports below need it.
pytest.importorskip("ssanet._vision", exc_type=ImportError)

from PIL import Image
from ssanet import SSANetOutput, metrics, plots
from ssanet.config import load_config
from ssanet.data import (
    AircraftDataset,
    CarsDataset,
    CorruptFileError,
    CUBDataset,
    build_dataset,
    eval_transform,
    make_synthetic,
    paper_transform,
    reduced_input,
    synthetic_preset,
    train_transform,
)
from ssanet.data import synthetic as synthetic_module
from ssanet.data.transforms import Rotate
from ssanet.evaluate import evaluate_model

# CUB ----------------------------------------------------------------------------------------

# (class id, is training image, box (x, y, width, height), parts [(x, y, visible)])
CUB_IMAGES = [
    (1, 1, (10, 8, 30, 22), [(20, 15, 1), (60, 40, 1), (2, 30, 1), (0, 0, 0)]),
    (1, 0, (5, 5, 50, 40), [(30, 20, 1), (70, 10, 1), (4, 50, 1), (0, 0, 0)]),
    (2, 1, (40, 20, 30, 30), [(50, 30, 1), (10, 10, 0), (77, 55, 1), (0, 0, 0)]),
    (3, 1, (0, 0, 80, 60), [(40, 30, 1), (20, 50, 1), (79, 1, 1), (0, 0, 0)]),
    (3, 0, (12, 14, 20, 20), [(22, 24, 1), (65, 45, 1), (3, 3, 1), (0, 0, 0)]),
]
CUB_CLASSES = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
MARKER_COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]  # keypoints 1..3; 4 is never visible


def _cub_image(box, parts) -> Image.Image:
    """80x60 black image: the box in white, keypoint k as a 3x3 block of MARKER_COLORS[k]."""
    pixels = np.zeros((60, 80, 3), dtype=np.uint8)
    x, y, width, height = box
    pixels[y : y + height, x : x + width] = 255
    for (px, py, visible), color in zip(parts, MARKER_COLORS, strict=False):
        if visible:
            pixels[max(py - 1, 0) : py + 2, max(px - 1, 0) : px + 2] = color
    return Image.fromarray(pixels)


def write_cub(root: Path) -> Path:
    """A CUB-200-2011 folder (as the archive unpacks: root/CUB_200_2011/...) with 5 images."""
    cub = root / "CUB_200_2011"
    (cub / "parts").mkdir(parents=True)
    lines = {name: [] for name in ("images", "labels", "split", "boxes", "parts")}
    for image_id, (class_id, is_train, box, parts) in enumerate(CUB_IMAGES, start=1):
        relative = f"{CUB_CLASSES[class_id - 1]}/img_{image_id:04d}.png"
        (cub / "images" / relative).parent.mkdir(parents=True, exist_ok=True)
        _cub_image(box, parts).save(cub / "images" / relative)
        lines["images"].append(f"{image_id} {relative}")
        lines["labels"].append(f"{image_id} {class_id}")
        lines["split"].append(f"{image_id} {is_train}")
        lines["boxes"].append(f"{image_id} " + " ".join(f"{v:.1f}" for v in box))
        for part_id, (x, y, visible) in enumerate(parts, start=1):
            lines["parts"].append(f"{image_id} {part_id} {x:.1f} {y:.1f} {visible}")
    files = {
        "images.txt": lines["images"],
        "image_class_labels.txt": lines["labels"],
        "train_test_split.txt": lines["split"],
        "bounding_boxes.txt": lines["boxes"],
        "classes.txt": [f"{i} {name}" for i, name in enumerate(CUB_CLASSES, start=1)],
        "parts/part_locs.txt": lines["parts"],
        "parts/parts.txt": ["1 back", "2 beak", "3 belly", "4 left eye"],
    }
    for name, content in files.items():
        (cub / name).write_text("\n".join(content) + "\n")
    return cub


@pytest.fixture
def cub_root(tmp_path) -> Path:
    write_cub(tmp_path)
    return tmp_path


def test_cub_reads_the_official_layout(cub_root):
    train = CUBDataset(cub_root, "train", with_box=True, with_keypoints=True)
    test = CUBDataset(cub_root / "CUB_200_2011", "test")
    everything = CUBDataset(cub_root, "all")
    assert train.classes == ["Black_footed_Albatross", "Laysan_Albatross", "Sooty_Albatross"]
    assert train.part_names == ["back", "beak", "belly", "left eye"]
    assert train.image_ids == [1, 3, 4] and test.image_ids == [2, 5] and len(everything) == 5
    assert train.targets == [0, 1, 2] and test.targets == [0, 2]

    for index, image_id in enumerate(train.image_ids):
        class_id, _, (x, y, width, height), parts = CUB_IMAGES[image_id - 1]
        sample = train[index]
        expected = np.array(Image.open(train.image_paths[index]).convert("RGB"))
        assert torch.equal(sample["image"], torch.from_numpy(expected).permute(2, 0, 1))
        assert sample["label"] == class_id - 1 and sample["index"] == index
        torch.testing.assert_close(
            sample["box"], torch.tensor([x, y, x + width, y + height], dtype=torch.float32)
        )
        points = torch.tensor([[px, py] for px, py, _ in parts], dtype=torch.float32)
        torch.testing.assert_close(sample["keypoints"], points)
        assert sample["keypoints_visible"].tolist() == [bool(v) for *_, v in parts]
    assert set(test[0]) == {"image", "label", "index"}


def test_cub_boxes_are_clipped_to_the_image(cub_root):
    boxes = cub_root / "CUB_200_2011" / "bounding_boxes.txt"
    boxes.write_text(boxes.read_text().replace("4 0.0 0.0 80.0 60.0", "4 -3.0 -2.0 90.0 70.0"))
    dataset = CUBDataset(cub_root, "all", with_box=True)
    torch.testing.assert_close(dataset[3]["box"], torch.tensor([0.0, 0.0, 80.0, 60.0]))


def _found_box(image: torch.Tensor) -> torch.Tensor:
    """The white area's box (x1, y1, x2, y2), from the pixels."""
    white = (image > 0.6).all(dim=0)
    rows, columns = white.any(dim=1).nonzero(), white.any(dim=0).nonzero()
    return torch.stack([columns.min(), rows.min(), columns.max() + 1, rows.max() + 1]).float()


def _found_marker(image: torch.Tensor, color) -> tuple[float, float] | None:
    """Centre (x, y) of the pixels whose colour is closest to ``color`` (pixel indices)."""
    target = torch.tensor(color, dtype=torch.float32)[:, None, None] / 255
    near = (image - target).abs().amax(dim=0) < 0.35
    if near.sum() < 2:
        return None
    ys, xs = near.nonzero(as_tuple=True)
    return xs.float().mean().item(), ys.float().mean().item()


@pytest.mark.parametrize("train", [True, False])
def test_cub_transforms_move_boxes_and_keypoints_with_the_image(cub_root, train):
    # Resize by 1.5, crop to 72x72 (random or centred), flip at random: the box and keypoints the
    # dataset returns must match where the white box and the coloured markers ended up.
    if train:
        transform = train_transform(resize=(90, 120), crop=72, normalize=False)
    else:
        transform = eval_transform(resize=(90, 120), crop=72, normalize=False)
    dataset = CUBDataset(cub_root, "all", transform, with_box=True, with_keypoints=True)
    for seed in range(4):
        torch.manual_seed(seed)
        for index in range(len(dataset)):
            sample = dataset[index]
            image = sample["image"]
            assert image.shape == (3, 72, 72) and image.dtype == torch.float32
            torch.testing.assert_close(sample["box"], _found_box(image), atol=1.5, rtol=0)
            points, visible = sample["keypoints"], sample["keypoints_visible"]
            inside = (points >= 0).all(dim=1) & (points < 72).all(dim=1)
            annotated = torch.tensor([bool(v) for *_, v in CUB_IMAGES[index][3]])
            assert visible.tolist() == (inside & annotated).tolist()
            for k, color in enumerate(MARKER_COLORS):
                x, y = points[k].tolist()
                if annotated[k] and 2 <= x < 70 and 2 <= y < 70:
                    found = _found_marker(image, color)
                    assert found is not None, (index, k)
                    assert math.dist(found, (x, y)) < 1.5, (index, k, found, (x, y))
            if not train:  # the centre crop is fixed: check the arithmetic too
                x, y, width, height = CUB_IMAGES[index][2]
                expected = torch.tensor([x, y, x + width, y + height]) * 1.5 - torch.tensor(
                    [24.0, 9.0, 24.0, 9.0]
                )
                torch.testing.assert_close(sample["box"], expected.clamp(0, 72))
        if not train:
            break


CUB_FILES = [
    "images.txt",
    "image_class_labels.txt",
    "train_test_split.txt",
    "classes.txt",
    "bounding_boxes.txt",
    "parts/part_locs.txt",
]


@pytest.mark.parametrize("name", CUB_FILES)
def test_cub_missing_file_is_named(cub_root, name):
    (cub_root / "CUB_200_2011" / name).unlink()
    with pytest.raises(FileNotFoundError, match=name.replace("/", ".")):
        CUBDataset(cub_root, "train", with_box=True, with_keypoints=True)


def test_cub_corrupt_files_are_named(cub_root):
    cub = cub_root / "CUB_200_2011"
    labels = cub / "image_class_labels.txt"
    good = labels.read_text()
    labels.write_text(good.replace("2 1\n", "2 one\n"))
    with pytest.raises(CorruptFileError, match=r"image_class_labels.txt, line 2"):
        CUBDataset(cub_root)
    labels.write_text(good.replace("3 2\n", "3 9\n"))
    with pytest.raises(CorruptFileError, match=r"image_class_labels.txt.*class id 9"):
        CUBDataset(cub_root)
    labels.write_text(good)

    parts = cub / "parts" / "part_locs.txt"
    parts.write_text(parts.read_text() + "1 7 3.0 4.0 1\n")
    with pytest.raises(CorruptFileError, match=r"part_locs.txt, line 21: part id 7"):
        CUBDataset(cub_root, with_keypoints=True)

    dataset = CUBDataset(cub_root, "all")
    dataset.image_paths[0].unlink()
    with pytest.raises(FileNotFoundError, match=dataset.image_paths[0].name):
        dataset[0]
    dataset.image_paths[1].write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    with pytest.raises(CorruptFileError, match=dataset.image_paths[1].name):
        dataset[1]


# Synthetic ----------------------------------------------------------------------------------


def test_synthetic_dataset_loads_with_the_cub_class(tmp_path):
    out = make_synthetic(tmp_path / "syn", num_classes=4, images_per_class=3, image_size=96)
    train = CUBDataset(out, "train", with_box=True, with_keypoints=True)
    test = CUBDataset(out, "test", with_box=True, with_keypoints=True)
    assert len(train) == 4 * 2 and len(test) == 4 * 1  # round(0.5 * 3) = 2 per class train
    assert sorted(set(train.targets)) == [0, 1, 2, 3] == sorted(set(test.targets))
    assert train.classes == [synthetic_module.class_name(label) for label in range(4)]
    assert train.part_names == list(synthetic_module.PART_NAMES)

    palette = {name: np.array(color) for name, color in synthetic_module.HEAD_COLORS.items()}
    head = synthetic_module.PART_NAMES.index("head")
    for dataset in (train, test):
        for index in range(len(dataset)):
            sample = dataset[index]
            image, box = sample["image"], sample["box"]
            assert image.shape == (3, 96, 96)
            assert 0 <= box[0] < box[2] <= 96 and 0 <= box[1] < box[3] <= 96
            points = sample["keypoints"][sample["keypoints_visible"]]
            assert ((points >= box[:2] - 1) & (points <= box[2:] + 1)).all()
            # The class shows at its part: the head spot has the class's colour.
            if sample["keypoints_visible"][head]:
                x, y = sample["keypoints"][head].round().long().tolist()
                if 1 <= x < 95 and 1 <= y < 95:
                    spot = image[:, y - 1 : y + 2, x - 1 : x + 2].float().mean(dim=(1, 2))
                    nearest = min(palette, key=lambda n: np.abs(palette[n] - spot.numpy()).sum())
                    assert nearest == synthetic_module.class_attributes(sample["label"])[0]


def test_synthetic_is_deterministic(tmp_path):
    first = make_synthetic(tmp_path / "a", num_classes=2, images_per_class=2, image_size=48)
    second = make_synthetic(tmp_path / "b", num_classes=2, images_per_class=2, image_size=48)
    other = make_synthetic(tmp_path / "c", num_classes=2, images_per_class=2, image_size=48, seed=1)
    files = sorted(str(p.relative_to(first)) for p in first.rglob("*") if p.is_file())
    assert files == sorted(str(p.relative_to(second)) for p in second.rglob("*") if p.is_file())
    _, mismatch, errors = filecmp.cmpfiles(first, second, files, shallow=False)
    assert not mismatch and not errors
    images = [f for f in files if f.endswith(".jpg")]
    _, mismatch, _ = filecmp.cmpfiles(first, other, images, shallow=False)
    assert mismatch == images

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        make_synthetic(tmp_path / "d")
    with pytest.raises(FileExistsError, match="synthetic.json"):
        make_synthetic(tmp_path / "d", overwrite=True)
    again = make_synthetic(first, num_classes=1, images_per_class=1, overwrite=True)
    assert len(CUBDataset(again, "all")) == 1


def test_demo_preset_keeps_head_and_tail_in_the_demo_configs_view(tmp_path):
    # The demo (README, "Try it without data"): every image's head spot and tail stripes lie
    # inside the synthetic_demo config's evaluation crop, so no test image hides its class.
    options = synthetic_preset("demo", images_per_class=8)
    out = make_synthetic(tmp_path / "demo", **options)
    transform = load_config("synthetic_demo")["transform"]
    size, crop = options["image_size"], transform["crop"]
    assert transform["resize"] == [size, size]
    low, high = (size - crop) / 2, (size + crop) / 2
    # The keypoint is the head spot's centre; the spot's radius at the largest figure:
    spot_radius = synthetic_module._HEAD_SPOT_RADIUS * options["scale_range"][1] * size
    dataset = CUBDataset(out, "all", with_keypoints=True)
    head, tail = (synthetic_module.PART_NAMES.index(name) for name in ("head", "tail"))
    assert len(dataset) == 80
    for index in range(len(dataset)):
        sample = dataset[index]
        assert sample["keypoints_visible"][[head, tail]].all()
        head_xy, tail_xy = sample["keypoints"][head], sample["keypoints"][tail]
        assert ((head_xy - spot_radius >= low) & (head_xy + spot_radius <= high)).all(), index
        assert ((tail_xy >= low) & (tail_xy <= high)).all(), index


def test_build_dataset(tmp_path):
    out = make_synthetic(tmp_path / "syn", num_classes=2, images_per_class=2, image_size=32)
    train = build_dataset("synthetic", out, train=True, with_keypoints=True)
    test = build_dataset("cub", out, train=False)
    assert isinstance(train, CUBDataset) and train.split == "train" and test.split == "test"
    with pytest.raises(ValueError, match="with_keypoints"):
        build_dataset("cars", out, train=True, with_keypoints=True)
    with pytest.raises(ValueError, match="dataset must be one of"):
        build_dataset("imagenet", out, train=True)


# Stanford Cars ------------------------------------------------------------------------------

CARS_CLASSES = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Audi A4 2012"]
# split -> [(file name, class (1-based), box (x1, y1, x2, y2), 1-based pixels as in the devkit)]
CARS_ANNOTATIONS = {
    "train": [("00001.jpg", 3, (3, 4, 30, 20)), ("00002.jpg", 1, (1, 1, 40, 30))],
    "test": [
        ("00001.jpg", 2, (5, 6, 25, 28)),
        ("00002.jpg", 3, (2, 9, 33, 17)),
        ("00003.jpg", 1, (10, 2, 12, 30)),
    ],
}


def write_cars(root: Path) -> Path:
    import scipy.io

    base = root / "stanford_cars"
    (base / "devkit").mkdir(parents=True)
    names = np.array(CARS_CLASSES, dtype=object).reshape(1, -1)
    scipy.io.savemat(base / "devkit" / "cars_meta.mat", {"class_names": names})
    fields = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname"]
    rng = np.random.default_rng(0)
    for split, rows in CARS_ANNOTATIONS.items():
        (base / f"cars_{split}").mkdir()
        records = np.array(
            [(*box, label, name) for name, label, box in rows],
            dtype=[(field, "O") for field in fields],
        ).reshape(1, -1)
        mat = (
            base / "devkit" / "cars_train_annos.mat"
            if split == "train"
            else base / "cars_test_annos_withlabels.mat"
        )
        scipy.io.savemat(mat, {"annotations": records})
        for name, _, _ in rows:
            pixels = rng.integers(0, 256, size=(32, 41, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(base / f"cars_{split}" / name)
    return base


@pytest.mark.parametrize("split", ["train", "test"])
def test_cars_reads_the_devkit_layout(tmp_path, split):
    base = write_cars(tmp_path)
    dataset = CarsDataset(tmp_path, split, with_box=True)
    assert dataset.classes == CARS_CLASSES and len(dataset) == len(CARS_ANNOTATIONS[split])
    for index, (name, label, (x1, y1, x2, y2)) in enumerate(CARS_ANNOTATIONS[split]):
        sample = dataset[index]
        expected = np.array(Image.open(base / f"cars_{split}" / name).convert("RGB"))
        assert torch.equal(sample["image"], torch.from_numpy(expected).permute(2, 0, 1))
        assert sample["label"] == label - 1 == dataset.targets[index]
        torch.testing.assert_close(sample["box"], torch.tensor([x1 - 1.0, y1 - 1.0, x2, y2]))


def test_cars_missing_and_corrupt_files_are_named(tmp_path):
    base = write_cars(tmp_path)
    (base / "devkit" / "cars_meta.mat").rename(base / "devkit" / "meta.bak")
    with pytest.raises(FileNotFoundError, match="cars_meta.mat"):
        CarsDataset(tmp_path)
    (base / "devkit" / "meta.bak").rename(base / "devkit" / "cars_meta.mat")
    (base / "cars_test_annos_withlabels.mat").write_bytes(b"MATLAB 5.0 MAT-file, truncated")
    with pytest.raises(CorruptFileError, match="cars_test_annos_withlabels.mat"):
        CarsDataset(tmp_path, "test")
    (base / "cars_train" / "00002.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="00002.jpg"):
        CarsDataset(tmp_path, "train")[1]


# FGVC-Aircraft ------------------------------------------------------------------------------

AIRCRAFT_VARIANTS = ["707-320", "A300B4", "Cessna 172"]
# split -> [(image name, variant, box (xmin, ymin, xmax, ymax), 1-based pixels)]
AIRCRAFT_IMAGES = {
    "trainval": [("0034309", "A300B4", (2, 3, 30, 25)), ("1042824", "Cessna 172", (1, 5, 40, 40))],
    "test": [("0056978", "707-320", (4, 4, 20, 20))],
}
BANNER = (255, 0, 255)


def write_aircraft(root: Path) -> Path:
    data = root / "fgvc-aircraft-2013b" / "data"
    (data / "images").mkdir(parents=True)
    (data / "variants.txt").write_text("\n".join(AIRCRAFT_VARIANTS) + "\n")
    rng = np.random.default_rng(1)
    boxes = []
    for split, rows in AIRCRAFT_IMAGES.items():
        lines = [f"{name} {variant}" for name, variant, _ in rows]
        (data / f"images_variant_{split}.txt").write_text("\n".join(lines) + "\n")
        for name, _, box in rows:
            pixels = rng.integers(0, 200, size=(45, 42, 3), dtype=np.uint8)
            pixels[-20:] = BANNER  # the copyright banner
            Image.fromarray(pixels).save(data / "images" / f"{name}.jpg", quality=100)
            boxes.append(f"{name} " + " ".join(str(v) for v in box))
    (data / "images_box.txt").write_text("\n".join(boxes) + "\n")
    return data


@pytest.mark.parametrize("split", ["trainval", "test"])
def test_aircraft_reads_the_layout_and_crops_the_banner(tmp_path, split):
    data = write_aircraft(tmp_path)
    dataset = AircraftDataset(tmp_path, split, with_box=True)
    full = AircraftDataset(tmp_path, split, crop_banner=False)
    assert dataset.classes == AIRCRAFT_VARIANTS
    for index, (name, variant, (x1, y1, x2, y2)) in enumerate(AIRCRAFT_IMAGES[split]):
        sample = dataset[index]
        expected = np.array(Image.open(data / "images" / f"{name}.jpg").convert("RGB"))
        expected = torch.from_numpy(expected).permute(2, 0, 1)
        assert torch.equal(full[index]["image"], expected)
        assert torch.equal(sample["image"], expected[:, :25])  # 45 rows less the 20 of the banner
        banner = torch.tensor(BANNER)[:, None, None]
        assert ((sample["image"].int() - banner).abs().sum(dim=0) < 60).sum() == 0
        assert sample["label"] == AIRCRAFT_VARIANTS.index(variant) == dataset.targets[index]
        expected_box = torch.tensor([x1 - 1.0, y1 - 1.0, x2, min(y2, 25)])
        torch.testing.assert_close(sample["box"], expected_box)


def test_aircraft_missing_and_corrupt_files_are_named(tmp_path):
    data = write_aircraft(tmp_path)
    (data / "images_box.txt").unlink()
    AircraftDataset(tmp_path)  # boxes not asked for: not needed
    with pytest.raises(FileNotFoundError, match="images_box.txt"):
        AircraftDataset(tmp_path, with_box=True)
    labels = data / "images_variant_test.txt"
    labels.write_text("0056978 Concorde\n")
    with pytest.raises(CorruptFileError, match="images_variant_test.txt"):
        AircraftDataset(tmp_path, "test")
    labels.unlink()
    with pytest.raises(FileNotFoundError, match="images_variant_test.txt"):
        AircraftDataset(tmp_path, "test")


# Transforms ---------------------------------------------------------------------------------


def test_paper_transform_sizes():
    image = Image.fromarray(np.full((300, 500, 3), 128, dtype=np.uint8))
    for name, size in [("cub", 448), ("cars", 448), ("aircraft", 448), ("synthetic", 112)]:
        for train in (True, False):
            output = paper_transform(name, train)(image)
            assert output.shape == (3, size, size) and output.dtype == torch.float32
    # Normalized with the ImageNet statistics: a mid-grey image maps to (0.502 - mean) / std.
    output = paper_transform("cub", False)(image)
    expected = (128 / 255 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor(
        [0.229, 0.224, 0.225]
    )
    torch.testing.assert_close(output.mean(dim=(1, 2)), expected)
    shorter = eval_transform(resize=64, crop=None, normalize=False)(image)
    assert shorter.shape == (3, 64, 106)  # shorter side 64, aspect kept


def test_rotate_and_reduced_input_protocols():
    images = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(Rotate(90)(images), torch.rot90(images, 1, dims=(-2, -1)))
    torch.testing.assert_close(Rotate(180)(images[0]), torch.rot90(images[0], 2, dims=(-2, -1)))

    images = torch.rand(2, 3, 40, 40)
    reduced = reduced_input(size=30, canvas=45, fill=0.0)(images)
    assert reduced.shape == (2, 3, 45, 45)
    resized = torch.nn.functional.interpolate(
        images, size=(30, 30), mode="bilinear", antialias=True, align_corners=False
    )
    torch.testing.assert_close(reduced[..., 7:37, 7:37], resized)
    reduced[..., 7:37, 7:37] = 0
    assert reduced.abs().sum() == 0
    with pytest.raises(ValueError, match="fit inside"):
        reduced_input(size=500, canvas=448)


# Metrics ------------------------------------------------------------------------------------


def test_accuracies_against_loops():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 7, generator=generator)
    labels = torch.randint(0, 7, (50,), generator=generator)
    scores, truth = logits.numpy(), labels.numpy()
    for k in (1, 3, 5):
        hits = [truth[i] in np.argsort(-scores[i])[:k] for i in range(50)]
        assert metrics.topk_accuracy(logits, labels, k) == pytest.approx(np.mean(hits))
    assert metrics.topk_accuracy(logits[:, :3], labels.clamp(max=2), 5) == 1.0

    predictions = scores.argmax(axis=1)
    per_class = [np.mean(predictions[truth == c] == c) for c in range(7) if np.any(truth == c)]
    result = metrics.classification_metrics(logits, labels)
    assert result["mean_class_accuracy"] == pytest.approx(np.mean(per_class))
    assert result["top1"] == pytest.approx(np.mean(predictions == truth))
    assert result["num_samples"] == 50
    with pytest.raises(ValueError, match="labels must have 50"):
        metrics.classification_metrics(logits, labels[:3])


def test_proposal_keypoint_distance_against_loop():
    generator = torch.Generator().manual_seed(1)
    boxes = torch.rand(3, 4, 2, generator=generator) * 50
    boxes = torch.cat([boxes, boxes + torch.rand(3, 4, 2, generator=generator) * 30], dim=2)
    keypoints = torch.rand(3, 5, 2, generator=generator) * 80
    visible = torch.rand(3, 5, generator=generator) > 0.4
    visible[2] = False  # no visible keypoint: NaN, left out of the mean
    distances = metrics.proposal_keypoint_distance(boxes, keypoints, visible)
    for b in range(3):
        for k in range(4):
            x1, y1, x2, y2 = boxes[b, k].tolist()
            candidates = [
                math.dist(((x1 + x2) / 2, (y1 + y2) / 2), keypoints[b, p].tolist())
                for p in range(5)
                if visible[b, p]
            ]
            if candidates:
                assert distances[b, k].item() == pytest.approx(min(candidates), rel=1e-5)
            else:
                assert math.isnan(distances[b, k].item())
    torch.testing.assert_close(
        metrics.mean_proposal_keypoint_distance(boxes, keypoints, visible), distances[:2].mean(0)
    )


def test_robustness_protocols_with_a_linear_model():
    generator = torch.Generator().manual_seed(2)
    weight = torch.randn(3 * 16 * 16, 6, generator=generator)

    def predict(images):
        return images.flatten(1) @ weight

    class LinearModel(torch.nn.Module):
        # The outputs evaluate_model reads: only the final logits.
        def forward(self, images):
            return SSANetOutput(predict(images), *([None] * (len(SSANetOutput._fields) - 1)))

    images = torch.randn(20, 3, 16, 16, generator=generator)
    labels = torch.randint(0, 6, (20,), generator=generator)
    loader = [
        {"image": images[:12], "label": labels[:12]},
        {"image": images[12:], "label": labels[12:]},
    ]
    results = evaluate_model(
        LinearModel(), loader, image_size=16, angles=(0, 90, 180), reduced_size=10
    )
    by_angle = {float(angle): value for angle, value in results["rotation"].items()}
    for angle, turns in ((0, 0), (90, 1), (180, 2)):
        rotated = torch.rot90(images, turns, dims=(-2, -1))
        expected = metrics.classification_metrics(predict(rotated), labels)
        assert by_angle[float(angle)] == pytest.approx(expected)

    tables = results["reduced_input"]
    reduced = torch.nn.functional.interpolate(
        images, size=(10, 10), mode="bilinear", antialias=True
    )
    reduced = torch.nn.functional.pad(reduced, (3, 3, 3, 3))
    assert tables["original"] == pytest.approx(
        metrics.classification_metrics(predict(images), labels)
    )
    assert tables["reduced"] == pytest.approx(
        metrics.classification_metrics(predict(reduced), labels)
    )


def test_plots_write_png_files(tmp_path):
    paths = [
        plots.plot_training_curves(
            {"epoch": [1, 2, 3], "train_loss": [2.0, 1.5, 1.1], "val_top1": [0.2, 0.4, 0.5]},
            tmp_path / "curves.png",
        ),
        plots.plot_accuracy_bars({"ResNet-50": 0.845, "SSANet": 0.885}, tmp_path / "bars.png"),
        plots.plot_rotation_robustness(
            {"SSANet": {0.0: 0.88, 90.0: 0.66}, "baseline": {0.0: 0.84, 90.0: 0.57}},
            tmp_path / "rotation.png",
        ),
        plots.plot_keypoint_distance(
            {"SSANet": [10.0, 12.0, 9.0, 14.0], "NTS-Net": [15.0, 16.0, 12.0, 20.0]},
            tmp_path / "sub" / "distance.png",
        ),
    ]
    for path in paths:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width >= 300 and image.height >= 300
            # Something was drawn: not a blank canvas.
            assert len(np.unique(np.asarray(image.convert("L")))) > 10


def test_training_curves_mark_the_stages_and_keep_the_legend_off_the_curves():
    history = {
        "epoch": [1, 2, 3, 4, 5],
        "train_loss": [3.0, 2.5, 6.0, 5.0, 7.5],  # each stage sums its own terms: jumps
        "train_loss_final": [2.0, 1.8, 1.7, 1.5, 1.4],
        "train_top1": [0.2, 0.3, 0.35, 0.4, 0.5],
        "val_top1": [0.15, 0.25, 0.3, 0.35, 0.45],
    }
    stages = ["backbone", "backbone", "op", "op", "joint"]
    figure = plots.training_curves_figure(history, stages=stages)
    figure.canvas.draw()
    loss_axis, accuracy_axis = figure.axes
    curves = [
        line for axis in figure.axes for line in axis.get_lines() if line.get_label() in history
    ]
    assert sorted(line.get_label() for line in curves) == sorted(set(history) - {"epoch"})
    # No colour is used twice across the two axes.
    assert len({line.get_color() for line in curves}) == len(curves)
    # A line between consecutive stages, each stage named over its epochs.
    boundaries = [line.get_xdata()[0] for line in loss_axis.get_lines() if line not in curves]
    assert boundaries == [2.5, 4.5]
    (stage_axis,) = loss_axis.child_axes
    assert [label.get_text() for label in stage_axis.get_xticklabels()] == [
        "backbone",
        "op",
        "joint",
    ]
    assert list(stage_axis.get_xticks()) == [1.5, 3.5, 5.0]
    # The legend sits outside the axes.
    (legend,) = figure.legends
    assert not legend.get_window_extent().overlaps(loss_axis.get_window_extent())


def test_rotation_plot_starts_its_accuracy_axis_at_zero():
    figure = plots.rotation_robustness_figure({"SSANet": {0.0: 0.88, 45.0: 0.8, 90.0: 0.66}})
    assert figure.axes[0].get_ylim()[0] == 0.0
