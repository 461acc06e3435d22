"""Plots of training runs and evaluations (matplotlib, Agg, PNG files): training curves,
accuracy bars (Tables 2 and 3), accuracy against rotation angle (Table 1), distance per proposal
(Fig. 4), and the same four from the job records of the ablation study (:mod:`ssanet.ablation`).
Each function draws on its own Figure (no pyplot, no global state, no display)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = [
    "plot_ablation_rows",
    "plot_accuracy_bars",
    "plot_keypoint_distance",
    "plot_localization_runs",
    "plot_reduced_input_runs",
    "plot_rotation_robustness",
    "plot_rotation_runs",
    "plot_training_curves",
    "rotation_robustness_figure",
    "training_curves_figure",
]


def _figure(width: float = 6.0, height: float = 4.0, layout: str | None = "constrained"):
    # A Figure with its own Agg canvas: no pyplot, no global state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # Constrained layout keeps labels, legends placed outside the axes and titles in view.
    figure = Figure(figsize=(width, height), dpi=100, layout=layout)
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


def _stage_spans(epochs: Sequence[float], stages: Sequence[str]) -> list[tuple[str, float, float]]:
    """(stage, first epoch, last epoch) of each run of equal consecutive stage names."""
    spans: list[tuple[str, float, float]] = []
    for epoch, stage in zip(epochs, stages, strict=True):
        if spans and spans[-1][0] == stage:
            spans[-1] = (stage, spans[-1][1], epoch)
        else:
            spans.append((stage, epoch, epoch))
    return spans


def _mark_stages(axis, epochs: Sequence[float], stages: Sequence[str]) -> None:
    """A dotted line between stages and each stage's name on a top axis: each stage sums its
    own loss terms, so the loss curve jumps where a stage begins."""
    spans = _stage_spans(epochs, stages)
    for previous, (_, first, _) in zip(spans, spans[1:], strict=False):
        axis.axvline((previous[2] + first) / 2, color="0.5", linestyle=":", linewidth=1)
    top = axis.secondary_xaxis("top")
    top.set_xticks(
        [(first + last) / 2 for _, first, last in spans], [stage for stage, _, _ in spans]
    )
    top.tick_params(length=0, labelsize="small")


def training_curves_figure(
    history: Mapping[str, Sequence[float]],
    title: str = "Training",
    stages: Sequence[str] | None = None,
):
    """The Figure of :func:`plot_training_curves`."""
    figure = _figure(7.0, 4.5)
    loss_axis = figure.add_subplot()
    accuracy_axis = loss_axis.twinx()
    # One colour cycle for both axes, so no two curves share a colour.
    colors = iter(_colors())
    epochs = list(history.get("epoch", []))
    for name, values in history.items():
        if name == "epoch":
            continue
        values = list(values)
        x = epochs if len(epochs) == len(values) else list(range(1, len(values) + 1))
        axis, style = (loss_axis, "-") if "loss" in name else (accuracy_axis, "--")
        axis.plot(x, values, style, marker="o", markersize=3, label=name, color=next(colors))
    if stages is not None:
        _mark_stages(loss_axis, epochs, stages)
    loss_axis.set_xlabel("epoch")
    loss_axis.set_ylabel("loss")
    accuracy_axis.set_ylabel("accuracy")
    handles, labels = loss_axis.get_legend_handles_labels()
    more_handles, more_labels = accuracy_axis.get_legend_handles_labels()
    # Below the axes, so it never hides a curve.
    figure.legend(
        handles + more_handles,
        labels + more_labels,
        loc="outside lower center",
        ncols=min(4, len(labels + more_labels)),
        fontsize="small",
    )
    figure.suptitle(title)
    return figure


def _colors() -> list[str]:
    # matplotlib's default colour cycle (ten colours).
    from matplotlib import rcParams

    return list(rcParams["axes.prop_cycle"].by_key()["color"])


def plot_training_curves(
    history: Mapping[str, Sequence[float]],
    path: str | os.PathLike,
    title: str = "Training",
    stages: Sequence[str] | None = None,
) -> Path:
    """Curves per epoch: keys containing ``"loss"`` on the left axis (solid), the others
    (accuracies) on the right (dashed), each in its own colour, the legend below the axes.
    ``history`` maps a name to one value per epoch (``"epoch"`` is the x axis if present).
    ``stages``: the stage of each epoch; each stage's span is named above the axes and a dotted
    line separates consecutive stages. Returns the PNG's path."""
    return _save(training_curves_figure(history, title, stages), path)


