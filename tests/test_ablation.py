"""The ablation study (``ssanet ablation --train``, :mod:`ssanet.ablation`): its plan, its
scheduler, one job as a worker process runs it, the report, and the command line."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch

# The model layer needs torchvision, an optional dependency (the "train" extra): without it
# this module is skipped. The imports below need it.
pytest.importorskip("ssanet._vision", exc_type=ImportError)

from ssanet import SSANet
from ssanet.ablation import plan, report, run_study
from ssanet.ablation.planning import JOB_FILE
from ssanet.ablation.reporting import _localization_section
from ssanet.ablation.scheduling import _JobScheduler, run_job
from ssanet.cli import main as cli_main
from ssanet.data import CUBDataset, eval_transform
from ssanet.evaluate import DEFAULT_ROTATION_ANGLES
from ssanet.train import load_config

from . import test_benchmark
from .test_train import FULL_MODEL, IMAGE_SIZE, PLAIN_MODEL, tiny_config

# test_benchmark's fixtures: one torch thread, the fine preset's small data.
_one_thread = test_benchmark._one_thread
fine_root = test_benchmark.fine_root


def test_plan_runs_seeds_and_starts_from_the_plain_run():
    config = load_config("synthetic_fine")
    jobs = plan(config, seeds=3)
    names = [job.name for job in jobs]
    assert names[:2] == ["plain-s0", "full-s0"]
    assert sorted(names) == sorted(
        [f"{row}-s{seed}" for row in ("plain", "full") for seed in range(3)]
        + [f"{row}-s0" for row in ("P", "P+MAC", "P+MAC+OP", "P+MAC+DSM", "full_other_features")]
    )
    for job in jobs:
        assert job.init_from == (None if job.row == "plain" else f"plain-s{job.seed}")
        assert f"seed={job.seed}" in job.overrides
    other = next(job for job in jobs if job.row == "full_other_features")
    assert "model.crop_from=shared" in other.overrides
    p_row = next(job for job in jobs if job.row == "P")
    config_p = load_config(config, p_row.overrides)
    assert config_p["loss"]["mac_lambda"] == 0
    assert config_p["model"]["dsm"] == config_p["model"]["op"] == "none"


def _next_job_within(scheduler, seconds=10.0):
    """The scheduler's next job, failing (not hanging) if it waits for one that never comes."""
    taken = {}
    thread = threading.Thread(target=lambda: taken.update(job=scheduler.next_job()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "next_job waits for a plain run that nothing will run"
    return taken["job"]


@pytest.mark.parametrize("plain_done", [True, False])
def test_only_some_rows_start_from_the_plain_run_done_earlier(tmp_path, plain_done):
    # `ssanet ablation --only P` in the work folder of an earlier study: the P row starts from
    # that study's plain-s0 when it finished (it used to wait for it forever), and is skipped
    # with a reason when it did not.
    todo = [job for job in plan(load_config("synthetic_fine"), seeds=1) if job.row == "P"]
    if plain_done:
        (tmp_path / "plain-s0").mkdir()
        (tmp_path / "plain-s0" / JOB_FILE).write_text("{}")
    scheduler = _JobScheduler(todo, {}, tmp_path / "base.json", tmp_path, tmp_path, tmp_path, 1)
    job = _next_job_within(scheduler)
    if plain_done:
        assert job.name == "P-s0" and scheduler.running == {"P-s0"}
    else:
        assert job is None and scheduler.failed == {"P-s0"}


@pytest.mark.slow
def test_run_job_trains_evaluates_and_records(fine_root, tmp_path):
    # One job as the study runs it (in this process): trained, evaluated on the test split
    # with Table 1's angles (a seeded row), recorded in job.json. Before, run_job imported the
    # rotation angles from a module that no longer had them: every job failed at once.
    config = tiny_config(PLAIN_MODEL, strategy="joint", validation="none")
    config["strategies"]["joint"][0]["epochs"] = 1
    (tmp_path / "config.json").write_text(json.dumps(config))
    spec = {
        "name": "plain-s0",
        "row": "plain",
        "seed": 0,
        "overrides": ["seed=0"],
        "init_from": None,
        "config": str(tmp_path / "config.json"),
        "data": str(fine_root),
        "run_dir": str(tmp_path / "plain-s0"),
        "threads": 1,
    }
    record = run_job(spec)
    assert json.loads((tmp_path / "plain-s0" / "job.json").read_text()) == record
    assert record["epochs"] == 1 and record["localization"] is None
    # The training's CPU time, measured in this process: positive and, with one torch thread
    # and no loader workers, not above its wall-clock time (plus the clocks' resolution).
    assert 0 < record["train_cpu_seconds"] <= record["train_seconds"] * 1.05 + 0.5
    assert sorted(float(angle) for angle in record["rotation"]) == sorted(DEFAULT_ROTATION_ANGLES)
    # The recorded top-1 is that of the selected model on the test split, counted here.
    best = torch.load(tmp_path / "plain-s0" / "best.pt", weights_only=True)
    model = SSANet.from_config(best["model_config"])
    model.load_state_dict(best["model"])
    model.eval()
    transform = eval_transform((IMAGE_SIZE + 8, IMAGE_SIZE + 8), IMAGE_SIZE)
    test_set = CUBDataset(fine_root, "test", transform)
    with torch.no_grad():
        correct = sum(
            model(test_set[i]["image"][None]).logits.argmax().item() == test_set.targets[i]
            for i in range(len(test_set))
        )
    assert record["accuracy"]["top1"] == pytest.approx(correct / len(test_set))


@pytest.mark.slow
def test_study_writes_its_report_and_resumes(fine_root, tmp_path):
    # `ssanet ablation --train` end to end on the plain row (one epoch), its job in a process
    # of its own: the report and its plots are written; run again, the finished run is kept
    # (not trained again); with its job.json gone (interrupted after training), the run resumes
    # from its last.pt and the report is the same.
    config = tiny_config(FULL_MODEL, validation="none")
    config["strategies"]["plain"] = [
        {"name": "plain", "epochs": 1, "lr": 0.01, "train": "all", "losses": "all"}
    ]
    (tmp_path / "config.json").write_text(json.dumps(config))
    out, work = tmp_path / "out", tmp_path / "work"

    def study() -> dict:
        return run_study(
            str(tmp_path / "config.json"), fine_root, out, work, seeds=1, jobs=1, only=["plain"]
        )

    first = study()
    assert [row["row"] for row in first["rows"]] == ["plain"]
    for name in ("ablation.md", "ablation.json", "ablation.png", "rotation.png"):
        assert (out / name).stat().st_size > 0
    assert (work / "localization_floor.json").is_file()  # the base config has proposals
    record = work / "plain-s0" / JOB_FILE
    written = record.stat().st_mtime_ns
    assert study()["rows"] == first["rows"]
    assert record.stat().st_mtime_ns == written
    record.unlink()
    resumed = study()
    assert json.loads(record.read_text())["resumed"] is True
    # A resumed run's CPU time is not this process's alone: not recorded, not made up.
    assert json.loads(record.read_text())["train_cpu_seconds"] is None
    assert first["runs"]["plain-s0"]["train_cpu_seconds"] > 0
    assert [row["top1"] for row in resumed["rows"]] == [row["top1"] for row in first["rows"]]


def test_fig4_table_names_the_other_crop_mode():
    # The full model and its other crop mode share a method label; Fig. 4's table tells
    # their rows apart by the override (before, both read "..., seed 0").
    located = {"parts": ["head"], "unit": "pixels", "proposal_mean": 1.0, "random_mean": 2.0}
    located |= {"ratio": 0.5, "proposal_per_index": [1.0]}
    base = {"seed": 0, "label": "ResNet-18(P) + MAC + OP + DSM", "localization": located}
    by_row = {
        "full": [{**base, "row": "full", "overrides": ["seed=0"]}],
        "full_other_features": [
            {**base, "row": "full_other_features", "overrides": ["model.crop_from=shared"]}
        ],
    }
    rows = [line for line in _localization_section(by_row) if line.startswith("| ResNet")]
    assert rows[0].startswith("| ResNet-18(P) + MAC + OP + DSM, seed 0 |")
    assert rows[1].startswith("| ResNet-18(P) + MAC + OP + DSM (crop_from=shared), seed 0 |")
    # The ideal head's row (localization_floor), when the study measured it, comes last.
    floor = {**located, "proposal_mean": 0.6, "ratio": 0.3, "proposal_per_index": [0.6]}
    rows = [line for line in _localization_section(by_row, floor) if line.startswith("| ")]
    assert rows[-1] == "| ideal proposal head (the anchors' floor) | 0.60 | 2.00 | 0.30 | 0.6 |"


def test_report_tabulates_seeds(tmp_path):
    # Finished runs as run_job records them: the table's mean and sample standard deviation
    # are those of numpy, the rows in Table 3's order, the rotation drop per run averaged.
    work, out = tmp_path / "work", tmp_path / "out"
    config = load_config("synthetic_fine")
    jobs = [job for job in plan(config, seeds=3) if job.row in ("plain", "full")]
    accuracy = {"plain": [0.2, 0.3, 0.25], "full": [0.4, 0.35, 0.5]}
    for job in jobs:
        top1 = accuracy[job.row][job.seed]
        record = {
            "name": job.name,
            "row": job.row,
            "seed": job.seed,
            "overrides": job.overrides,
            "train_seconds": 100.0 + job.seed,
            # Seed 2's record has no CPU time (a resumed run, or written before it was kept).
            **({} if job.seed == 2 else {"train_cpu_seconds": 90.4 + job.seed}),
            "best_epoch": 3,
            "epochs": 7,
            "label": "plain" if job.row == "plain" else "full",
            "accuracy": {"top1": top1, "top5": 0.9},
            "heads": {},
            "rotation": {"0.0": {"top1": top1}, "90.0": {"top1": top1 / 2}},
            "reduced_input": {
                "original": {"top1": top1},
                "reduced": {"top1": top1 - 0.1},
                "size": 48,
                "canvas": 72,
            },
            "localization": None,
        }
        (work / job.name).mkdir(parents=True)
        (work / job.name / "job.json").write_text(json.dumps(record))
    table = report(work, out, jobs, config)
    assert [row["row"] for row in table["rows"]] == ["plain", "full"]
    for row in table["rows"]:
        values = np.array(accuracy[row["row"]])
        assert row["top1_mean"] == pytest.approx(values.mean())
        assert row["top1_std"] == pytest.approx(values.std(ddof=1))
    markdown = (out / "ablation.md").read_text()
    assert "| full | 3 | 41.7 ± 7.6 | 40.0 / 35.0 / 50.0 |" in markdown
    assert "| plain | 25.0 ± 5.0 | 12.5 ± 2.5 | 12.5 ± 2.5 |" in markdown  # drop = top1 / 2
    # Wall-clock and CPU seconds per seed; '-' where the record has no CPU time.
    assert "| 3 / 3 / 3 of 7 | 100 / 101 / 102 | 90 / 91 / - |" in markdown
    assert [row["train_cpu_seconds"] for row in table["rows"]] == [[90.4, 91.4, None]] * 2
    for plot in ("ablation.png", "rotation.png", "reduced_input.png"):
        assert (out / plot).stat().st_size > 0
    assert (out / "runs" / "full-s2" / "job.json").is_file()


def test_ablation_train_needs_data(tmp_path, capsys):
    assert cli_main(["ablation", "--train", "synthetic_fine", "--out", str(tmp_path)]) == 2
    assert "ablation --train needs --data" in capsys.readouterr().err
