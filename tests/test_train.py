"""Training and evaluation (python/ssanet/train.py, evaluate.py and their CLI commands).

Every run here is tiny (a few 64x64 synthetic images, ResNet-18 from random weights, one or two
epochs), so the file fits in a few minutes on two CPU cores. Results are checked against
direct computation: model states compared tensor by tensor, accuracies recomputed by loops over
the test set, distances by explicit geometry.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

# The model layer needs torchvision, an optional dependency (the "train" extra): without it,
# or beside a torch it was not made for, this module is skipped, with ssanet's one-line reason.
# The imports below need it.
pytest.importorskip("ssanet._vision", exc_type=ImportError)

from ssanet import SSANet, load_checkpoint
from ssanet.checkpoint import contents_checksum
from ssanet.cli import main as cli_main
from ssanet.data import (
    CUBDataset,
    build_dataset,
    eval_transform,
    make_synthetic,
    synthetic_preset,
)
from ssanet.evaluate import ablation_table, evaluate_checkpoint, method_label
from ssanet.train import (
    apply_override,
    load_config,
    resolve_stages,
    set_train_mode,
    stage_parameter_groups,
    train,
)
from ssanet.warm_start import init_from_checkpoint
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from .conftest import requires_cuda

NUM_CLASSES = 4
IMAGE_SIZE = 64
# Anchors for 64x64 inputs: a 2x2 map of stride 32 and a 1x1 map of stride 64.
TINY_ANCHORS = [
    {"stride": 32, "size": 16.0, "scales": [1.0, 1.5], "aspect_ratios": [1.0]},
    {"stride": 64, "size": 32.0, "scales": [1.0, 1.5], "aspect_ratios": [1.0]},
]
FULL_MODEL = {
    "backbone": "resnet18",
    "weights": None,
    "num_parts": 4,
    "num_scales": 5,
    "crop_from": "shared",
    "part_size": 64,  # 2x2 part maps: OP on a 2x2 grid of 1x1 patches
    "op_patch_size": 1,
    "op_grid_size": 2,
    "anchor_levels": TINY_ANCHORS,
}
PLAIN_MODEL = {"backbone": "resnet18", "weights": None, "proposals": False}


@pytest.fixture(autouse=True)
def _one_thread():
    # On a CPU shared with other jobs, one thread runs these small models several times faster
    # than two that wait for each other.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config(model: dict | None = None, epochs=(1, 1, 1), **changes) -> dict:
    """A three-stage config (and a joint one) sized for tests."""
    stage_modules = [
        (["backbone", "proposal_head", "part_classifier", "dsm"], ["dsm", "mac", "rank"]),
        (["op", "part_classifier"], ["op", "final", "mac"]),
        (["backbone", "proposal_head", "part_classifier"], "all"),
    ]
    config = {
        "dataset": "synthetic",
        "transform": {"resize": [IMAGE_SIZE + 8, IMAGE_SIZE + 8], "crop": IMAGE_SIZE},
        "model": dict(FULL_MODEL if model is None else model),
        "batch_size": 4,
        "workers": 0,
        "tensorboard": False,
        "strategies": {
            "three_stage": [
                {
                    "name": f"stage{index + 1}",
                    "epochs": count,
                    "lr": 0.01,
                    "milestones": [1],
                    "train": modules,
                    "losses": losses,
                    **(
                        {"lr_scale": {"part_classifier": 1 / 3}, "requires": ["op"]}
                        if index == 1
                        else {}
                    ),
                }
                for index, (count, (modules, losses)) in enumerate(
                    zip(epochs, stage_modules, strict=True)
                )
            ],
            "joint": [{"name": "joint", "epochs": 2, "lr": 0.01, "train": "all", "losses": "all"}],
        },
    }
    config.update(changes)
    return config


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    # 4 classes x 6 images of 72x72: 12 training and 12 test images.
    root = tmp_path_factory.mktemp("synthetic")
    return make_synthetic(root, NUM_CLASSES, images_per_class=6, image_size=IMAGE_SIZE + 8)


@pytest.fixture(scope="module")
def trained_run(data_root, tmp_path_factory) -> Path:
    """A finished three-stage run of the full model (1 epoch per stage)."""
    run_dir = tmp_path_factory.mktemp("runs") / "full"
    train(tiny_config(tensorboard=True), data_root, run_dir, progress=False)
    return run_dir


@pytest.fixture(scope="module")
def plain_run(data_root, tmp_path_factory) -> Path:
    """A finished joint run of the plain backbone (Table 3's first row)."""
    run_dir = tmp_path_factory.mktemp("runs") / "plain"
    config = tiny_config(PLAIN_MODEL, strategy="joint")
    config["strategies"]["joint"][0]["epochs"] = 1
    train(config, data_root, run_dir, progress=False)
    return run_dir


def read_log(run_dir: Path) -> list[dict]:
    with open(run_dir / "log.csv", newline="") as file:
        return list(csv.DictReader(file))


# Configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cub", "cars", "aircraft"])
def test_builtin_configs_have_the_papers_hyperparameters(name):
    config = load_config(name)
    # Section 4.1: momentum SGD, lr 0.001, x0.1 after 60 epochs (30 for Cars' OP stage),
    # weight decay 1e-4 (5e-4 on Aircraft), OP at 0.001 and its FC 3 times lower, lambda 0.5,
    # K = 4; S = 5 (section 3.2).
    dsm_stage, op_stage, part_stage = config["strategies"]["three_stage"]
    assert config["optimizer"]["momentum"] > 0
    assert config["optimizer"]["weight_decay"] == (5e-4 if name == "aircraft" else 1e-4)
    assert dsm_stage["lr"] == op_stage["lr"] == 0.001 and dsm_stage["milestones"] == [60]
    assert op_stage["milestones"] == ([30] if name == "cars" else [60])
    assert op_stage["lr_scale"]["part_classifier"] == pytest.approx(1 / 3)
    assert "dsm" in dsm_stage["train"] and "op" not in dsm_stage["train"]
    assert "backbone" not in op_stage["train"] and "dsm" not in op_stage["train"]
    assert "dsm" not in part_stage["train"] and "op" not in part_stage["train"]
    assert config["loss"]["mac_lambda"] == 0.5
    assert config["model"]["num_parts"] == 4 and config["model"]["num_scales"] == 5
    assert config["batch_size"] == 24
    assert [stage["train"] for stage in config["strategies"]["joint"]] == ["all"]


def test_fine_fast_config_is_synthetic_fine_with_three_changes():
    # synthetic_fine_fast (issue 22's study): the shared-map crops, the 19-epoch schedule and
    # the small anchors on a finer grid of centres; every other setting, and so the plain
    # network the study starts from, is synthetic_fine's.
    fine, fast = load_config("synthetic_fine"), load_config("synthetic_fine_fast")
    assert fast["model"]["crop_from"] == "shared" and fine["model"]["crop_from"] == "image"
    assert [stage["epochs"] for stage in fast["strategies"]["three_stage"]] == [14, 2, 3]
    assert [stage["epochs"] for stage in fine["strategies"]["three_stage"]] == [4, 1, 1]
    changed = ["_notes", "model.crop_from", "model.anchor_levels"]
    changed += [f"strategies.three_stage.{index}.epochs" for index in range(3)]
    for key in changed:
        *path, last = key.split(".")
        for config in (fine, fast):
            target = config
            for part in path:
                target = target[int(part)] if isinstance(target, list) else target[part]
            if isinstance(target, list):
                target[int(last)] = None
            else:
                target.pop(last)
    assert fast == fine


def test_fine_fast_anchors_never_hold_both_head_and_tail():
    # The design of synthetic_fine_fast's anchors (its notes): none is as wide as the head and
    # tail keypoints of the fine preset's figures are apart, so no proposal can hold both,
    # computed from the generator's figure (its keypoints in figure lengths, the smallest
    # length, upright figures) and the anchors the model makes on its 64-pixel view, scaled to
    # the 176-pixel input as the model scales its proposals.
    from ssanet.data import synthetic
    from ssanet.model.proposals import make_anchors

    config = load_config("synthetic_fine_fast")
    preset = synthetic.SYNTHETIC_PRESETS["fine"]
    assert preset["max_rotation"] == 0 and preset["upright"]
    head, tail = synthetic._KEYPOINTS["head"], synthetic._KEYPOINTS["tail"]
    shortest = preset["scale_range"][0] * preset["image_size"]
    apart_x = abs(head[0] - tail[0]) * shortest  # about 61 pixels
    model = SSANet(num_classes=10, **config["model"])
    view = config["model"]["global_size"]
    with torch.no_grad():
        _, map_sizes = model.proposal_head(
            model.backbone.forward_stride16(torch.zeros(1, 3, view, view))
        )
    anchors = make_anchors(model.anchor_levels, map_sizes, (view, view))
    widths = (anchors[:, 2] - anchors[:, 0]) * config["transform"]["crop"] / view
    assert widths.max() < apart_x
    # ...while synthetic_fine's anchors are wider than that (one crop could take both).
    fine = SSANet(num_classes=10, **load_config("synthetic_fine")["model"])
    fine_anchors = make_anchors(fine.anchor_levels, map_sizes, (view, view))
    assert (fine_anchors[:, 2] - fine_anchors[:, 0]).max() * 176 / view > apart_x


def test_demo_config_trains_on_the_demo_preset(tmp_path):
    # The README's demo, one epoch a stage: the plain network, then SSANet starting from it.
    root = make_synthetic(
        tmp_path / "data", **synthetic_preset("demo", num_classes=3, images_per_class=5)
    )
    one_epoch = [f"strategies.{name}.0.epochs=1" for name in ("plain", "three_stage")]
    plain = train(
        "synthetic_demo",
        root,
        tmp_path / "plain",
        overrides=["strategy=plain", "model.proposals=false", one_epoch[0]],
        progress=False,
    )
    summary = train(
        "synthetic_demo",
        root,
        tmp_path / "ssanet",
        overrides=[f"init_from={plain['best_checkpoint']}", one_epoch[1]],
        stop_after_epochs=1,
        progress=False,
    )
    # 4 of each class's 5 images train (train_fraction 0.7), of which the holdout keeps 1.
    rows = read_log(tmp_path / "ssanet")
    assert [(row["stage"], row["train_samples"]) for row in rows] == [("dsm", "9")]
    loaded = load_checkpoint(summary["best_checkpoint"])
    assert loaded.image_size == load_config("synthetic_demo")["transform"]["crop"]
    loaded.model.eval()
    with torch.no_grad():
        output = loaded.model(torch.rand(2, 3, loaded.image_size, loaded.image_size))
    assert output.logits.shape == (2, 3)
    assert output.part_boxes.shape == (2, 4, 4)


def test_overrides_and_config_errors(tmp_path):
    config = load_config(
        "synthetic",
        ["batch_size=3", "model.op=gap", "strategies.three_stage.0.epochs=2", "strategy=joint"],
    )
    assert config["batch_size"] == 3 and config["model"]["op"] == "gap"
    assert config["strategies"]["three_stage"][0]["epochs"] == 2 and config["strategy"] == "joint"
    with pytest.raises(ValueError, match="not an index"):
        apply_override({"a": [1]}, "a.3=0")
    with pytest.raises(ValueError, match="unknown config keys \\['batchsize'\\]"):
        load_config(tiny_config(batchsize=3))
    with pytest.raises(ValueError, match="strategies.three_stage.0.epochs"):
        load_config(tiny_config(epochs=(0, 1, 1)))
    missing = tmp_path / "nope.json"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        load_config(missing)
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(ValueError, match=str(broken)):
        load_config(broken)


def test_stages_freeze_the_other_modules():
    config = load_config(tiny_config())
    model = SSANet(NUM_CLASSES, **FULL_MODEL)
    stages = resolve_stages(config, model)
    assert [stage["name"] for stage in stages] == ["stage1", "stage2", "stage3"]
    groups = stage_parameter_groups(model, stages[1])
    assert {group["module"]: group["lr"] for group in groups} == pytest.approx(
        {"op": 0.01, "part_classifier": 0.01 / 3}
    )
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    expected = {
        name for name, _ in model.named_parameters() if name.startswith(("op.", "part_classifier."))
    }
    assert trainable == expected
    set_train_mode(model, stages[1])
    assert not model.backbone.training and model.op.training
    # A model without OP skips the OP stage; the plain backbone cannot train DSM-only stages.
    no_op = SSANet(NUM_CLASSES, **{**FULL_MODEL, "op": "none"})
    assert [stage["name"] for stage in resolve_stages(config, no_op)] == ["stage1", "stage3"]
    with pytest.raises(ValueError, match="strategy 'joint'"):
        resolve_stages(config, SSANet(NUM_CLASSES, **PLAIN_MODEL))


# Training -----------------------------------------------------------------------------------


def test_three_stages_train_what_they_name(trained_run):
    rows = read_log(trained_run)
    assert [(row["epoch"], row["stage"]) for row in rows] == [
        ("1", "stage1"),
        ("2", "stage2"),
        ("3", "stage3"),
    ]
    assert all(int(row["train_samples"]) == 12 for row in rows)
    # Each stage optimizes the terms it names: stage 1 has no OP loss in its total.
    first = rows[0]
    expected = sum(float(first[f"train_loss_{term}"]) for term in ("dsm", "mac", "rank"))
    assert float(first["train_loss"]) == pytest.approx(expected, rel=1e-5)
    assert (trained_run / "training_curves.png").stat().st_size > 0
    if importlib.util.find_spec("tensorboard") is not None:
        assert list((trained_run / "tensorboard").glob("events.out.tfevents.*"))
    contents = torch.load(trained_run / "last.pt", weights_only=True)
    assert contents["epoch"] == 3 and contents["training"]["stage_name"] == "stage3"
    loaded = load_checkpoint(trained_run / "best.pt")
    assert loaded.extra["dataset"] == "synthetic" and loaded.image_size == IMAGE_SIZE


def test_frozen_modules_do_not_change(data_root, tmp_path):
    run_dir = tmp_path / "run"
    config = tiny_config()
    train(config, data_root, run_dir, stop_after_epochs=1, progress=False)
    after_stage1 = torch.load(run_dir / "last.pt", weights_only=True)["model"]
    train(None, None, run_dir, resume=True, stop_after_epochs=1, progress=False)
    after_stage2 = torch.load(run_dir / "last.pt", weights_only=True)["model"]
    train(None, None, run_dir, resume=True, progress=False)
    after_stage3 = torch.load(run_dir / "last.pt", weights_only=True)["model"]

    def changed(before, after, prefix):
        keys = [key for key in before if key.startswith(prefix)]
        assert keys
        return any(not torch.equal(before[key], after[key]) for key in keys)

    # Stage 2 trains the OP module only (and the part classifier): backbone (batch-norm
    # statistics included), proposals and DSM stay as stage 1 left them.
    for prefix in ("backbone.", "proposal_head.", "dsm."):
        assert not changed(after_stage1, after_stage2, prefix), prefix
    assert changed(after_stage1, after_stage2, "op.")
    # Stage 3 keeps DSM and OP fixed and fine-tunes the part network.
    for prefix in ("dsm.", "op."):
        assert not changed(after_stage2, after_stage3, prefix), prefix
    assert changed(after_stage2, after_stage3, "backbone.")


def test_loss_falls(data_root, tmp_path):
    # The whole network (proposals, MAC, DSM, OP) trained jointly on the 12 training images.
    config = tiny_config(strategy="joint", batch_size=6, clip_grad_norm=5.0, validation="none")
    config["strategies"]["joint"][0].update(epochs=10, lr=0.01)
    config["transform"] = {"resize": [IMAGE_SIZE, IMAGE_SIZE], "crop": None}
    train(config, data_root, tmp_path / "run", progress=False)
    rows = read_log(tmp_path / "run")
    # The optimized sum (its ranking term is noisy) and the cross-entropy of the final logits,
    # over the last three epochs against the first.
    total = [float(row["train_loss"]) for row in rows]
    final = [float(row["train_loss_final"]) for row in rows]
    assert sum(total[-3:]) / 3 < 0.8 * total[0], total
    assert sum(final[-3:]) / 3 < 0.5 * final[0], final


def test_resume_continues_exactly(data_root, tmp_path):
    # Stage 1 of two epochs, then stage 2: stopped mid-stage and at the stage boundary.
    config = tiny_config(epochs=(2, 1, 1))
    straight, pieces = tmp_path / "straight", tmp_path / "pieces"
    train(config, data_root, straight, stop_after_epochs=3, progress=False)
    train(config, data_root, pieces, stop_after_epochs=1, progress=False)
    summary = train(None, None, pieces, resume=True, stop_after_epochs=1, progress=False)
    assert summary["epochs"] == 2 and summary["stopped"]
    train(config, None, pieces, resume=True, stop_after_epochs=1, progress=False)

    expected = torch.load(straight / "last.pt", weights_only=True)
    resumed = torch.load(pieces / "last.pt", weights_only=True)
    assert expected["epoch"] == resumed["epoch"] == 3
    assert expected["model"].keys() == resumed["model"].keys()
    for key, value in expected["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    for key in ("optimizer", "scheduler", "rng"):
        assert_equal_nested(expected["training"][key], resumed["training"][key])
    for row_a, row_b in zip(read_log(straight), read_log(pieces), strict=True):
        row_a.pop("epoch_time_s"), row_b.pop("epoch_time_s")
        assert row_a == row_b


def assert_equal_nested(a, b):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_equal_nested(a[key], b[key])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_equal_nested(x, y)
    else:
        assert a == b or (a != a and b != b)  # NaN equals NaN here


def test_gradient_accumulation_matches_a_larger_batch(data_root, tmp_path):
    # Only the classifier trains (the backbone is frozen, its batch norm in eval mode), so two
    # accumulated batches of 2 make the same step as one batch of 4.
    def run(name, batch_size, accumulation):
        config = tiny_config(PLAIN_MODEL, strategy="joint", batch_size=batch_size)
        config["accumulation_steps"] = accumulation
        config["strategies"]["joint"][0].update(epochs=1, train=["classifier"], lr=0.5)
        train(config, data_root, tmp_path / name, progress=False)
        return torch.load(tmp_path / name / "last.pt", weights_only=True)["model"]

    accumulated, large = run("accumulated", 2, 2), run("large", 4, 1)
    torch.manual_seed(0)  # the seed of the config: the weights training started from
    initial = SSANet(NUM_CLASSES, **PLAIN_MODEL).state_dict()
    torch.testing.assert_close(accumulated["classifier.weight"], large["classifier.weight"])
    assert not torch.allclose(accumulated["classifier.weight"], initial["classifier.weight"])


def test_gradient_clipping_bounds_the_step(data_root, tmp_path):
    # One SGD step without momentum or weight decay moves the weights by lr * gradient, whose
    # norm clip_grad_norm bounds.
    def step_norm(name, clip):
        config = tiny_config(PLAIN_MODEL, strategy="joint", batch_size=12, clip_grad_norm=clip)
        config["optimizer"] = {"momentum": 0.0, "weight_decay": 0.0}
        config["strategies"]["joint"][0].update(epochs=1, train=["classifier"], lr=1.0)
        train(config, data_root, tmp_path / name, progress=False)
        after = torch.load(tmp_path / name / "last.pt", weights_only=True)["model"]
        torch.manual_seed(0)  # the seed of the config: the weights training started from
        before = SSANet(NUM_CLASSES, **PLAIN_MODEL).state_dict()
        return math.sqrt(
            sum(
                (after[key] - before[key]).pow(2).sum().item()
                for key in ("classifier.weight", "classifier.bias")
            )
        )

    assert step_norm("clipped", 0.01) == pytest.approx(0.01, rel=1e-3)
    assert step_norm("free", None) > 0.02


def test_non_finite_loss_stops_the_run(data_root, tmp_path):
    config = tiny_config(PLAIN_MODEL, strategy="joint")
    config["strategies"]["joint"][0].update(epochs=1, lr=1e30)
    with pytest.raises(FloatingPointError, match="non-finite in epoch 1"):
        train(config, data_root, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "last.pt").exists()


def test_checkpoint_write_is_atomic(data_root, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    config = tiny_config(PLAIN_MODEL, strategy="joint")
    train(config, data_root, run_dir, stop_after_epochs=1, progress=False)
    before = (run_dir / "last.pt").read_bytes()

    def failing_save(contents, path, *args, **kwargs):
        Path(path).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr("ssanet.checkpoint.torch.save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        train(None, None, run_dir, resume=True, progress=False)
    assert (run_dir / "last.pt").read_bytes() == before
    assert sorted(path.name for path in run_dir.iterdir() if path.name.endswith(".tmp")) == []


def test_torchrun_two_processes(data_root, tmp_path):
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(tiny_config(PLAIN_MODEL, strategy="joint", batch_size=3)))
    run_dir = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "ssanet.cli",
        "train",
        "--config",
        str(config_path),
        "--data",
        str(data_root),
        "--out",
        str(run_dir),
        "--device",
        "cpu",
        "--quiet",
    ]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    # From tmp_path: the repository root's ssanet_ops/ folder must not shadow the installed one.
    result = subprocess.run(
        command, capture_output=True, text=True, env=environment, timeout=240, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_log(run_dir)
    # Each of the 2 processes trained on its half of the 12 images; the log sums them.
    assert [int(row["train_samples"]) for row in rows] == [12, 12]
    training = torch.load(run_dir / "last.pt", weights_only=True)["training"]
    assert training["world_size"] == 2 and len(training["rng"]) == 2
    # The processes shuffled with one seed but drew their own augmentations.
    assert not torch.equal(training["rng"][0]["torch"], training["rng"][1]["torch"])


@requires_cuda
def test_mixed_precision_on_cuda(data_root, tmp_path):
    config = tiny_config(amp="bf16")
    summary = train(config, data_root, tmp_path / "run", device="cuda", progress=False)
    assert summary["epochs"] == 3
    rows = read_log(tmp_path / "run")
    assert all(math.isfinite(float(row["train_loss"])) for row in rows)


# Evaluation ---------------------------------------------------------------------------------


def test_eval_protocols_match_direct_computation(trained_run, data_root, tmp_path):
    angles = [0.0, 90.0]
    results = evaluate_checkpoint(
        trained_run / "best.pt", data_root, tmp_path / "eval", angles=angles, progress=False
    )
    loaded = load_checkpoint(trained_run / "best.pt")
    transform = eval_transform((IMAGE_SIZE + 8, IMAGE_SIZE + 8), IMAGE_SIZE)
    test_set = build_dataset("synthetic", data_root, False, transform, with_keypoints=True)
    rows = {"original": [], "rotated": [], "reduced": []}
    labels, distances = [], []
    with torch.no_grad():
        for index in range(len(test_set)):
            sample = test_set[index]
            image = sample["image"][None]
            labels.append(sample["label"])
            output = loaded.model(image)
            rows["original"].append(output.logits[0])
            rows["rotated"].append(
                loaded.model(TF.rotate(image, 90.0, InterpolationMode.BILINEAR)).logits[0]
            )
            # Table 2: 300/448 of the side, centred on a zero (mean-colour) canvas.
            side = round(IMAGE_SIZE * 300 / 448)
            small = TF.resize(image, [side, side], antialias=True)
            left = (IMAGE_SIZE - side) // 2
            canvas = torch.zeros_like(image)
            canvas[..., left : left + side, left : left + side] = small
            rows["reduced"].append(loaded.model(canvas).logits[0])
            # Fig. 4: each proposal centre to the nearest visible keypoint.
            points = [
                point.tolist()
                for point, visible in zip(
                    sample["keypoints"], sample["keypoints_visible"], strict=True
                )
                if visible
            ]
            distances.append(
                [
                    min(math.dist(((x1 + x2) / 2, (y1 + y2) / 2), point) for point in points)
                    for x1, y1, x2, y2 in output.part_boxes[0].tolist()
                ]
            )

    def accuracy(logits, k):
        return sum(
            label in torch.topk(row, k).indices.tolist()
            for row, label in zip(logits, labels, strict=True)
        ) / len(labels)

    def mean_per_class(logits):
        per_class = {}
        for row, label in zip(logits, labels, strict=True):
            per_class.setdefault(label, []).append(int(row.argmax()) == label)
        return sum(sum(hits) / len(hits) for hits in per_class.values()) / len(per_class)

    assert results["accuracy"]["top1"] == pytest.approx(accuracy(rows["original"], 1))
    assert results["accuracy"]["top5"] == pytest.approx(accuracy(rows["original"], 4))
    assert results["accuracy"]["mean_class_accuracy"] == pytest.approx(
        mean_per_class(rows["original"])
    )
    assert set(results["rotation"]) == {"0.0", "90.0"}
    assert results["rotation"]["0.0"] == results["accuracy"]
    assert results["rotation"]["90.0"]["top1"] == pytest.approx(accuracy(rows["rotated"], 1))
    assert results["reduced_input"]["reduced"]["top1"] == pytest.approx(
        accuracy(rows["reduced"], 1)
    )
    expected = torch.tensor(distances).mean(dim=0)
    torch.testing.assert_close(torch.tensor(results["keypoint_distance"]["per_proposal"]), expected)
    assert set(results["heads"]) == {"dsm", "op"}
    written = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert written["accuracy"] == results["accuracy"]
    for name in ("rotation.png", "reduced_input.png", "keypoint_distance.png", "tables.md"):
        assert (tmp_path / "eval" / name).stat().st_size > 0
    assert "Table 1" in (tmp_path / "eval" / "tables.md").read_text()


def test_ablation_table(trained_run, plain_run, data_root, tmp_path):
    table = ablation_table(
        [trained_run, plain_run], tmp_path / "ablation", data_root, progress=False
    )
    assert [row["method"] for row in table["rows"]] == [
        "ResNet-18",
        "ResNet-18(P) + MAC + OP + DSM",
    ]
    for row, run in zip(table["rows"], (plain_run, trained_run), strict=True):
        evaluation = json.loads((run / "eval" / "results.json").read_text())
        assert row["top1"] == evaluation["accuracy"]["top1"]
    assert (tmp_path / "ablation" / "ablation.png").stat().st_size > 0
    assert "ResNet-18(P)" in (tmp_path / "ablation" / "ablation.md").read_text()
    assert method_label({**FULL_MODEL, "dsm": "none"}, {"loss": {"mac_lambda": 0}}) == (
        "ResNet-18(P) + OP"
    )


# Command line and errors --------------------------------------------------------------------


def test_cli_make_synthetic_train_eval(tmp_path, capsys):
    root = tmp_path / "data"
    assert (
        cli_main(
            [
                "make-synthetic",
                str(root),
                "--num-classes",
                "3",
                "--images-per-class",
                "4",
                "--image-size",
                "40",
            ]
        )
        == 0
    )
    assert len(CUBDataset(root, "test")) == 6
    config = tmp_path / "config.json"
    plain = tiny_config(PLAIN_MODEL, strategy="joint", transform={"resize": [40, 40], "crop": 32})
    config.write_text(json.dumps(plain))
    run_dir = tmp_path / "run"
    arguments = ["train", "--config", str(config), "--data", str(root), "--out", str(run_dir)]
    assert cli_main([*arguments, "--stop-after", "1", "--quiet"]) == 0
    assert cli_main(["train", "--resume", str(run_dir), "--quiet"]) == 0
    assert len(read_log(run_dir)) == 2
    capsys.readouterr()
    assert (
        cli_main(
            [
                "eval",
                "--checkpoint",
                str(run_dir / "best.pt"),
                "--data",
                str(root),
                "--angles",
                "0",
                "45",
                "--quiet",
            ]
        )
        == 0
    )
    assert "top-1" in capsys.readouterr().out
    assert (run_dir / "eval" / "results.json").is_file()


def test_missing_files_are_named(data_root, tmp_path):
    absent = tmp_path / "absent"
    with pytest.raises(FileNotFoundError, match=str(absent)):
        train(tiny_config(PLAIN_MODEL, strategy="joint"), absent, tmp_path / "run")
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "empty" / "config.json")):
        train(None, None, tmp_path / "empty", resume=True)
    (tmp_path / "no_checkpoint").mkdir()
    (tmp_path / "no_checkpoint" / "config.json").write_text(
        json.dumps({"config": tiny_config(), "data_root": str(data_root), "world_size": 1})
    )
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "no_checkpoint" / "last.pt")):
        train(None, None, tmp_path / "no_checkpoint", resume=True, progress=False)
    with pytest.raises(FileNotFoundError, match=str(absent / "best.pt")):
        evaluate_checkpoint(absent / "best.pt", data_root)
    with pytest.raises(FileNotFoundError, match=str(absent / "eval" / "results.json")):
        ablation_table([absent], tmp_path / "ablation")
    # An image removed from the data: the error names it.
    victim = next((data_root / "images").rglob("*.jpg"))
    saved = victim.read_bytes()
    victim.unlink()
    try:
        with pytest.raises(FileNotFoundError, match=victim.name):
            train(
                tiny_config(PLAIN_MODEL, strategy="joint"),
                data_root,
                tmp_path / "r2",
                progress=False,
            )
    finally:
        victim.write_bytes(saved)


