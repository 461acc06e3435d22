"""The GPU check's comparison of the GPU model with a GPU (issue 24, part 3), where no GPU is:
Nsight Compute's CSV parsed and split into op calls, ncu's refusal reported as "not measured",
the measured times and counters merged with the model's records by key and their ratios, the
summary's section, the measurement script's records keyed as the model's (run on the CPU), and
the README's table of the model written from benchmarks/results/gpu_model.json."""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS = REPO / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


compare = load("gpu_check_compare")

POOL = "void ssanet_ops::oriented_pool::forward_kernel<float, int>(const float *, float *, int)"
CROP = (
    "void ssanet_ops::roi_crop::(anonymous namespace)::crop_forward_kernel<c10::BFloat16, "
    "float, int>(const c10::BFloat16 *, const float *, c10::BFloat16 *, int, int)"
)
MARKER = "at::cuda::(anonymous namespace)::spin_kernel(long)"
HEADER = (
    '"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size",'
    '"Grid Size","Device","CC","Section Name","Metric Name","Metric Unit","Metric Value"'
)


def ncu_rows(launch: int, kernel: str, metrics: dict[str, tuple[str, str]]) -> list[str]:
    """One launch's lines of `ncu --csv` (the "details" page with --metrics: one line per
    launch and metric, every field quoted), as Nsight Compute's CLI documentation describes its
    CSV output; the sample is written from that format, not captured from a GPU."""
    return [
        f'"{launch}","4242","python3.12","127.0.0.1","{kernel}","1","7","(256, 1, 1)",'
        f'"(216, 1, 1)","0","9.0","Command line profiler metrics","{name}","{unit}","{value}"'
        for name, (unit, value) in metrics.items()
    ]


def counters(read, write, load_sectors, load_requests, store_sectors, store_requests, ns):
    m = compare.NCU_METRICS
    return {
        m["dram_read"]: ("byte", read),
        m["dram_write"]: ("byte", write),
        m["load_sectors"]: ("sector", load_sectors),
        m["load_requests"]: ("request", load_requests),
        m["store_sectors"]: ("sector", store_sectors),
        m["store_requests"]: ("request", store_requests),
        m["duration"]: ("nsecond", ns),
    }


# ncu's messages and the program's output around the report, thousands separators in some
# values, a marker before each op call, a launch before the first marker (not an op call's).
SAMPLE = "\n".join(
    [
        "==PROF== Connected to process 4242 (/usr/bin/python3.12)",
        "program output",
        '==PROF== Profiling "forward_kernel" - 0: 0%....50%....100% - 3 passes',
        HEADER,
        *ncu_rows(0, POOL, counters("64", "0", "8", "1", "0", "0", "2,048")),
        *ncu_rows(1, MARKER, counters("0", "0", "0", "0", "0", "0", "1,000")),
        *ncu_rows(
            2, POOL, counters("1,048,576", "524,288", "32,768", "4,096", "4096", "1024", "5,120")
        ),  # fmt: skip
        *ncu_rows(3, MARKER, counters("0", "0", "0", "0", "0", "0", "1000")),
        *ncu_rows(4, CROP, counters("2000", "1000", "300", "100", "50", "0", "3500")),
        *ncu_rows(5, POOL, counters("10", "20", "30", "10", "n/a", "0", "100")),
        "==PROF== Disconnected from process 4242",
    ]
)


