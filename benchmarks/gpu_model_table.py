"""The README's table of the GPU model, written from benchmarks/results/gpu_model.json.

    python benchmarks/gpu_model_table.py           # rewrites the table in README.md
    python benchmarks/gpu_model_table.py --check   # exits 1 when README.md's table is stale

The README shows one row per op and direction, float32 NCHW, at one case of each op (the crop's
feature crops, the paper's use of it); benchmarks/results/gpu_model.md has every case. Where
the JSON extrapolates its records to the full sizes (gpu_model.py's `full`), each row is one
full case of that case, its predicted and roofline time beside the traced case's; a JSON
without them gives the traced columns alone.
`python benchmarks/gpu_model.py` rewrites the table itself when it writes the default JSON.
The table lies between the README's two markers below; nothing else of the README changes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL_JSON = ROOT / "benchmarks" / "results" / "gpu_model.json"
README = ROOT / "README.md"
BEGIN = "<!-- gpu-model-table: written by `python benchmarks/gpu_model_table.py` -->"
END = "<!-- /gpu-model-table -->"
VARIANT = ", float32"  # the case names' suffix of the float32 NCHW runs (cases/runs.py)
PREFERRED_CASE = "feature crops"
FULL_TIMES = ("predicted_us", "roofline_us")


def readme_records(records: list[dict]) -> list[dict]:
    """Per op (in the JSON's order), the float32 NCHW records of one case: the first whose
    name starts with PREFERRED_CASE, else the op's first; every direction of that case."""
    chosen: dict[str, str] = {}
    for record in records:
        if not record["case"].endswith(VARIANT):
            continue
        current = chosen.get(record["op"])
        if current is None or (
            not current.startswith(PREFERRED_CASE) and record["case"].startswith(PREFERRED_CASE)
        ):
            chosen[record["op"]] = record["case"]
    return [r for r in records if chosen.get(r["op"]) == r["case"]]


def table(model: dict) -> str:
    constants = model["constants"]
    records = readme_records(model["records"])
    lines = [
        BEGIN,
        "",
        f"Predicted H100 us per op call: launches x {constants['LAUNCH_US']:g} us + DRAM bytes "
        f"at {constants['HBM_BYTES_PER_S'] / 1e12:g} TB/s.",
    ]
    full = [bool(r.get("full")) for r in records]
    if not any(full):
        lines += [
            "",
            "| op | case | direction | launches | predicted us | roofline us |",
            "|---|---|---|---:|---:|---:|",
        ]
        for r in records:
            lines.append(
                f"| {r['op']} | {r['case']} | {r['direction']} | {r['launches']} | "
                f"{r['predicted_us']:.1f} | {r['roofline_us']:.1f} |"
            )
        return "\n".join([*lines, "", END])
    lines[-1] += (
        " Traced at the quick size; **the full sizes (the paper's) are an extrapolation**: "
        "the traced launches and bytes moved per minimum byte, at the full case's minimum."
        + (" `-`: not extrapolated (gpu_model.md says why)." if not all(full) else "")
    )
    lines += [
        "",
        "| op | direction | launches | traced case | predicted us | roofline us | full case "
        "(extrapolated) | predicted us | roofline us |",
        "|---|---|---:|---|---:|---:|---|---:|---:|",
    ]
    for r in records:
        for f in r.get("full") or [{"case": "-", "predicted_us": None, "roofline_us": None}]:
            at_full = [f"{f[k]:.1f}" if f[k] is not None else "-" for k in FULL_TIMES]
            lines.append(
                f"| {r['op']} | {r['direction']} | {r['launches']} | {r['case']} | "
                f"{r['predicted_us']:.1f} | {r['roofline_us']:.1f} | {f['case']} | "
                + " | ".join(at_full)
                + " |"
            )
    return "\n".join([*lines, "", END])


def with_table(readme: str, model: dict) -> str:
    """`readme` with the text between its markers (included) replaced by the table."""
    start, end = readme.find(BEGIN), readme.find(END)
    if start < 0 or end < start:
        raise ValueError(f"README.md lacks the markers {BEGIN!r} ... {END!r}")
    return readme[:start] + table(model) + readme[end + len(END) :]


def update_readme(model_json: Path = MODEL_JSON, readme: Path = README) -> bool:
    """Rewrites the README's table from `model_json`; True when it changed."""
    text = readme.read_text()
    new = with_table(text, json.loads(model_json.read_text()))
    if new != text:
        readme.write_text(new)
    return new != text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only say whether it is stale")
    args = parser.parse_args(argv)
    if args.check:
        text = README.read_text()
        if with_table(text, json.loads(MODEL_JSON.read_text())) != text:
            print("README.md's GPU model table is stale: run benchmarks/gpu_model_table.py")
            return 1
        return 0
    changed = update_readme()
    print(f"{README}: {'rewritten' if changed else 'already up to date'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