def test_existing_run_is_not_overwritten(plain_run, data_root):
    with pytest.raises(FileExistsError, match="--resume"):
        train(tiny_config(PLAIN_MODEL, strategy="joint"), data_root, plain_run, progress=False)


def test_resume_refuses_a_different_config(plain_run):
    changed = tiny_config(PLAIN_MODEL, strategy="joint", batch_size=5)
    with pytest.raises(ValueError, match="batch_size"):
        train(changed, None, plain_run, resume=True, progress=False)


# Kills and damaged files --------------------------------------------------------------------

# Runs `ssanet train` (argv[3:]) and SIGKILLs it, at once, right after the argv[2]-th time it
# passes the boundary argv[1] of an epoch's end: "log row" (log.csv's row written),
# "temporary best.pt" / "temporary last.pt" (the checkpoint's temporary file written, not yet
# renamed), "renamed best.pt" / "renamed last.pt" (the checkpoint in place). The real code
# runs; the wrappers only count the calls.
KILL_DRIVER = """
import os, signal, sys
import torch
from ssanet import cli, run_log

boundary, occurrence, passed = sys.argv[1], int(sys.argv[2]), 0

def kill_after(function, boundary_of):
    def wrapper(*args, **kwargs):
        global passed
        result = function(*args, **kwargs)
        if boundary_of(*args) == boundary:
            passed += 1
            if passed == occurrence:
                os.kill(os.getpid(), signal.SIGKILL)
        return result
    return wrapper

def temporary(contents, path, *rest):
    name = os.path.basename(str(path))  # ".best.pt.<pid>.tmp"
    return "temporary " + name[1:].split(".tmp")[0].rsplit(".", 1)[0]

run_log.RunLog.epoch = kill_after(run_log.RunLog.epoch, lambda *args: "log row")
torch.save = kill_after(torch.save, temporary)
os.replace = kill_after(
    os.replace, lambda source, target, *rest: "renamed " + os.path.basename(str(target))
)
sys.exit(cli.main(sys.argv[3:]))
"""
KILL_RUN_EPOCHS = 2