def test_ncu_csv_is_read_per_launch_in_base_units():
    launches = compare.parse_ncu_csv(SAMPLE)
    assert [launch["id"] for launch in launches] == [0, 1, 2, 3, 4, 5]
    assert launches[2]["name"] == POOL
    assert launches[2]["metrics"][compare.NCU_METRICS["dram_read"]] == 1048576
    # Durations in microseconds.
    assert launches[2]["metrics"][compare.NCU_METRICS["duration"]] == pytest.approx(5.12)
    figures = compare.kernel_counters(launches[2])
    assert figures == {
        "name": "oriented_pool::forward_kernel<float, int>",
        "dram_bytes": 1048576 + 524288,
        "load_sectors_per_request": 32768 / 4096,
        "store_sectors_per_request": 4096 / 1024,
        "duration_us": pytest.approx(5.12),
    }
    # A missing value ("n/a") leaves its figure unknown; no request, no sectors per request.
    last = compare.kernel_counters(launches[5])
    assert last["store_sectors_per_request"] is None
    assert compare.kernel_counters(launches[4])["store_sectors_per_request"] is None
    # Prefixed units (without --print-units base) are scaled; the same report read twice (the
    # log and stdout) is one; a CSV without ncu's columns is refused.
    prefixed = {
        "a": ("Kbyte", "1.5"),
        "b": ("Msector", "2"),
        "c": ("usecond", "7"),
        "d": ("%", "5"),
    }
    scaled = "\n".join([HEADER, *ncu_rows(0, POOL, prefixed)])
    assert compare.parse_ncu_csv(scaled + "\n" + scaled)[0]["metrics"] == {
        "a": 1500.0, "b": 2e6, "c": 7.0, "d": 5.0
    }  # fmt: skip
    assert compare.parse_ncu_csv("==PROF== nothing\n") == []
    with pytest.raises(ValueError, match="Metric Name"):
        compare.parse_ncu_csv('"ID","Kernel Name","dram__bytes_read.sum"\n"0","k","1"\n')


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1,396,736", 1396736.0), ("3.5", 3.5), ("3,5", 3.5), ("0", 0.0), ("12,34", 12.34)],
)
def test_ncu_numbers_with_separators(text, expected):
    assert compare.number(text) == expected


def test_launches_split_into_the_op_calls_at_the_markers():
    manifest = [
        {"op": "oriented_pool", "case": "c", "direction": "forward"},
        {"op": "multiscale_roi_crop", "case": "d", "direction": "backward (deterministic)"},
    ]
    records = compare.attribute(compare.parse_ncu_csv(SAMPLE), manifest)
    # The launch before the first marker belongs to no call.
    assert [len(r["kernels"]) for r in records] == [1, 2]
    assert records[1]["direction"] == "backward (deterministic)"
    assert (
        records[1]["kernels"][0]["name"]
        == "roi_crop::crop_forward_kernel<c10::BFloat16, float, int>"
    )
    assert records[0]["kernels"][0]["dram_bytes"] == 1048576 + 524288
    with pytest.raises(ValueError, match="2 markers"):
        compare.attribute(compare.parse_ncu_csv(SAMPLE), manifest[:1])


def test_ncu_refusal_is_its_first_error():
    denied = (
        "==PROF== Connected to process 77 (/usr/bin/python3.12)\n"
        "==ERROR== ERR_NVGPUCTRPERM - The user does not have permission to access NVIDIA GPU "
        "Performance Counters on the target device 0.\n"
        "==PROF== Disconnected from process 77\n"
        "==WARNING== No kernels were profiled.\n"
    )
    assert compare.ncu_refusal(denied).startswith("ERR_NVGPUCTRPERM - The user does not")
    assert compare.ncu_refusal("==WARNING== No kernels were profiled.\n") == (
        "ncu: no kernels were profiled"
    )
    assert compare.ncu_refusal(SAMPLE) is None


def model_record(op, case, direction, launches, bytes_moved, predicted, roofline, kernels=()):
    return {
        "op": op, "case": case, "direction": direction, "launches": launches,
        "bytes_moved": bytes_moved, "bytes_minimum": bytes_moved, "sector_use": 1.0,
        "predicted_us": predicted, "roofline_us": roofline, "kernels": list(kernels),
    }  # fmt: skip


def model_kernel(name, bytes_moved, load_spr, store_spr):
    return {
        "kernel": name, "bytes_moved": bytes_moved,
        "load_sectors_per_request": load_spr, "store_sectors_per_request": store_spr,
    }  # fmt: skip