def plot_accuracy_bars(
    values: Mapping[str, float],
    path: str | os.PathLike,
    title: str = "Top-1 accuracy",
    ylabel: str = "top-1 accuracy",
) -> Path:
    """One labelled bar per entry (the ablation runs of Table 3, the inputs of Table 2)."""
    figure = _figure(max(4.0, 1.0 + 1.1 * len(values)), 4.0)
    axis = figure.add_subplot()
    names = list(values)
    bars = axis.bar(range(len(names)), [values[name] for name in names], color="tab:blue")
    axis.bar_label(bars, fmt="%.3f", fontsize="small")
    axis.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize="small")
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    return _save(figure, path)


def rotation_robustness_figure(
    results: Mapping[str, Mapping[float, float]], title: str = "Rotation robustness"
):
    """The Figure of :func:`plot_rotation_robustness`."""
    figure = _figure()
    axis = figure.add_subplot()
    for method, by_angle in results.items():
        angles = sorted(by_angle)
        axis.plot(angles, [by_angle[angle] for angle in angles], marker="o", label=method)
    axis.set_xlabel("rotation (degrees)")
    axis.set_ylabel("top-1 accuracy")
    # From 0, so the drop under rotation is seen at its true size.
    axis.set_ylim(bottom=0.0)
    axis.set_title(title)
    axis.legend(loc="best")
    return figure


def plot_rotation_robustness(
    results: Mapping[str, Mapping[float, float]],
    path: str | os.PathLike,
    title: str = "Rotation robustness",
) -> Path:
    """Accuracy against rotation angle, one line per method: ``{method: {angle: accuracy}}``
    (for instance the top-1 of each angle of :func:`ssanet.evaluate.evaluate_model`'s
    ``rotation``); the accuracy axis starts at 0."""
    return _save(rotation_robustness_figure(results, title), path)


def plot_keypoint_distance(
    results: Mapping[str, Sequence[float]],
    path: str | os.PathLike,
    title: str = "Proposal centre to nearest keypoint",
    unit: str = "pixels",
) -> Path:
    """Fig. 4: grouped bars of the mean distance per proposal index, one group member per
    method: ``{method: [K distances]}`` (from
    :func:`ssanet.metrics.mean_proposal_keypoint_distance`)."""
    figure = _figure()
    axis = figure.add_subplot()
    methods = list(results)
    width = 0.8 / max(1, len(methods))
    for offset, method in enumerate(methods):
        distances = [float(value) for value in results[method]]
        positions = [k + (offset - (len(methods) - 1) / 2) * width for k in range(len(distances))]
        axis.bar(positions, distances, width=width, label=method)
    num_proposals = max((len(results[method]) for method in methods), default=0)
    axis.set_xticks(range(num_proposals), [f"proposal {k + 1}" for k in range(num_proposals)])
    axis.set_ylabel(f"mean distance ({unit})")
    axis.set_title(title)
    axis.legend(loc="best")
    return _save(figure, path)


# The ablation study's plots (:func:`ssanet.ablation.report`): each takes the job records of
# the study's runs. Laid out by tight_layout, as they were first drawn.


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def plot_ablation_rows(rows: Sequence[Mapping], path: str | os.PathLike) -> Path:
    """Table 3 of :func:`ssanet.ablation.report`: each row's mean test top-1 with the seeds'
    standard deviation (``rows``: the report's ``"rows"``). Returns the PNG's path."""
    figure = _figure(max(6.0, 1.3 * len(rows)), 4.5, layout=None)
    axis = figure.add_subplot()
    means = [100 * row["top1_mean"] for row in rows]
    errors = [100 * (row["top1_std"] or 0.0) for row in rows]
    bars = axis.bar(range(len(rows)), means, yerr=errors, capsize=4, color="tab:blue")
    axis.bar_label(bars, fmt="%.1f", fontsize="small", padding=2)
    names = [row["method"].replace(" + ", "\n+ ").replace(" (", "\n(") for row in rows]
    axis.set_xticks(range(len(rows)), names, fontsize="x-small")
    axis.set_ylim(0, 100)
    axis.set_ylabel("test top-1 (%)")
    axis.set_title("Table 3: ablation (error bars: std over seeds)")
    figure.tight_layout()
    return _save(figure, path)