def kill_run_config() -> dict:
    # Without validation every epoch is the best: best.pt is written at every epoch's end.
    config = tiny_config(PLAIN_MODEL, strategy="joint", validation="none")
    config["strategies"]["joint"][0]["epochs"] = KILL_RUN_EPOCHS
    return config


def run_train_cli(arguments: list, cwd: Path, kill_at: tuple[str, int]):
    """``ssanet train ARGUMENTS --threads 1 --quiet`` in a subprocess, killed at `kill_at`."""
    command = [sys.executable, "-c", KILL_DRIVER, *map(str, kill_at), "train", *map(str, arguments)]
    environment = {
        key: value for key, value in os.environ.items() if key != "SSANET_MAX_STAGE_EPOCHS"
    }
    # From cwd: the repository root's ssanet_ops/ folder must not shadow the installed one.
    return subprocess.run(
        [*command, "--threads", "1", "--quiet"],
        capture_output=True,
        text=True,
        env={**environment, "OMP_NUM_THREADS": "1"},
        timeout=300,
        cwd=cwd,
    )


def resume_cli(run_dir: Path, capsys) -> tuple[int, list[str]]:
    """``ssanet train --resume RUN_DIR`` in this process: exit status, stderr's lines."""
    capsys.readouterr()
    status = cli_main(["train", "--resume", str(run_dir), "--quiet"])
    return status, capsys.readouterr().err.splitlines()