MODEL = {
    "constants": {"HBM_BYTES_PER_S": 3.0e12, "LAUNCH_US": 3.0},
    "records": [
        model_record("pool", "small, float32", "forward", 2, 3_000_000, 10.0, 4.0,
                     [model_kernel("pool::a", 1000, 4.0, 1.0),
                      model_kernel("pool::b", 2000, 8.0, 2.0)]),
        model_record("pool", "small, float32", "backward", 1, 600_000, 5.0, 4.0),
        model_record("crop", "feature crops, float32", "forward", 4, 0, 12.0, 3.0),
    ],
}  # fmt: skip
TIMES = {
    "method": "CUDA events.",
    "complete": True,
    "constants": {
        "copy_bytes_per_s": 2.0e12, "launch_us": 8.0, "launch_us_in_stream": 5.0,
    },
    "records": [
        {"op": "pool", "case": "small, float32", "direction": "forward", "median_us": 25.0},
        {"op": "pool", "case": "small, float32", "direction": "backward", "median_us": 4.0},
        {"op": "crop", "case": "feature crops, float32", "direction": "backward (deterministic)",
         "median_us": 30.0, "sizes": "quick"},
    ],
    "errors": [],
}  # fmt: skip
NCU = {
    "status": "measured",
    "reason": "",
    "records": [
        {"op": "pool", "case": "small, float32", "direction": "forward", "kernels": [
            {"name": "pool::a", "dram_bytes": 1500.0, "load_sectors_per_request": 4.0,
             "store_sectors_per_request": 1.0, "duration_us": 2.0},
            {"name": "pool::b2", "dram_bytes": 1000.0, "load_sectors_per_request": 6.0,
             "store_sectors_per_request": None, "duration_us": 3.0},
            {"name": "pool::extra", "dram_bytes": 64.0, "load_sectors_per_request": None,
             "store_sectors_per_request": None, "duration_us": 1.0},
        ]},
    ],
}  # fmt: skip


def test_times_merge_by_key_with_ratios_and_the_measured_constants():
    rows = compare.merge_times(MODEL, TIMES)
    by_key = {compare.key(r): r for r in rows}
    forward = by_key[("pool", "small, float32", "forward")]
    assert forward["measured_over_predicted"] == pytest.approx(25.0 / 10.0)
    assert forward["measured_over_roofline"] == pytest.approx(25.0 / 4.0)
    # 2 launches at 5 us each in a stream, 3 MB at 2 TB/s.
    assert forward["repredicted_us"] == pytest.approx(2 * 5.0 + 3e6 / 2e12 * 1e6)
    assert by_key[("pool", "small, float32", "backward")]["measured_over_predicted"] == 0.8
    # A model record nobody measured, and a measured direction the model lacks: "-" sides.
    unmeasured = by_key[("crop", "feature crops, float32", "forward")]
    assert unmeasured["measured_us"] is None and unmeasured["measured_over_predicted"] is None
    extra = by_key[("crop", "feature crops, float32", "backward (deterministic)")]
    assert extra["predicted_us"] is None and extra["measured_us"] == 30.0
    assert [compare.key(r) for r in rows][-1] == compare.key(extra)  # model's order first


def test_full_size_times_meet_the_models_extrapolation():
    record = model_record("pool", "small, float32", "forward", 2, 3_000_000, 10.0, 4.0)
    record["full"] = [{"case": "big, float32", "bytes_minimum": 8e8, "bytes_moved": 9e8,
                       "predicted_us": 306.0, "roofline_us": 269.7}]  # fmt: skip
    measured = {"op": "pool", "case": "big, float32", "direction": "forward",
                "median_us": 612.0, "sizes": "full"}  # fmt: skip
    times = {**TIMES, "records": [measured]}
    rows = compare.merge_times({"constants": MODEL["constants"], "records": [record]}, times)
    assert [(r["case"], r["extrapolated"]) for r in rows] == [
        ("small, float32", False),
        ("big, float32", True),
    ]
    big = rows[1]
    assert big["measured_over_predicted"] == pytest.approx(2.0)
    assert big["launches"] == 2 and big["sizes"] == "full"
    # The extrapolated bytes at the measured rate, the traced launches at the measured cost.
    assert big["repredicted_us"] == pytest.approx(2 * 5.0 + 9e8 / 2e12 * 1e6)
    text = "\n".join(compare.times_lines({"constants": MODEL["constants"], "records": [record]},
                                          times))  # fmt: skip
    assert "| pool | big, float32 (model extrapolated) | forward | 2 | 612.0 |" in text
    assert "without a model record" not in text


