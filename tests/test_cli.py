"""The ``ssanet`` command line as a user meets it (run as a subprocess, as a user runs it), the
pictures ``predict --draw`` writes, and the README's commands.

The model is the README's example (ResNet-18, shared part features, 224x224 images) with
random weights: nothing here depends on what it predicts, only on how the command reports it.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shlex
import subprocess
import sys
import urllib.error
import warnings
from importlib import metadata
from pathlib import Path

import pytest
import torch

# The model layer needs torchvision, an optional dependency (the "train" extra): without it,
# or beside a torch it was not made for, this module is skipped, with ssanet's one-line reason.
# The imports below need it.
pytest.importorskip("ssanet._vision", exc_type=ImportError)

import numpy as np
import ssanet
import torchvision
from PIL import Image, ImageColor
from ssanet import cli, commands
from ssanet.data import make_synthetic
from ssanet.predict import MIN_LONG_SIDE, PART_COLORS
from torchvision.transforms.v2 import functional as TF

REPOSITORY = Path(__file__).resolve().parents[1]
README = REPOSITORY / "README.md"
IMAGE_SIZE = 224
CLASS_NAMES = ["red_bird", "yellow_bird", "cyan_bird"]


def ssanet_command() -> list[str]:
    """The ``ssanet`` script of this environment (what the README's commands call)."""
    script = Path(sys.executable).parent / "ssanet"
    return [str(script)] if script.exists() else [sys.executable, "-m", "ssanet.cli"]


def run(*arguments, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    # From cwd (a temporary folder): the repository's ssanet_ops/ folder must not shadow the
    # installed package.
    return subprocess.run(
        [*ssanet_command(), *map(str, arguments)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        timeout=300,
    )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = ssanet.SSANet(
        len(CLASS_NAMES), backbone="resnet18", weights=None, crop_from="shared"
    ).eval()
    path = tmp_path_factory.mktemp("model") / "model.pt"
    transform = {"resize": [IMAGE_SIZE, IMAGE_SIZE], "crop": None}
    ssanet.save_checkpoint(
        path, model, CLASS_NAMES, IMAGE_SIZE, dataset="synthetic", transform=transform
    )
    return path


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    # 3 classes x 2 images (one training, one test image each).
    root = tmp_path_factory.mktemp("synthetic") / "data"
    return make_synthetic(root, num_classes=3, images_per_class=2, image_size=64)


def sample_images(data_root: Path) -> list[Path]:
    return sorted((data_root / "images").rglob("*_0002.jpg"))


# Item 2: a user's mistake is one or two lines, exit status 2 -------------------------------


def not_a_pickle(folder: Path) -> Path:
    path = folder / "notes.pt"
    path.write_text("not a checkpoint\n")
    return path


def pickle_with_code(folder: Path) -> Path:
    # torch.load(weights_only=True) refuses it, and torch's message advises weights_only=False.
    path = folder / "pickled.pt"
    path.write_bytes(pickle.dumps({"model": Path("anything")}))
    return path


def truncated(folder: Path, checkpoint: Path) -> Path:
    path = folder / "truncated.pt"
    contents = checkpoint.read_bytes()
    path.write_bytes(contents[: len(contents) // 2])
    return path


def not_ssanet(folder: Path) -> Path:
    path = folder / "state_dict.pt"
    torch.save({"weights": torch.zeros(2)}, path)
    return path


def not_an_image(folder: Path) -> Path:
    path = folder / "photo.jpg"
    path.write_text("not an image\n")
    return path


def binary_config(folder: Path) -> Path:
    # A checkpoint given as the config: not UTF-8 text.
    path = folder / "corrupt.pt"
    path.write_bytes(pickle.dumps(list(range(300))))
    return path


def earlier_picture(folder: Path) -> Path:
    path = folder / "parts.png"
    path.write_bytes(b"an earlier picture")
    return path


def non_empty_folder(folder: Path) -> Path:
    (folder / "out").mkdir()
    (folder / "out" / "mine.txt").write_text("keep me\n")
    return folder / "out"


# (arguments built from (tmp_path, checkpoint, image), what the message must say)
MISTAKES = {
    "missing checkpoint": (
        lambda d, c, i: ["predict", "--checkpoint", d / "missing.pt", i],
        ["missing.pt does not exist"],
    ),
    "checkpoint folder": (
        lambda d, c, i: ["predict", "--checkpoint", d, i],
        ["is a folder: name the file"],
    ),
    "text file as checkpoint": (
        lambda d, c, i: ["predict", "--checkpoint", not_a_pickle(d), i],
        ["notes.pt is not an SSANet checkpoint"],
    ),
    "pickle as checkpoint": (
        lambda d, c, i: ["predict", "--checkpoint", pickle_with_code(d), i],
        ["pickled.pt is not an SSANet checkpoint"],
    ),
    "truncated checkpoint": (
        lambda d, c, i: ["predict", "--checkpoint", truncated(d, c), i],
        ["truncated.pt is not an SSANet checkpoint"],
    ),
    "another model's weights": (
        lambda d, c, i: ["predict", "--checkpoint", not_ssanet(d), i],
        ["state_dict.pt is not an SSANet checkpoint", "model_config"],
    ),
    "device that is no device": (
        lambda d, c, i: ["predict", "--checkpoint", c, i, "--device", "gpu"],
        ["argument --device", "cpu, cuda or cuda:N"],
    ),
    "missing image": (
        lambda d, c, i: ["predict", "--checkpoint", c, d / "missing.jpg"],
        ["missing.jpg does not exist"],
    ),
    "file that is not an image": (
        lambda d, c, i: ["predict", "--checkpoint", c, not_an_image(d)],
        ["photo.jpg is not an image"],
    ),
    "folder as an image": (
        lambda d, c, i: ["predict", "--checkpoint", c, d],
        ["argument IMAGE: ", "is a folder: name the file"],
    ),
    "picture of an earlier run": (
        lambda d, c, i: ["predict", "--checkpoint", c, i, "--draw", earlier_picture(d)],
        ["argument --draw", "parts.png exists", "--overwrite"],
    ),
    "unknown picture format": (
        lambda d, c, i: ["predict", "--checkpoint", c, i, "--draw", d / "parts.gif"],
        ["argument --draw", ".png, .jpg"],
    ),
    "top-0": (
        lambda d, c, i: ["predict", "--checkpoint", c, i, "--topk", "0"],
        ["argument --topk", "at least 1"],
    ),
    "eval without a checkpoint": (
        lambda d, c, i: ["eval", "--checkpoint", d / "missing.pt", "--data", d],
        ["missing.pt does not exist"],
    ),
    "eval on a missing dataset": (
        lambda d, c, i: ["eval", "--checkpoint", c, "--data", d / "nowhere", "--out", d / "e"],
        ["argument --data: folder", "nowhere does not exist"],
    ),
    "train on a missing dataset": (
        lambda d, c, i: ["train", "--config", "synthetic", "--data", d / "nowhere", "--out", d],
        ["argument --data: folder", "nowhere does not exist"],
    ),
    "train with a checkpoint as its config": (
        lambda d, c, i: ["train", "--config", binary_config(d), "--data", d, "--out", d / "r"],
        ["config file", "corrupt.pt is not a JSON text file"],
    ),
    "train with a crop that is no size": (
        lambda d, c, i: (
            ["train", "--config", "synthetic", "--data", d, "--out", d / "run"]
            + ["--set", "transform.crop=abc"]
        ),
        ["config 'transform.crop' must be a positive integer", "'abc'"],
    ),
    "train without --out": (
        lambda d, c, i: ["train", "--config", "synthetic", "--data", d],
        ["--out"],
    ),
    "train with an unknown config": (
        lambda d, c, i: ["train", "--config", "nope", "--data", d, "--out", d / "run"],
        ["config file nope does not exist", "synthetic"],
    ),
    "train with a bad override": (
        lambda d, c, i: (
            ["train", "--config", "synthetic", "--data", d, "--out", d / "run"]
            + ["--set", "batch_size"]
        ),
        ["KEY=VALUE"],
    ),
    "resume of nothing": (
        lambda d, c, i: ["train", "--resume", d / "nowhere"],
        ["cannot resume", "nowhere"],
    ),
    "make-synthetic into a used folder": (
        lambda d, c, i: ["make-synthetic", non_empty_folder(d)],
        ["out is not empty", "--overwrite"],
    ),
    "ablation of runs never evaluated": (
        lambda d, c, i: ["ablation", d / "run", "--out", d / "ablation"],
        ["ssanet eval --checkpoint"],
    ),
    "no command": (lambda d, c, i: [], ["COMMAND"]),
}


# The cases run as a user runs them; the others in this process (the same code from
# main() on, without a torch import per case).
AS_A_USER = {
    "missing checkpoint",
    "pickle as checkpoint",
    "make-synthetic into a used folder",
    "unknown picture format",
    "no command",
}


def run_in_process(arguments, capsys) -> subprocess.CompletedProcess:
    try:
        returncode = cli.main([str(argument) for argument in arguments])
    except SystemExit as exit:  # argparse's errors
        returncode = exit.code
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(arguments, returncode, captured.out, captured.err)


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_a_mistake_is_reported_in_a_line_or_two(mistake, tmp_path, checkpoint, data_root, capsys):
    make_arguments, expected = MISTAKES[mistake]
    arguments = make_arguments(tmp_path, checkpoint, sample_images(data_root)[0])
    if mistake in AS_A_USER:
        result = run(*arguments, cwd=tmp_path)
    else:
        result = run_in_process(arguments, capsys)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if not _torch_warning(line)]
    assert 1 <= len(lines) <= 2, result.stderr
    assert lines[0].startswith("ssanet"), result.stderr
    for text in expected:
        assert text in lines[0], result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    # torch's advice for a pickle it refuses must never reach the user: it would run the file.
    assert "weights_only=False" not in result.stderr


def _torch_warning(line: str) -> bool:
    # torch warns before refusing a pickle of another protocol; the error line follows it.
    return "UserWarning: Detected pickle protocol" in line or line.startswith("  return Unpickler")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_says_to_use_the_cpu(tmp_path, checkpoint, data_root, capsys):
    predict = ["predict", "--checkpoint", checkpoint, sample_images(data_root)[0]]
    for result in (
        run(*predict, "--device", "cuda", cwd=tmp_path),
        run_in_process(
            ["eval", "--checkpoint", checkpoint, "--data", data_root, "--device", "cuda:0"], capsys
        ),
    ):
        assert result.returncode == 2
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
        assert "argument --device" in result.stderr and "--device cpu" in result.stderr
        assert "map_location" not in result.stderr


def test_debug_shows_the_traceback(tmp_path, checkpoint):
    result = run(
        "predict", "--checkpoint", tmp_path / "missing.pt", "x.jpg", "--debug", cwd=tmp_path
    )
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "missing.pt does not exist" in result.stderr


def test_a_bug_is_one_line_with_exit_status_1_and_its_traceback_with_debug(
    monkeypatch, tmp_path, checkpoint, data_root, capsys
):
    # What the library does not raise for bad input (here a TypeError) is a bug: one line that
    # says so, a status other than a mistake's, and the traceback with --debug.
    def broken(*args, **kwargs):
        raise TypeError("a bug\nwith a second line")

    # The module: the attribute ssanet.predict is the function of that name.
    monkeypatch.setattr(sys.modules["ssanet.predict"], "load_images", broken)
    arguments = ["predict", "--checkpoint", checkpoint, sample_images(data_root)[0]]
    result = run_in_process(arguments, capsys)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("ssanet predict: unexpected error: TypeError: a bug (")
    assert "--debug" in result.stderr
    with pytest.raises(TypeError, match="a bug"):
        cli.main([*map(str, arguments), "--debug"])


def test_a_missing_package_and_memory_are_the_users_to_fix(
    monkeypatch, tmp_path, checkpoint, data_root, capsys
):
    # tqdm (the progress bar of eval) not installed: the extra that has it is named.
    monkeypatch.setitem(sys.modules, "tqdm", None)
    arguments = ["eval", "--checkpoint", checkpoint, "--data", data_root, "--out", tmp_path / "e"]
    result = run_in_process(arguments, capsys)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "tqdm" in result.stderr and "'train' extra" in result.stderr

    # Out of memory: torch's first line, and what to change.
    def too_large(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB\nstatistics")

    monkeypatch.setattr(sys.modules["ssanet.predict"], "load_images", too_large)
    result = run_in_process(
        ["predict", "--checkpoint", checkpoint, sample_images(data_root)[0]], capsys
    )
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "Tried to allocate 2 GiB (a smaller --batch-size" in result.stderr


def test_a_failed_weights_download_is_one_line(monkeypatch, tmp_path, data_root, capsys):
    # Offline (simulated: a machine with internet would download the weights), the message
    # says where to put the file, in one line: it was an 88-line traceback (issue 23).
    def offline(self, *args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.models.ResNet18_Weights, "get_state_dict", offline)
    arguments = ["train", "--config", "synthetic", "--data", data_root, "--out", tmp_path / "r"]
    result = run_in_process([*arguments, "--set", "model.weights=IMAGENET1K_V1", "--quiet"], capsys)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "could not download" in result.stderr
    assert re.search(r"--set model\.weights=/path/to/resnet18-[0-9a-f]+\.pth", result.stderr)


def test_a_checkpoint_without_its_dataset_names_the_flag(tmp_path, data_root, capsys):
    model = ssanet.SSANet(len(CLASS_NAMES), backbone="resnet18", weights=None)
    path = tmp_path / "anonymous.pt"
    ssanet.save_checkpoint(path, model, CLASS_NAMES, IMAGE_SIZE)
    result = run_in_process(["eval", "--checkpoint", path, "--data", data_root], capsys)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "does not say which dataset" in result.stderr and "--dataset" in result.stderr
    assert "dataset=" not in result.stderr.replace("dataset= in Python", "")


def test_a_missing_file_is_reported_before_torch_is_imported(tmp_path, checkpoint):
    # torch and torchvision take seconds to import: a mistake that needs neither is reported
    # without them.
    cases = [
        ["predict", "--checkpoint", str(tmp_path / "missing.pt"), "x.jpg"],
        ["predict", "--checkpoint", str(checkpoint), str(tmp_path / "missing.jpg")],
        ["eval", "--checkpoint", str(checkpoint), "--data", str(tmp_path / "nowhere")],
        ["train", "--config", "synthetic", "--data", str(tmp_path / "nowhere"), "--out", "r"],
    ]
    code = (
        "import sys\n"
        "from ssanet import cli\n"
        f"statuses = [cli.main(arguments) for arguments in {cases!r}]\n"
        "imported = [name for name in ('torch', 'torchvision') if name in sys.modules]\n"
        "print(statuses, imported)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=True
    )
    assert result.stdout.strip() == f"{[2] * len(cases)} []", result.stderr
    assert result.stderr.count("does not exist") == len(cases), result.stderr


# Item 3: --version, a fast --help, --overwrite ------------------------------------------------


def test_version(tmp_path):
    result = run("--version", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.strip() == f"ssanet {metadata.version('ssanet-ops')}"


def test_help_does_not_import_torch(tmp_path):
    # torch (seconds to import) loads after the arguments are parsed: --help and argument
    # mistakes answer at once.
    code = (
        "import sys\n"
        "from ssanet import cli\n"
        "for arguments in (['--help'], ['predict', '--help'], ['make-synthetic', '--help'], "
        "['train', '--help'], ['eval', '--help'], ['ablation', '--help'], "
        "['predict', '--checkpoint', 'x.pt', 'x.jpg', '--topk', '0']):\n"
        "    try:\n"
        "        cli.main(arguments)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(sorted(name for name in ('torch', 'torchvision', 'numpy', 'ssanet_ops') "
        "if name in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=True
    )
    assert result.stdout.splitlines()[-1] == "[]"
    assert "--max-stage-epochs" in result.stdout and "--overwrite" in result.stdout


def test_second_eval_refuses_to_overwrite(tmp_path, checkpoint, data_root, capsys):
    out = tmp_path / "eval"
    arguments = ["eval", "--checkpoint", checkpoint, "--data", data_root, "--out", out]
    arguments += ["--angles", "0", "--quiet"]
    first = run_in_process(arguments, capsys)
    assert first.returncode == 0, first.stderr
    results = (out / "results.json").read_text()
    assert json.loads(results)["accuracy"]["num_samples"] == 3

    second = run(*arguments, cwd=tmp_path)
    assert second.returncode == 2
    assert "--overwrite" in second.stderr and str(out / "results.json") in second.stderr
    assert (out / "results.json").read_text() == results

    third = run_in_process([*arguments, "--overwrite"], capsys)
    assert third.returncode == 0, third.stderr


def test_make_synthetic_overwrites_only_with_the_flag(tmp_path, capsys):
    out = tmp_path / "data"
    arguments = ["make-synthetic", out, "--num-classes", "2", "--images-per-class", "1"]
    assert run_in_process(arguments, capsys).returncode == 0
    again = run_in_process([*arguments, "--image-size", "32"], capsys)
    assert again.returncode == 2 and "--overwrite" in again.stderr
    replaced = run_in_process([*arguments, "--image-size", "32", "--overwrite"], capsys)
    assert replaced.returncode == 0, replaced.stderr
    assert json.loads((out / "synthetic.json").read_text())["image_size"] == 32


# A trial run: every stage capped ------------------------------------------------------------


def test_max_stage_epochs_caps_every_stage():
    config = ssanet.train.load_config("synthetic")
    capped = ssanet.train.load_config("synthetic", commands._stage_epoch_caps("synthetic", [], 2))
    stages = config["strategies"][config["strategy"]]
    capped_stages = capped["strategies"][config["strategy"]]
    assert any(stage["epochs"] > 2 for stage in stages)
    for stage, capped_stage in zip(stages, capped_stages, strict=True):
        assert capped_stage["epochs"] == min(stage["epochs"], 2)
        assert capped_stage["milestones"] == [m for m in stage["milestones"] if m < 2]
        rest = {key: value for key, value in stage.items() if key not in ("epochs", "milestones")}
        assert {key: capped_stage[key] for key in rest} == rest


def test_a_bad_trial_setting_is_named(tmp_path, data_root, capsys, monkeypatch):
    arguments = ["train", "--config", "synthetic", "--data", data_root, "--out", tmp_path / "r"]
    monkeypatch.setenv("SSANET_MAX_STAGE_EPOCHS", "one")
    result = run_in_process(arguments, capsys)
    assert result.returncode == 2 and "SSANET_MAX_STAGE_EPOCHS" in result.stderr
    resumed = run_in_process(
        ["train", "--resume", tmp_path / "r", "--max-stage-epochs", "1"], capsys
    )
    assert resumed.returncode == 2 and "--max-stage-epochs" in resumed.stderr
    assert not (tmp_path / "r").exists()


# Item 4: the pictures -------------------------------------------------------------------------


def read_picture(path: Path) -> torch.Tensor:
    """A picture file as ``uint8 [3, H, W]``, decoded with PIL."""
    with Image.open(path) as image:
        return torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)


def rgb(name: str) -> torch.Tensor:
    return torch.tensor(ImageColor.getrgb(name), dtype=torch.uint8)


def test_draw_parts_upscales_and_numbers_the_parts():
    torch.manual_seed(0)
    image = torch.full((3, 96, 96), 100, dtype=torch.uint8)  # grey: no part colour in it
    boxes = torch.tensor([[10.0, 20.0, 60.0, 80.0], [40.0, 5.0, 90.0, 45.0]])
    scores = torch.tensor([0.75, -1.5])
    picture = ssanet.draw_parts(image, boxes, part_scores=scores)
    scale = MIN_LONG_SIDE / 96
    assert picture.shape == (3, MIN_LONG_SIDE, MIN_LONG_SIDE) and picture.dtype == torch.uint8
    for index, box in enumerate(boxes * scale):
        x1, y1, x2, y2 = box.round().long().tolist()
        color = rgb(PART_COLORS[index])
        # The box's bottom edge and right edge, away from the labels, in the part's colour.
        assert torch.equal(picture[:, y2 - 1, (x1 + x2) // 2], color)
        assert torch.equal(picture[:, y2 - 10, x2 - 1], color)
        # The label at the top-left corner: the part's colour behind black text.
        corner = picture[:, y1 + 1 : y1 + 18, x1 + 1 : x1 + 40]
        assert (corner == color[:, None, None]).all(dim=0).float().mean() > 0.3
        assert (corner.amax(dim=0) < 60).any(), "no text in the label"
    # Far from every box, the upscaled image, untouched.
    assert (picture[:, 470:, :40] == 100).all()
    # The scores widen the labels: more pixels of each part's colour than numbers alone.
    numbers_only = ssanet.draw_parts(image, boxes)
    for index in range(len(boxes)):
        color = rgb(PART_COLORS[index])[:, None, None]
        with_score = (picture == color).all(dim=0).sum()
        assert with_score > (numbers_only == color).all(dim=0).sum() + 100


def test_draw_parts_writes_the_caption_above_the_image():
    image = (torch.rand(3, 120, 80) * 255).to(torch.uint8)
    plain = ssanet.draw_parts(image, None)
    upscaled = TF.resize(image, [MIN_LONG_SIDE, round(80 * MIN_LONG_SIDE / 120)], antialias=True)
    assert torch.equal(plain, upscaled)
    first = ssanet.draw_parts(image, None, caption=["a.jpg", "red_bird: 0.900"])
    second = ssanet.draw_parts(image, None, caption=["b.jpg", "red_bird: 0.900"])
    band = first.shape[1] - plain.shape[1]
    assert band > 0 and first.shape[2] == plain.shape[2]
    assert torch.equal(first[:, band:], plain) and torch.equal(second[:, band:], plain)
    assert not torch.equal(first[:, :band], second[:, :band])
    assert (first[:, :band] < 100).any() and (first[:, :band] == 255).float().mean() > 0.5
    # Already large: not resized.
    large = torch.zeros(3, 600, 700, dtype=torch.uint8)
    assert ssanet.draw_parts(large, None).shape == (3, 600, 700)


def test_picture_grid_lays_pictures_out_in_rows():
    pictures = [torch.full((3, 10 + i, 20), i, dtype=torch.uint8) for i in range(5)]
    grid = ssanet.picture_grid(pictures, columns=2, gap=3)
    assert grid.shape == (3, 3 * 14 + 2 * 3, 2 * 20 + 3)
    for index, picture in enumerate(pictures):
        top, left = (index // 2) * 17, (index % 2) * 23
        assert torch.equal(grid[:, top : top + picture.shape[1], left : left + 20], picture)
        assert (grid[:, top + picture.shape[1] : top + 14, left : left + 20] == 255).all()
    assert (grid[:, 2 * 17 :, 23:] == 255).all()  # the empty sixth cell


def test_predict_draws_one_labelled_panel_per_image(tmp_path, checkpoint, data_root):
    images = sample_images(data_root)
    out = tmp_path / "drawn" / "parts.png"
    command = ["predict", "--checkpoint", checkpoint, *images, "--draw", out, "--candidates"]
    result = run(*command, "--device", "cpu", "--topk", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[::3] == [str(path) for path in images]
    drawn = read_picture(out)

    # The same, in this process: each panel is captioned with its file name and the top class.
    loaded = ssanet.load_checkpoint(checkpoint)
    normalized, pixels = ssanet.load_images(images, IMAGE_SIZE)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the command (OMP_NUM_THREADS=1): the same sums
    try:
        prediction = ssanet.predict(loaded.model, normalized)
    finally:
        torch.set_num_threads(threads)
    panels = []
    for index, path in enumerate(images):
        label = prediction.classes[index, 0].item()
        probability = prediction.probabilities[index, 0].item()
        assert f"1. {probability:.4f}  {CLASS_NAMES[label]}" in result.stdout
        panels.append(
            ssanet.draw_parts(
                pixels[index],
                prediction.part_boxes[index],
                prediction.candidate_boxes[index],
                part_scores=prediction.part_scores[index],
                caption=[path.name, f"{CLASS_NAMES[label]}: {probability:.3f}"],
            )
        )
    assert len(panels) == 3 and panels[0].shape[2] == MIN_LONG_SIDE
    assert torch.equal(drawn, ssanet.picture_grid(panels))


def test_predict_writes_jpeg_for_jpg(tmp_path, checkpoint, data_root):
    out = tmp_path / "parts.jpg"
    command = ["predict", "--checkpoint", checkpoint, sample_images(data_root)[0], "--draw", out]
    assert run(*command, "--device", "cpu", cwd=tmp_path).returncode == 0
    assert out.read_bytes()[:3] == b"\xff\xd8\xff"  # the JPEG marker, not PNG's
    picture = read_picture(out)
    assert picture.shape[0] == 3 and picture.shape[2] == MIN_LONG_SIDE


def test_pictures_are_read_and_written_with_pil(tmp_path, data_root):
    # torchvision 0.29 deprecates its image decoding and encoding (a DeprecationWarning, an
    # error here), which the command used.
    images = sample_images(data_root)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        normalized, pixels = ssanet.load_images(images, 40)
        ssanet.write_picture(pixels[0], tmp_path / "first.png")
    for path, resized in zip(images, pixels, strict=True):
        expected = TF.resize(read_picture(path), [40, 40], antialias=True)
        assert torch.equal(resized, expected)
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    torch.testing.assert_close(normalized, (pixels / 255 - mean) / std)
    assert torch.equal(read_picture(tmp_path / "first.png"), pixels[0])  # PNG: lossless


def test_write_picture_refuses_unknown_endings(tmp_path):
    picture = torch.zeros(3, 4, 4, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"\.png, \.jpg, \.jpeg"):
        ssanet.write_picture(picture, tmp_path / "picture.bmp")
    ssanet.write_picture(picture, tmp_path / "picture.PNG")
    assert (tmp_path / "picture.PNG").read_bytes()[:4] == b"\x89PNG"


# Items 1 and 5: the README --------------------------------------------------------------------


def readme_script() -> list[str]:
    """The lines .ci/readme_commands runs (echo lines left out)."""
    result = subprocess.run(
        ["bash", str(REPOSITORY / ".ci" / "readme_commands"), "--print"],
        capture_output=True,
        text=True,
        check=True,
    )
    return [line for line in result.stdout.splitlines() if not line.startswith("echo ")]


def test_readme_activates_the_virtualenv_before_its_commands():
    # After the quick start, the first thing run is the activation that puts `ssanet` on PATH,
    # and the virtualenv of this test run has the script it names.
    commands = readme_script()
    assert commands[0] == "source .venv/bin/activate"
    assert any(line.startswith("ssanet train") for line in commands)
    assert any(line.startswith("ssanet predict") for line in commands)
    assert (Path(sys.executable).parent / "ssanet").is_file()


def test_readme_ssanet_commands_parse():
    # Every `ssanet ...` command of the README and the documentation's pages (those CI skips
    # too) is valid for this parser; a command continued over lines (a trailing backslash) is
    # read whole.
    pages = [README, *sorted((REPOSITORY / "docs").rglob("*.md"))]
    text = re.sub(r"\\\n\s*", " ", "\n".join(page.read_text() for page in pages))
    commands = re.findall(r"^(?:torchrun .*? -m ssanet\.cli|ssanet) (.*?)(?:\s+#.*)?$", text, re.M)
    assert len(commands) >= 8
    parser = cli.build_parser()
    for command in commands:
        args = parser.parse_args(shlex.split(command))
        assert args.run is not None, command


def test_readme_cites_no_missing_document():
    text = README.read_text()
    assert "SPEC.md" not in text  # not in the repository: the contract is docs/operators.md
    assert "docs/operators.md" in text