# Each save boundary of an epoch's end, in turn: (boundary, its occurrence in the process). The
# first run dies in its first epoch, before any last.pt; its original command starts it again
# and dies in epoch 2 once its log row is written; each resume then redoes epoch 2 and dies one
# boundary further, the last one after last.pt is in place.
KILL_SEQUENCE = [
    ("temporary last.pt", 1),
    ("log row", KILL_RUN_EPOCHS),
    ("temporary best.pt", 1),
    ("renamed best.pt", 1),
    ("temporary last.pt", 1),
    ("renamed last.pt", 1),
]


@pytest.mark.slow
def test_a_kill_at_each_save_boundary_resumes_to_the_same_run(data_root, tmp_path, capsys):
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(kill_run_config()))
    uninterrupted, run_dir = tmp_path / "uninterrupted", tmp_path / "run"
    train(kill_run_config(), data_root, uninterrupted, progress=False)
    expected_rows = read_log(uninterrupted)
    for row in expected_rows:
        row.pop("epoch_time_s")

    original = ["--config", config_path, "--data", data_root, "--out", run_dir]
    for step, kill_at in enumerate(KILL_SEQUENCE):
        # What a user does after a kill: resume, or rerun the original command without last.pt.
        arguments = ["--resume", run_dir] if (run_dir / "last.pt").exists() else original
        killed = run_train_cli(arguments, tmp_path, kill_at)
        assert killed.returncode == -signal.SIGKILL, (kill_at, killed.stderr[-3000:])
        if step == 0:
            assert not (run_dir / "last.pt").exists()
            continue
        # What last.pt counts as done is in the log and in best.pt already.
        done = torch.load(run_dir / "last.pt", weights_only=True)["epoch"]
        rows = read_log(run_dir)[:done]
        for row in rows:
            row.pop("epoch_time_s")
        assert rows == expected_rows[:done], kill_at
        assert torch.load(run_dir / "best.pt", weights_only=True)["epoch"] >= done, kill_at
    assert resume_cli(run_dir, capsys)[0] == 0

    for name in ("last.pt", "best.pt"):
        expected = torch.load(uninterrupted / name, weights_only=True)
        actual = torch.load(run_dir / name, weights_only=True)
        assert actual["epoch"] == expected["epoch"] == KILL_RUN_EPOCHS, name
        assert_equal_nested(expected["model"], actual["model"])
        assert_equal_nested(expected.get("training"), actual.get("training"))
    rows = read_log(run_dir)
    for row in rows:
        row.pop("epoch_time_s")
    assert rows == expected_rows
    # The temporary files of the killed saves were removed.
    assert [path.name for path in run_dir.iterdir() if path.name.endswith(".tmp")] == []