def test_kernels_pair_by_order_with_ratios():
    rows = compare.merge_kernels(MODEL, NCU)
    measured = [r for r in rows if r["measured"]]
    assert [r["index"] for r in measured] == [0, 1, 2]
    assert measured[0]["bytes_ratio"] == 1.5
    assert measured[1]["bytes_ratio"] == 0.5
    assert (measured[1]["model_load_spr"], measured[1]["ncu_load_spr"]) == (8.0, 6.0)
    assert measured[2]["model_kernel"] is None and measured[2]["bytes_ratio"] is None


def write_out(out: Path, times: dict | None, ncu: dict | None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if times is not None:
        (out / "model_times.json").write_text(json.dumps(times))
    if ncu is not None:
        (out / "model_ncu.json").write_text(json.dumps(ncu))


def test_the_section_sets_measured_beside_predicted(tmp_path):
    model_path = tmp_path / "gpu_model.json"
    model_path.write_text(json.dumps(MODEL))
    write_out(tmp_path / "out", TIMES, NCU)
    lines, problems, not_checked = compare.section(
        tmp_path / "out", model_path, {"times": True, "ncu": True}
    )
    text = "\n".join(lines)
    assert problems == [] and not_checked == []
    assert "device-to-device copy 2 TB/s (read + write; the model assumes 3.00)" in text
    assert "8.00 us for one small torch op alone, 5.00 us each in a stream" in text
    assert (
        "| pool | small, float32 | forward | 2 | 25.0 | 10.0 | 2.50 | 4.0 | 6.25 | 11.5 |" in text
    )
    # Unmeasured: 4 launches at 5 us, no bytes, with the measured constants.
    assert "| crop | feature crops, float32 | forward | 4 | - | 12.0 | - | 3.0 | - | 20.0 |" in text
    assert "| crop | feature crops, float32 | backward (deterministic) | quick | 30.0 |" in text
    # The error per op and direction: forward 25 / 10, backward 4 / 5.
    assert "| pool | forward | median 2.50, from 2.50 to 2.50 over 1 records |" in text
    assert "| pool | backward | median 0.80, from 0.80 to 0.80 over 1 records |" in text
    assert (
        "| pool | small, float32 | forward | 0 | `pool::a` | 1,500 | 1,000 | 1.50 | 4.0 |" in text
    )
    assert "`pool::b (ncu: pool::b2)` | 1,000 | 2,000 | 0.50 | 6.0 | 8.0 | - | 2.0 | 3.0 |" in text
    assert "| 2 | `pool::extra` | 64 | - | - |" in text


@pytest.mark.parametrize(
    ("ncu", "reported_as"),
    [
        ({"status": "refused", "reason": "ERR_NVGPUCTRPERM", "records": []}, "not checked"),
        ({"status": "not found", "reason": "no ncu", "records": []}, "not checked"),
        (
            {"status": "partial", "reason": "no time left for bfloat16", "records": []},
            "not checked",
        ),
        ({"status": "failed", "reason": "3 markers for 4 calls", "records": []}, "problem"),
        (None, "problem"),  # the step ran and left no JSON
    ],
)
def test_ncu_refused_is_not_measured_not_a_failure(tmp_path, ncu, reported_as):
    model_path = tmp_path / "gpu_model.json"
    model_path.write_text(json.dumps(MODEL))
    write_out(tmp_path / "out", TIMES, ncu)
    lines, problems, not_checked = compare.section(
        tmp_path / "out", model_path, {"times": True, "ncu": True}
    )
    found = not_checked if reported_as == "not checked" else problems
    assert len(found) == 1 and found[0].startswith("ncu: ")
    assert (problems if reported_as == "not checked" else not_checked) == []
    assert any(line.startswith("Nsight Compute: not measured (") for line in lines)
    # Nothing measured: no section, nothing said.
    assert compare.section(tmp_path / "out", model_path, {}) == ([], [], [])


def test_the_summary_carries_the_section_and_a_refused_ncu(tmp_path, monkeypatch):
    report = load("gpu_check_report")
    repo, out = tmp_path / "repo", tmp_path / "out"
    (repo / "benchmarks" / "results").mkdir(parents=True)
    (repo / "benchmarks" / "results" / "gpu_model.json").write_text(json.dumps(MODEL))
    (out / "logs").mkdir(parents=True)
    facts = {"date": "d", "commit": "c", "python": "3.12", "kernel": "4.4.0", "runtime": "gVisor"}
    facts |= {"cpus": 16, "nvcc": "13.0", "compute_sanitizer": None, "ncu": "2025.3.1.0"}
    facts |= {"pytest_timeout": "2.4", "missing_python_packages": [], "stop": None}
    facts |= {"nvidia_smi": "x", "torch": "2.11", "torch_cuda": "13.0", "gpu": "NVIDIA H200"}
    facts |= {"gpu_slug": "nvidia-h200", "gpu_arch": "9.0", "gpu_memory_gib": 139.8}
    (out / "facts.json").write_text(json.dumps(facts))
    monkeypatch.setenv("GPU_CHECK_START", str(time.time() - 60))
    (out / "build_info.json").write_text(
        json.dumps({"version": "0.1", "torch_version": "2.11", "cuda": True,
                    "cuda_architectures": "90"})
    )  # fmt: skip
    (out / "steps.tsv").write_text(
        "step\tstatus\tseconds\tlog\tnote\n"
        "times\tok\t20\tlogs/model_times.log\t\n"
        "ncu\tunsupported\t9\tlogs/model_ncu.log\tncu refused: Device not supported\n"
    )
    write_out(out, TIMES, {"status": "refused", "reason": "Device not supported"})
    assert report.write_summary(out, repo) == 0
    summary = (out / "summary.md").read_text()
    assert summary.startswith("# GPU check on NVIDIA H200: PASS, with parts not checked here")
    assert "## The GPU model against this GPU" in summary
    assert "| pool | small, float32 | forward | 2 | 25.0 | 10.0 | 2.50 |" in summary
    assert "- ncu: not measured (refused: Device not supported)" in summary
    # ncu's refusal is not compute-sanitizer's.
    assert "compute-sanitizer refused" not in summary


def test_a_fake_ncu_that_refuses_the_gpu(tmp_path):
    """ncu_main without a GPU: a stand-in for ncu that lets the program "run" (it writes the
    manifest the program writes at its end) and says the device is not supported."""
    pytest.importorskip("torchvision")  # the crop's benchmark cases import it
    fake = tmp_path / "ncu"
    fake.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        "args = sys.argv[1:]\n"
        "log = args[args.index('--log-file') + 1]\n"
        "open(args[args.index('profile') + 1], 'w').write('[]')\n"
        "open(log, 'w').write('==PROF== Connected\\n==ERROR== Device not supported\\n')\n"
    )
    fake.chmod(0o755)
    model = load("gpu_check_model")
    out = tmp_path / "out"
    out.mkdir()
    assert model.main(["ncu", str(out), "--ncu", str(fake), "--seconds", "60"]) == 3
    result = json.loads((out / "model_ncu.json").read_text())
    assert (result["status"], result["reason"]) == ("refused", "Device not supported")
    assert model.main(["ncu", str(out), "--ncu", "", "--seconds", "60"]) == 3
    assert json.loads((out / "model_ncu.json").read_text())["status"] == "not found"


