"""The study's rows (Table 3) and its jobs: which runs, with which overrides, in which order."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["FLOOR_FILE", "JOB_FILE", "ROWS", "SEEDED_ROWS", "Job", "plan"]

#: Table 3's rows: (key, overrides of the base config). "other_features" is filled in by plan().
ROWS: tuple[tuple[str, list[str]], ...] = (
    ("plain", ["model.proposals=false", "strategy=plain"]),
    ("P", ["model.dsm=none", "model.op=none", "loss.mac_lambda=0"]),
    ("P+MAC", ["model.dsm=none", "model.op=none"]),
    ("P+MAC+OP", ["model.dsm=none"]),
    ("P+MAC+DSM", ["model.op=none"]),
    ("full", []),
    ("full_other_features", []),
)
SEEDED_ROWS = ("plain", "full")  #: the rows run with every seed
#: A finished run's record in its folder: written last, so a run with it is done.
JOB_FILE = "job.json"
FLOOR_FILE = "localization_floor.json"  #: the work folder's localization_floor() of the config


@dataclass
class Job:
    """One training run of the study and its evaluation."""

    row: str
    seed: int
    overrides: list[str]
    init_from: str | None = None  # name of the job whose best.pt starts this one
    name: str = field(init=False)

    def __post_init__(self) -> None:
        self.name = f"{self.row}-s{self.seed}"


def plan(config: dict, seeds: int) -> list[Job]:
    """The study's jobs in the order they run: the first seed's plain and full runs first (so
    an interrupted study still has the headline comparison), then the other seeds, then the
    rows between, then the other ``crop_from`` mode (``part_features`` in older configs)."""
    key = "part_features" if "part_features" in config["model"] else "crop_from"
    other = "image" if config["model"].get(key, "image") == "shared" else "shared"
    overrides = dict(ROWS)
    overrides["full_other_features"] = [f"model.{key}={other}"]

    def job(row: str, seed: int) -> Job:
        parent = None if row == "plain" else f"plain-s{seed}"
        return Job(row, seed, [*overrides[row], f"seed={seed}"], parent)

    jobs = [job("plain", 0), job("full", 0)]
    for seed in range(1, seeds):
        jobs += [job("plain", seed), job("full", seed)]
    jobs += [job(row, 0) for row in ("P", "P+MAC", "P+MAC+OP", "P+MAC+DSM")]
    jobs.append(job("full_other_features", 0))
    return jobs
