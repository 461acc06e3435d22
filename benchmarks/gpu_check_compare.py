"""The GPU model beside a GPU's measurements, for the GPU check's summary (no torch needed).

benchmarks/gpu_model.py predicts, per (op, case, direction), an op call's time and, per kernel
launch, its DRAM bytes and sectors per request (benchmarks/results/gpu_model.json);
benchmarks/gpu_check_model.py measures the same calls on a GPU: their times with CUDA events
(model_times.json) and, where Nsight Compute runs, each kernel's counters for one launch
(model_ncu.json, from `ncu --csv`). Records match by their keys (op, case, direction), which
both sides take from benchmarks/cases/runs.py; a record without a counterpart shows "-". The
times at the full sizes meet the model's extrapolation to them (each model record's `full`).
"""

from __future__ import annotations

import csv
import json
import re
import statistics
from pathlib import Path

# Nsight Compute's metrics (Kernel Profiling Guide, "Metrics Reference" and "Memory Tables"):
# DRAM traffic, and the global loads' and stores' sectors and requests in L1TEX.
NCU_METRICS = {
    "dram_read": "dram__bytes_read.sum",
    "dram_write": "dram__bytes_write.sum",
    "load_sectors": "l1tex__t_sectors_pipe_lsu_mem_global_op_ld.sum",
    "load_requests": "l1tex__t_requests_pipe_lsu_mem_global_op_ld.sum",
    "store_sectors": "l1tex__t_sectors_pipe_lsu_mem_global_op_st.sum",
    "store_requests": "l1tex__t_requests_pipe_lsu_mem_global_op_st.sum",
    "duration": "gpu__time_duration.sum",
}
# The kernel torch.cuda._sleep() launches: the profiling run puts one before each op call's
# kernels, so that ncu's list of launches splits into op calls.
MARKER_KERNEL = "spin_kernel"
# ncu's time units, to microseconds; other units (byte, sector, request) take SI prefixes
# as Nsight Compute prints them without --print-units base (Kbyte, Msector: 1e3, 1e6).
TIME_UNITS = {"nsecond": 1e-3, "usecond": 1.0, "msecond": 1e3, "second": 1e6}
PREFIXES = {"K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
KEY = ("op", "case", "direction")


def number(text: str) -> float:
    """A value as ncu prints it: "1396736", "1,396,736" (thousands separated), "3.5", "3,5" (a
    decimal comma, in some locales)."""
    text = text.strip()
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", text):
        text = text.replace(",", "")
    elif re.fullmatch(r"-?\d+,\d+", text):
        text = text.replace(",", ".")
    return float(text)


def unit_scale(unit: str) -> float:
    """The factor from a value in `unit` to base units (bytes, sectors, requests) or to
    microseconds."""
    unit = unit.strip()
    if unit in TIME_UNITS:
        return TIME_UNITS[unit]
    if len(unit) > 1 and unit[0] in PREFIXES and unit[1:].isalpha() and unit[1:].islower():
        return PREFIXES[unit[0]]
    return 1.0


def parse_ncu_csv(text: str) -> list[dict]:
    """The kernel launches of `ncu --csv` output (its default "details" page with --metrics:
    one line per launch and metric, after a header line starting "ID"), in launch order:
    {"id", "name", "metrics": {metric name: value in base units, bytes and microseconds}}.
    Lines that are not the report's (==PROF== messages, the program's output) are skipped."""
    lines = text.splitlines()
    header = next((i for i, line in enumerate(lines) if line.startswith('"ID"')), None)
    if header is None:
        return []
    # The report's lines; a header line again (the same report read from two places) skipped.
    rest = lines[header + 1 :]
    table = [lines[header]] + [x for x in rest if x.startswith('"') and x != lines[header]]
    launches: dict[int, dict] = {}
    for row in csv.DictReader(table):
        if not {"ID", "Kernel Name", "Metric Name", "Metric Value"} <= row.keys():
            raise ValueError("not the CSV of ncu's details page: no Metric Name column")
        launch = launches.setdefault(
            int(row["ID"]), {"id": int(row["ID"]), "name": row["Kernel Name"], "metrics": {}}
        )
        scale = unit_scale(row.get("Metric Unit") or "")
        try:
            launch["metrics"][row["Metric Name"]] = number(row["Metric Value"]) * scale
        except ValueError:
            launch["metrics"][row["Metric Name"]] = None  # "n/a"
    return [launches[i] for i in sorted(launches)]


def ncu_refusal(text: str) -> str | None:
    """Why ncu profiled nothing, from its output: its first ==ERROR== line (a device it does not
    support, no permission for the performance counters), or its warning that no kernel was
    profiled; None when it profiled."""
    for line in text.splitlines():
        if line.startswith("==ERROR=="):
            return line.removeprefix("==ERROR==").strip()
    if "No kernels were profiled" in text:
        return "ncu: no kernels were profiled"
    return None


def short_name(name: str) -> str:
    """A demangled kernel name as the model names it: "void ssanet_ops::roi_crop::(anonymous
    namespace)::crop_forward_kernel<float, float, int>(const float *, ...)" becomes
    "roi_crop::crop_forward_kernel<float, float, int>"."""
    name = name.replace("(anonymous namespace)::", "").removeprefix("void ")
    return name.split("(")[0].removeprefix("ssanet_ops::").strip()


def kernel_counters(launch: dict) -> dict:
    """The figures the report shows of one ncu launch; None where a metric is missing."""
    m = launch["metrics"]

    def total(*names):
        values = [m.get(NCU_METRICS[name]) for name in names]
        return None if any(v is None for v in values) else sum(values)

    def per_request(kind):
        sectors, requests = total(f"{kind}_sectors"), total(f"{kind}_requests")
        return None if sectors is None or not requests else sectors / requests

    return {
        "name": short_name(launch["name"]),
        "dram_bytes": total("dram_read", "dram_write"),
        "load_sectors_per_request": per_request("load"),
        "store_sectors_per_request": per_request("store"),
        "duration_us": m.get(NCU_METRICS["duration"]),
    }


def attribute(launches: list[dict], manifest: list[dict]) -> list[dict]:
    """Splits a profiling run's launches at its markers into the op calls of `manifest` (their
    keys, in the order the run made them): one record per call with its kernels' counters.
    Raises ValueError when the markers and the manifest disagree."""
    groups: list[list[dict]] = []
    for launch in launches:
        if MARKER_KERNEL in launch["name"]:
            groups.append([])
        elif groups:
            groups[-1].append(launch)
    if len(groups) != len(manifest):
        raise ValueError(f"{len(groups)} markers in ncu's output for {len(manifest)} op calls")
    return [
        {**{k: call[k] for k in KEY}, "kernels": [kernel_counters(x) for x in group]}
        for call, group in zip(manifest, groups, strict=True)
    ]


# --- Merging with the model ------------------------------------------------------------------


def key(record: dict) -> tuple:
    return tuple(record[k] for k in KEY)


def ratio(measured: float | None, predicted: float | None) -> float | None:
    if measured is None or predicted is None or predicted == 0:
        return None
    return measured / predicted


def merge_times(model: dict, times: dict) -> list[dict]:
    """One row per key of either side, the model's order first: the measured time beside the
    predicted and roofline times, their ratios, and the prediction redone with the measured
    constants (launch cost in a stream, copy rate)."""
    measured = {key(r): r for r in times.get("records", [])}
    constants = times.get("constants", {})
    rows = []
    for r in with_full_sizes(model.get("records", [])):
        m = measured.pop(key(r), None)
        us = m["median_us"] if m else None
        redone = None
        if constants.get("launch_us_in_stream") and constants.get("copy_bytes_per_s"):
            redone = (
                r["launches"] * constants["launch_us_in_stream"]
                + r["bytes_moved"] / constants["copy_bytes_per_s"] * 1e6
            )
        rows.append(
            {
                **{k: r[k] for k in KEY},
                "launches": r["launches"],
                "measured_us": us,
                "predicted_us": r["predicted_us"],
                "roofline_us": r["roofline_us"],
                "measured_over_predicted": ratio(us, r["predicted_us"]),
                "measured_over_roofline": ratio(us, r["roofline_us"]),
                "repredicted_us": redone,
                "sizes": m.get("sizes") if m else None,
                "extrapolated": r.get("extrapolated", False),
            }
        )
    for m in measured.values():
        rows.append(
            {
                **{k: m[k] for k in KEY},
                "launches": None,
                "measured_us": m["median_us"],
                "predicted_us": None,
                "roofline_us": None,
                "measured_over_predicted": None,
                "measured_over_roofline": None,
                "repredicted_us": None,
                "sizes": m.get("sizes"),
                "extrapolated": False,
            }
        )
    return rows


def with_full_sizes(records: list[dict]) -> list[dict]:
    """The model's records, each followed by its extrapolations to the full sizes (the `full`
    of gpu_model.py) as records of their own, marked `extrapolated`."""
    result = []
    for r in records:
        result.append(r)
        for f in r.get("full", []):
            result.append({**{k: r[k] for k in KEY}, "launches": r["launches"], **f,
                           "extrapolated": True})  # fmt: skip
    return result


def merge_kernels(model: dict, ncu: dict) -> list[dict]:
    """One row per kernel launch of each key either side has, kernels paired by their order in
    the call: ncu's DRAM bytes and sectors per request beside the model's, and the ratios."""
    measured = {key(r): r["kernels"] for r in ncu.get("records", [])}
    modelled = {key(r): r.get("kernels", []) for r in model.get("records", [])}
    keys = list(modelled) + [k for k in measured if k not in modelled]
    rows = []
    for k in keys:
        ours, theirs = modelled.get(k, []), measured.get(k, [])
        for index in range(max(len(ours), len(theirs))):
            a = ours[index] if index < len(ours) else {}
            b = theirs[index] if index < len(theirs) else {}
            rows.append(
                {
                    **dict(zip(KEY, k, strict=True)),
                    "index": index,
                    "model_kernel": a.get("kernel"),
                    "ncu_kernel": b.get("name"),
                    "model_bytes": a.get("bytes_moved"),
                    "ncu_bytes": b.get("dram_bytes"),
                    "bytes_ratio": ratio(b.get("dram_bytes"), a.get("bytes_moved")),
                    "model_load_spr": a.get("load_sectors_per_request"),
                    "ncu_load_spr": b.get("load_sectors_per_request"),
                    "model_store_spr": a.get("store_sectors_per_request"),
                    "ncu_store_spr": b.get("store_sectors_per_request"),
                    "ncu_us": b.get("duration_us"),
                    "measured": k in measured,
                }
            )
    return rows


def spread(values: list[float]) -> str:
    if not values:
        return "no record has both"
    return (
        f"median {statistics.median(values):.2f}, from {min(values):.2f} to {max(values):.2f} "
        f"over {len(values)} records"
    )


# --- The summary's section -------------------------------------------------------------------


def _f(value, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def rate_of(constants: dict) -> float | None:
    """The model's DRAM rate in TB/s."""
    rate = constants.get("HBM_BYTES_PER_S")
    return None if rate is None else rate / 1e12


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def times_lines(model: dict, times: dict) -> list[str]:
    """The measured constants, the model's error per op and direction, and the table of every
    op call: measured time beside predicted and roofline time."""
    assumed, c = model.get("constants", {}), times.get("constants", {})
    rate = c.get("copy_bytes_per_s")
    lines = [
        f"Measured constants: device-to-device copy {_f(rate and rate / 1e12, '.3g')} TB/s "
        f"(read + write; the model assumes {_f(rate_of(assumed), '.2f')}); a launch "
        f"{_f(c.get('launch_us'), '.2f')} us for one small torch op alone, "
        f"{_f(c.get('launch_us_in_stream'), '.2f')} us each in a stream of them (the model "
        f"assumes {_f(assumed.get('LAUNCH_US'))}). Times: {times.get('method', '')}"
        + ("" if times.get("complete") else " Stopped before the last run (time)."),
        "",
    ]
    rows = merge_times(model, times)
    matched = [r for r in rows if r["predicted_us"] is not None]
    lines += [
        "The model's error, measured / predicted time (and with the measured constants):",
        "",
        "| op | direction | measured / predicted | with measured constants |",
        "|---|---|---|---|",
    ]
    groups = dict.fromkeys((r["op"], r["direction"]) for r in matched)
    for op, direction in groups:
        mine = [r for r in matched if (r["op"], r["direction"]) == (op, direction)]
        first = [r["measured_over_predicted"] for r in mine]
        redone = [ratio(r["measured_us"], r["repredicted_us"]) for r in mine]
        lines.append(
            f"| {op} | {direction} | {spread([v for v in first if v is not None])} | "
            f"{spread([v for v in redone if v is not None])} |"
        )
    lines += [
        "",
        "| op | case | direction | launches | measured us | predicted us | measured / "
        "predicted | roofline us | measured / roofline | predicted with measured "
        "constants us |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in matched:
        case = r["case"] + (" (model extrapolated)" if r["extrapolated"] else "")
        lines.append(
            f"| {r['op']} | {case} | {r['direction']} | {r['launches']} | "
            f"{_f(r['measured_us'])} | {_f(r['predicted_us'])} | "
            f"{_f(r['measured_over_predicted'], '.2f')} | {_f(r['roofline_us'])} | "
            f"{_f(r['measured_over_roofline'], '.2f')} | {_f(r['repredicted_us'])} |"
        )
    unmatched = [r for r in rows if r["predicted_us"] is None]
    if unmatched:
        lines += [
            "",
            "Measured without a model record (a case or direction the model lacks):",
            "",
            "| op | case | direction | sizes | measured us |",
            "|---|---|---|---|---:|",
        ]
        lines += [
            f"| {r['op']} | {r['case']} | {r['direction']} | {r['sizes'] or '-'} | "
            f"{_f(r['measured_us'])} |"
            for r in unmatched
        ]
    return lines


def kernel_lines(model: dict, ncu: dict) -> list[str]:
    """Nsight Compute's counters of each kernel beside the model's."""
    measured = [r for r in merge_kernels(model, ncu) if r["measured"]]
    lines = [
        "Nsight Compute, one launch of each kernel: DRAM bytes (read + write) measured / "
        "the model's: " + spread([r["bytes_ratio"] for r in measured if r["bytes_ratio"]]) + ".",
        "",
        "| op | case | direction | # | kernel | DRAM bytes | model bytes | measured / model "
        "| sectors / load | model | sectors / store | model | kernel us |",
        "|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in measured:
        name = r["model_kernel"] or r["ncu_kernel"] or "-"
        if r["ncu_kernel"] and r["model_kernel"] and r["ncu_kernel"] != r["model_kernel"]:
            name += f" (ncu: {r['ncu_kernel']})"
        lines.append(
            f"| {r['op']} | {r['case']} | {r['direction']} | {r['index']} | `{name}` | "
            f"{_f(r['ncu_bytes'], ',.0f')} | {_f(r['model_bytes'], ',.0f')} | "
            f"{_f(r['bytes_ratio'], '.2f')} | {_f(r['ncu_load_spr'])} | "
            f"{_f(r['model_load_spr'])} | {_f(r['ncu_store_spr'])} | "
            f"{_f(r['model_store_spr'])} | {_f(r['ncu_us'])} |"
        )
    return lines


def section(out: Path, model_path: Path, ran: dict) -> tuple[list[str], list[str], list[str]]:
    """The summary's lines on the model against this GPU, its problems and what was not
    checked; `ran` says whether the steps "times" and "ncu" ran."""
    lines, problems, not_checked = [], [], []
    if not (ran.get("times") or ran.get("ncu")):
        return lines, problems, not_checked
    model = _read(model_path) or {}
    times = (_read(out / "model_times.json") or {}) if ran.get("times") else None
    ncu = (_read(out / "model_ncu.json") or {}) if ran.get("ncu") else None
    lines += ["", "## The GPU model against this GPU", ""]
    if not model:
        lines += [f"No model to compare with ({model_path.name} missing).", ""]
    if times is not None:
        problems += [f"times: {error}" for error in times.get("errors", [])]
        if times.get("records"):
            lines += times_lines(model, times)
        else:
            problems.append("times: no measurements (model_times.json)")
    if ncu is not None:
        status, reason = ncu.get("status", "no results"), ncu.get("reason", "model_ncu.json")
        if status != "measured":
            lines += ["", f"Nsight Compute: not measured ({status}: {reason})."]
            # Missing, refused, or out of time for some variants: reported, not a failure.
            if status in ("refused", "not found", "partial"):
                not_checked.append(f"ncu: not measured ({status}: {reason})")
            else:
                problems.append(f"ncu: {status} ({reason})")
        if ncu.get("records"):
            lines += [""] + kernel_lines(model, ncu)
    return lines, problems, not_checked