def plot_rotation_runs(runs: Mapping[str, Sequence[Mapping]], path: str | os.PathLike) -> Path:
    """Table 1 of :func:`ssanet.ablation.report`: top-1 against the test images' rotation, mean
    over seeds, one line per row of the study (``runs``: each row's job records). Returns the
    PNG's path."""
    figure = _figure(layout=None)
    axis = figure.add_subplot()
    for row_runs in runs.values():
        angles = list(row_runs[0]["rotation"])
        values = [100 * _mean([run["rotation"][a]["top1"] for run in row_runs]) for a in angles]
        axis.plot([float(a) for a in angles], values, marker="o", label=row_runs[0]["label"])
    axis.set_ylim(0, 100)  # from 0: a truncated axis exaggerates the drop
    axis.set_xlabel("rotation of the test images (degrees)")
    axis.set_ylabel("test top-1 (%), mean over seeds")
    axis.set_title("Table 1: rotation")
    axis.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2, fontsize="small")
    figure.tight_layout()
    return _save(figure, path)


def plot_reduced_input_runs(runs: Mapping[str, Sequence[Mapping]], path: str | os.PathLike) -> Path:
    """Table 2 of :func:`ssanet.ablation.report`: top-1 on the original and the reduced, padded
    test images, mean over seeds, one pair of bars per row of the study (``runs``: each row's
    job records). Returns the PNG's path."""
    figure = _figure(layout=None)
    axis = figure.add_subplot()
    width = 0.38
    for offset, row_runs in enumerate(runs.values()):
        values = [
            100 * _mean([run["reduced_input"][key]["top1"] for run in row_runs])
            for key in ("original", "reduced")
        ]
        bars = axis.bar(
            [x + (offset - 0.5) * width for x in (0, 1)], values, width, label=row_runs[0]["label"]
        )
        axis.bar_label(bars, fmt="%.1f", fontsize="small")
    axis.set_xticks([0, 1], ["original", "reduced and padded"])
    axis.set_ylim(0, 100)
    axis.set_ylabel("test top-1 (%), mean over seeds")
    axis.set_title("Table 2: reduced input")
    axis.legend(loc="upper right", fontsize="small")
    figure.tight_layout()
    return _save(figure, path)


def plot_localization_runs(
    located: Sequence[Mapping], path: str | os.PathLike, floor: Mapping | None = None
) -> Path:
    """Fig. 4 of :func:`ssanet.ablation.report`: each run's mean proposal-to-keypoint distance
    (:func:`ssanet.metrics.localization`, in its job record) beside the random boxes', and the
    ideal proposal head's (``floor``, :func:`ssanet.metrics.localization_floor`) as a line.
    Returns the PNG's path."""
    figure = _figure(max(6.0, 0.9 * len(located) + 2), 4.5, layout=None)
    axis = figure.add_subplot()
    names = [f"{run['row']} s{run['seed']}" for run in located]
    positions = range(len(located))
    axis.bar(
        [p - 0.2 for p in positions],
        [run["localization"]["proposal_mean"] for run in located],
        0.4,
        label="proposals",
    )
    axis.bar(
        [p + 0.2 for p in positions],
        [run["localization"]["random_mean"] for run in located],
        0.4,
        label="random boxes of the same sizes",
    )
    if floor is not None:
        axis.axhline(
            floor["proposal_mean"],
            color="black",
            linestyle="--",
            linewidth=1,
            label=f"ideal proposal head (ratio {floor['ratio']:.2f})",
        )
    axis.set_xticks(list(positions), names, rotation=30, ha="right", fontsize="small")
    highest = max(
        max(run["localization"]["proposal_mean"], run["localization"]["random_mean"])
        for run in located
    )
    axis.set_ylim(0, 1.35 * highest)  # room for the legend above the bars
    axis.set_ylabel(f"mean distance ({located[0]['localization']['unit']})")
    axis.set_title("Fig. 4: to the nearest discriminative keypoint")
    axis.legend(loc="upper right", fontsize="small")
    figure.tight_layout()
    return _save(figure, path)