def test_the_measured_records_carry_the_models_keys(tmp_path):
    """The times step on the CPU kernels (one op, quick sizes): its keys are the model's, as
    benchmarks/results/gpu_model.json has them (both from benchmarks/cases/runs.py)."""
    pytest.importorskip("torchvision")
    model = load("gpu_check_model")
    path = tmp_path / "times.json"
    arguments = ["times", str(path), "--device", "cpu", "--ops", "oriented_pool"]
    assert model.main([*arguments, "--quick-only", "--seconds", "120"]) == 0
    times = json.loads(path.read_text())
    assert times["complete"] and times["errors"] == []
    measured = [compare.key(r) for r in times["records"]]
    records = json.loads((BENCHMARKS / "results" / "gpu_model.json").read_text())["records"]
    assert measured == [compare.key(r) for r in records if r["op"] == "oriented_pool"]
    assert all(r["median_us"] > 0 for r in times["records"])
    constants = times["constants"]
    assert constants["copy_bytes_per_s"] > 0 and constants["launch_us_in_stream"] > 0


def test_every_model_record_is_one_of_the_shared_runs():
    """benchmarks/results/gpu_model.json's keys are among those cases/runs.py gives the GPU
    check to measure (the model may leave variants out: --quick)."""
    pytest.importorskip("torchvision")
    sys.path.insert(0, str(BENCHMARKS))
    from cases.runs import directions, model_runs

    runs = [(run.op, run.case, d) for run in model_runs() for d in directions(run.op)]
    assert len(set(runs)) == len(runs)
    records = json.loads((BENCHMARKS / "results" / "gpu_model.json").read_text())["records"]
    assert records and {compare.key(r) for r in records} <= set(runs)