@pytest.fixture(scope="module")
def stopped_run(data_root, tmp_path_factory) -> Path:
    """A joint run of the plain network stopped after the first of its two epochs."""
    run_dir = tmp_path_factory.mktemp("runs") / "stopped"
    train(kill_run_config(), data_root, run_dir, stop_after_epochs=1, progress=False)
    return run_dir


def copy_run(run_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / run_dir.name
    shutil.copytree(run_dir, copy)
    return copy


def test_leftover_temporary_files_are_removed(stopped_run, tmp_path, capsys):
    run_dir = copy_run(stopped_run, tmp_path)
    leftovers = [run_dir / ".last.pt.4242.tmp", run_dir / ".best.pt.4243.tmp"]
    for path in leftovers:
        path.write_bytes(b"half a checkpoint")
    assert resume_cli(run_dir, capsys)[0] == 0
    assert not any(path.exists() for path in leftovers)


def write_into_a_weight(path: Path, name: str) -> None:
    """Overwrites bytes in the middle of the stored values of the tensor `name` of the file."""
    weight = torch.load(path, weights_only=True)["model"][name]
    stored, data = path.read_bytes(), weight.contiguous().numpy().tobytes()
    start = stored.find(data)
    assert start >= 0 and stored.find(data, start + 1) < 0  # the tensor's bytes, once
    middle = start + len(data) // 2
    path.write_bytes(stored[:middle] + bytes(range(256)) * 4 + stored[middle + 1024 :])


@pytest.mark.parametrize("damage", ["truncated", "empty", "bytes in a weight"])
def test_a_damaged_last_checkpoint_is_named_on_resume(stopped_run, tmp_path, capsys, damage):
    run_dir = copy_run(stopped_run, tmp_path)
    last = run_dir / "last.pt"
    if damage == "truncated":
        last.write_bytes(last.read_bytes()[:100])
    elif damage == "empty":
        last.write_bytes(b"")
    else:
        write_into_a_weight(last, "classifier.weight")
        # torch.load reads it without complaint: only the checksum tells.
        torch.load(last, weights_only=True)
    status, lines = resume_cli(run_dir, capsys)
    assert status == 2 and len(lines) == 1, lines
    assert f"cannot resume: {last}" in lines[0]
    if damage == "bytes in a weight":
        assert "do not match the checksum recorded" in lines[0]
    # The way forward: best.pt (epoch 1) is intact.
    assert f"{run_dir / 'best.pt'} (epoch 1) is intact" in lines[0]


def test_checksums_catch_damage_and_spare_older_files(stopped_run, tmp_path, capsys):
    run_dir = copy_run(stopped_run, tmp_path)
    contents = torch.load(run_dir / "best.pt", weights_only=True)
    assert contents["checksum"] == contents_checksum(contents)
    # One value changed by the smallest step: another checksum.
    changed = {**contents, "model": dict(contents["model"])}
    weight = changed["model"]["classifier.weight"].clone()
    weight.view(-1)[0] = torch.nextafter(weight.view(-1)[0], torch.tensor(math.inf))
    changed["model"]["classifier.weight"] = weight
    assert contents_checksum(changed) != contents["checksum"]
    # Every reader of a checkpoint checks it.
    write_into_a_weight(run_dir / "best.pt", "classifier.weight")
    with pytest.raises(ValueError, match=f"{run_dir / 'best.pt'} is damaged"):
        load_checkpoint(run_dir / "best.pt")
    with pytest.raises(ValueError, match=f"init_from: {run_dir / 'best.pt'} is damaged"):
        init_from_checkpoint(SSANet(NUM_CLASSES, **PLAIN_MODEL), run_dir / "best.pt")
    # A last.pt written before checksums existed resumes.
    old = torch.load(run_dir / "last.pt", weights_only=True)
    del old["checksum"]
    torch.save(old, run_dir / "last.pt")
    assert resume_cli(run_dir, capsys)[0] == 0
    assert torch.load(run_dir / "last.pt", weights_only=True)["epoch"] == 2


def test_a_half_written_log_row_is_rewritten_on_resume(stopped_run, tmp_path, capsys):
    run_dir = copy_run(stopped_run, tmp_path)
    log = run_dir / "log.csv"
    complete = read_log(run_dir)
    text = log.read_text()
    last_row = text.rstrip("\r\n").rsplit("\n", 1)[1]
    log.write_text(text[: text.rindex(last_row) + len(last_row) // 2])  # a kill mid-write
    assert resume_cli(run_dir, capsys)[0] == 0
    rows = read_log(run_dir)
    assert [row["epoch"] for row in rows] == ["1", "2"]
    assert rows[0] == complete[0]


def test_sigterm_stops_training_cleanly(data_root, tmp_path):
    config_path = tmp_path / "config.json"
    config = kill_run_config()
    config["strategies"]["joint"][0]["epochs"] = 50  # still running when the signal comes
    config_path.write_text(json.dumps(config))
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "ssanet.cli", "train", "--config", str(config_path)]
    command += ["--data", str(data_root), "--out", str(run_dir), "--threads", "1", "--quiet"]
    process = subprocess.Popen(
        command,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        while not (run_dir / "log.csv").exists() and process.poll() is None:
            time.sleep(0.01)
        process.send_signal(signal.SIGTERM)
        stderr = process.communicate(timeout=120)[1]
    finally:
        process.kill()
    assert process.returncode == 130, stderr[-3000:]
    assert stderr.strip().splitlines() == ["ssanet train: interrupted"]