table = load("gpu_model_table")


def test_the_readme_table_is_the_models():
    """README.md's table is what gpu_model_table.py writes from the committed JSON (rerun
    `python benchmarks/gpu_model_table.py` after regenerating the model)."""
    readme = (REPO / "README.md").read_text()
    model = json.loads((BENCHMARKS / "results" / "gpu_model.json").read_text())
    assert table.with_table(readme, model) == readme
    assert "until the first GPU run" in readme


def test_the_readme_table_takes_one_case_per_op_float32_every_direction():
    records = [
        model_record("crop", "image crops, float32", "forward", 4, 1, 13.25, 5.0),
        model_record("crop", "feature crops, bfloat16", "forward", 4, 1, 12.0, 3.0),
        model_record("crop", "feature crops, float32", "forward", 4, 1, 13.6, 4.6),
        model_record("crop", "feature crops, float32", "backward (deterministic)", 3, 1, 9.0, 4.0),
        model_record("crop", "feature crops, float32 channels-last", "forward", 4, 1, 1.0, 1.0),
        model_record("pool", "B=8, float32", "forward", 1, 1, 3.5, 3.4),
        model_record("pool", "B=8, bfloat16", "forward", 1, 1, 3.3, 3.2),
    ]
    text = table.table({"constants": {"LAUNCH_US": 2.5, "HBM_BYTES_PER_S": 3.2e12},
                        "records": records})  # fmt: skip
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[1:] == [
        "| crop | feature crops, float32 | forward | 4 | 13.6 | 4.6 |",
        "| crop | feature crops, float32 | backward (deterministic) | 3 | 9.0 | 4.0 |",
        "| pool | B=8, float32 | forward | 1 | 3.5 | 3.4 |",
    ]
    assert "launches x 2.5 us + DRAM bytes at 3.2 TB/s" in text
    with pytest.raises(ValueError, match="markers"):
        table.with_table("# no table here\n", {"constants": {}, "records": []})
    # Only the text between the markers changes.
    model = {"constants": {"LAUNCH_US": 1, "HBM_BYTES_PER_S": 1e12}, "records": records}
    new = table.with_table(f"a\n{table.BEGIN}\nold\n{table.END}\nb\n", model)
    assert new == f"a\n{table.table(model)}\nb\n" and "old" not in new


def test_the_readme_table_shows_each_full_case_labelled_an_extrapolation():
    records = [
        model_record("pool", "B=8, float32", "forward", 1, 1, 3.5, 3.4),
        model_record("pool", "B=8, float32", "backward", 2, 1, 6.5, 3.6),
        model_record("pool", "B=8, bfloat16", "forward", 1, 1, 3.3, 3.2),
    ]
    records[0]["full"] = [
        {"case": "B=96, float32", "predicted_us": 47.74, "roofline_us": 44.16},
        {"case": "B=512, float32", "predicted_us": 241.4, "roofline_us": 222.5},
    ]
    records[1]["full"] = []  # a case without a full counterpart keeps its traced columns
    text = table.table({"constants": {"LAUNCH_US": 3, "HBM_BYTES_PER_S": 3e12},
                        "records": records})  # fmt: skip
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert "full case (extrapolated)" in rows[0]
    assert rows[1:] == [
        "| pool | forward | 1 | B=8, float32 | 3.5 | 3.4 | B=96, float32 | 47.7 | 44.2 |",
        "| pool | forward | 1 | B=8, float32 | 3.5 | 3.4 | B=512, float32 | 241.4 | 222.5 |",
        "| pool | backward | 2 | B=8, float32 | 6.5 | 3.6 | - | - | - |",
    ]
    assert "**the full sizes (the paper's) are an extrapolation**" in text
    assert "`-`: not extrapolated" in text
