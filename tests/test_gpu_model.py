"""benchmarks/gpu_model.py (issue 24): the memory-traffic model's counting, on synthetic traces
of kernels whose answers are known, and on one real traced run where the trace build exists."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def load_gpu_model():
    spec = importlib.util.spec_from_file_location("gpu_model", ROOT / "benchmarks/gpu_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gpu_model = load_gpu_model()
BASE = 1 << 20  # sector-aligned


def trace(accesses, shuffle_seed: int | None = 0) -> np.ndarray:
    """Records (thread, address, bytes, kind[, site]) of one block, each thread's in its
    program order, the threads interleaved at random as the simulator runs them."""
    events = np.zeros(len(accesses), dtype=gpu_model.EVENT)
    for index, access in enumerate(accesses):
        thread, address, size, kind, *site = access
        events[index] = (address, 0, thread, site[0] if site else 1, 0, size, kind)
    if shuffle_seed is None:
        return events
    # Interleave the threads: a random order that keeps each thread's records in sequence.
    rng = np.random.default_rng(shuffle_seed)
    keys = rng.random(len(events))
    order = np.lexsort((np.arange(len(events)), events["thread"]))  # per thread, in order
    by_thread = events[order]
    starts = np.flatnonzero(np.r_[True, by_thread["thread"][1:] != by_thread["thread"][:-1]])
    sorted_keys = np.concatenate(
        [np.sort(part) for part in np.split(keys, starts[1:])]
    )  # increasing within each thread
    return by_thread[np.argsort(sorted_keys, kind="stable")]


def test_a_coalesced_copy_uses_every_sector():
    threads = 64  # two warps, each reading and writing 32 consecutive floats
    out = BASE + 4096
    accesses = [(t, BASE + 4 * t, 4, gpu_model.LOAD) for t in range(threads)]
    accesses += [(t, out + 4 * t, 4, gpu_model.STORE) for t in range(threads)]
    figures = gpu_model.launch_traffic(trace(accesses))
    assert figures["load_requests"] == 2 and figures["store_requests"] == 2
    assert figures["load_sectors_per_request"] == 4 and figures["store_sectors_per_request"] == 4
    assert figures["sector_use"] == 1.0
    assert figures["bytes_moved"] == 2 * threads * 4
    assert figures["bytes_stored"] == threads * 4


def test_a_stride_8_float_read_uses_an_eighth_of_each_sector():
    accesses = [(t, BASE + 4 * 8 * t, 4, gpu_model.LOAD) for t in range(32)]
    figures = gpu_model.launch_traffic(trace(accesses))
    assert figures["load_requests"] == 1
    assert figures["load_sectors_per_request"] == 32
    assert figures["sector_use"] == 1 / 8
    assert figures["bytes_moved"] == 32 * gpu_model.SECTOR


def test_a_histogram_counts_its_atomics_per_address():
    bins, threads = 4, 96
    accesses = [(t, BASE + 4 * (t % bins), 4, gpu_model.ATOMIC) for t in range(threads)]
    figures = gpu_model.launch_traffic(trace(accesses))
    assert figures["atomics"] == threads
    assert figures["atomics_most_on_one_address"] == threads // bins
    # The four bins share one sector, read and written back once.
    assert figures["bytes_moved"] == 2 * gpu_model.SECTOR
    assert figures["load_requests"] == 0 and figures["store_requests"] == 0


def test_a_loop_makes_one_request_per_iteration_and_warp():
    # A grid-stride loop: iteration k of thread t reads float t + 32 k. Each iteration of the
    # warp is one coalesced request, however the threads' records interleave.
    iterations = 3
    accesses = [
        (t, BASE + 4 * (t + 32 * k), 4, gpu_model.LOAD)
        for t in range(32)
        for k in range(iterations)
    ]
    for seed in range(3):
        figures = gpu_model.launch_traffic(trace(accesses, shuffle_seed=seed))
        assert figures["load_requests"] == iterations
        assert figures["load_sectors_per_request"] == 4 and figures["sector_use"] == 1.0


def test_sites_and_broadcasts():
    # Two instruction sites are two requests; all threads reading one float use 4 bytes of the
    # one sector; a 16-byte load across a sector boundary touches two.
    accesses = [(t, BASE, 4, gpu_model.LOAD, 1) for t in range(32)]
    accesses += [(0, BASE + 4096 + 24, 16, gpu_model.LOAD, 2)]
    figures = gpu_model.launch_traffic(trace(accesses))
    assert figures["load_requests"] == 2
    assert figures["load_sectors_per_request"] == (1 + 2) / 2
    assert figures["sector_use"] == (4 + 16) / (3 * gpu_model.SECTOR)


def test_the_prediction_adds_launches_and_bytes_at_the_stated_rate():
    constants = gpu_model.CONSTANTS
    bytes_moved = 3 * 10**9
    expected = 2 * constants["LAUNCH_US"] + bytes_moved / constants["HBM_BYTES_PER_S"] * 1e6
    assert gpu_model.predicted_us(2, bytes_moved) == pytest.approx(expected)


def trace_library() -> Path | None:
    named = os.environ.get("SSANET_OPS_SIM_TRACE_LIBRARY")
    if named:
        return Path(named)
    built = sorted((ROOT / "build" / "sim-trace").glob("libssanet_ops_sim*.so"))
    return built[0] if built else None


needs_trace_build = pytest.mark.skipif(
    trace_library() is None,
    reason="no trace build of the simulator (python benchmarks/gpu_model.py builds one)",
)


def traced_records(tmp_path, op: str) -> list[dict]:
    """The model's records of ``op`` at the quick sizes, from the trace build."""
    records_path = tmp_path / "model.json"
    subprocess.run(
        [
            sys.executable, str(ROOT / "benchmarks/gpu_model.py"), "--quick",
            "--ops", op, "--library", str(trace_library()),
            "--json", str(records_path), "--markdown", str(tmp_path / "model.md"),
        ],
        check=True, capture_output=True,
    )  # fmt: skip
    return json.loads(records_path.read_text())["records"]


@needs_trace_build
def test_a_traced_oriented_pool_writes_each_output_byte_once(tmp_path):
    records = traced_records(tmp_path, "oriented_pool")
    forward, backward = records[0], records[1]
    assert (forward["direction"], backward["direction"]) == ("forward", "backward")
    # The quick case's input, B=8 256x7x7 (benchmarks/cases/oriented_pool.py).
    x = torch.zeros(8, 256, 7, 7)
    import ssanet_ops

    output = ssanet_ops.oriented_pool(x)
    # The forward writes each output value once, and the argmax it saves for the backward (at
    # most one byte per value); the backward each element of the input's gradient once.
    stored = sum(k["bytes_stored"] for k in forward["kernels"])
    assert output.numel() * 4 < stored <= output.numel() * (4 + 1)
    assert sum(k["bytes_stored"] for k in backward["kernels"]) == x.numel() * 4
    for record in (forward, backward):
        assert record["launches"] == len(record["kernels"]) >= 1
        assert record["bytes_moved"] >= sum(k["bytes_stored"] for k in record["kernels"])
        assert 0 < record["sector_use"] <= 1
        # The tiled kernels read and write whole sectors (issue 24), and __syncthreads() adds
        # no access of its own (a barrier's bookkeeping once counted as a 1-byte store).
        assert record["sector_use"] >= 0.8


def test_deterministic_algorithms_is_restored():
    enabled = torch.are_deterministic_algorithms_enabled()
    with gpu_model.deterministic_algorithms():
        assert torch.are_deterministic_algorithms_enabled()
    assert torch.are_deterministic_algorithms_enabled() == enabled


@needs_trace_build
def test_a_traced_crop_models_its_deterministic_backward(tmp_path):
    records = traced_records(tmp_path, "multiscale_roi_crop")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from cases import roi_crop

    for case in roi_crop.cases(quick=True):
        calls = {r["direction"]: r for r in records if r["case"].startswith(case.size)}
        assert set(calls) == {"forward", "backward", "backward (deterministic)"}
        x = case.make_inputs(torch.device("cpu"), torch.float32)["input"]
        atomic, gather = calls["backward"], calls["backward (deterministic)"]
        # The atomic backward adds into the input gradient with atomics; the gather writes
        # each of its elements once, with none.
        assert sum(k["atomics"] for k in atomic["kernels"]) > 0
        assert sum(k["atomics"] for k in gather["kernels"]) == 0
        (gathering,) = [k for k in gather["kernels"] if "gather" in k["kernel"]]
        assert gathering["bytes_stored"] == x.numel() * 4
        assert gather["bytes_minimum"] == atomic["bytes_minimum"]
        for record in calls.values():
            assert record["launches"] == len(record["kernels"]) >= 1


# --- The full sizes: an extrapolation of the traced calls ----------------------------------------


def test_the_extrapolation_keeps_launches_and_bytes_per_minimum_byte():
    record = {"launches": 2, "bytes_moved": 3_000, "bytes_minimum": 2_000}
    full = gpu_model.extrapolate(record, "big", 2_000_000_000)
    assert full["case"] == "big" and full["bytes_minimum"] == 2_000_000_000
    assert full["bytes_moved"] == 3_000_000_000  # 1.5 bytes moved per minimum byte
    assert full["predicted_us"] == pytest.approx(gpu_model.predicted_us(2, 3_000_000_000))
    assert full["roofline_us"] == pytest.approx(gpu_model.predicted_us(1, 2_000_000_000))
    # Launch-bound when traced (2 launches of 3 us beside 1 us of bytes), byte-bound at full size.
    assert full["predicted_us"] / full["roofline_us"] == pytest.approx(1.5, rel=0.01)


def test_the_time_target_is_judged_at_the_full_sizes():
    def record(traced, at_full):
        return {
            "op": "op", "launches": 2, "bytes_moved": 1, "bytes_minimum": 1, "kernels": [],
            "predicted_us": traced, "roofline_us": 1.0,
            "full": [{"case": "full case", "predicted_us": at_full, "roofline_us": 1.0}],
        }  # fmt: skip

    assert gpu_model.misses(record(traced=2.0, at_full=1.1)) == []
    assert gpu_model.misses(record(traced=1.2, at_full=1.6)) == [
        "time 1.6x roofline at full case (extrapolated)"
    ]
    without_full = {**record(traced=2.0, at_full=0), "full": []}
    assert gpu_model.misses(without_full) == ["time 2.0x roofline at the traced size"]


def test_every_full_case_stands_on_one_traced_case():
    pytest.importorskip("torchvision")
    from cases.runs import model_runs

    quick = list(model_runs(full_sizes=False))
    covered = [full.case for run in quick for full in gpu_model.full_runs(run)]
    assert all(gpu_model.full_runs(run) for run in quick)
    assert sorted(covered) == sorted(run.case for run in model_runs(full_sizes=True))
    for run in quick:
        assert {(f.op, f.variant) for f in gpu_model.full_runs(run)} == {(run.op, run.variant)}


def test_the_minimum_from_shapes_is_the_minimum_of_a_real_call():
    """full_minimum_bytes (meta tensors) against minimum_bytes of a real call on the CPU, at the
    quick sizes in every variant; and at one full size against the case's own element count."""
    pytest.importorskip("torchvision")
    from cases.runs import model_runs

    for run in model_runs(full_sizes=False):
        inputs = run.make_inputs(torch.device("cpu"))
        assert gpu_model.full_minimum_bytes(run) == gpu_model.minimum_bytes(
            inputs, run.function(**inputs)
        ), run.case
    pool = next(model_runs(full_sizes=True, all_variants=False, ops=["oriented_pool"]))
    minimum = gpu_model.full_minimum_bytes(pool)
    # One forward reads x and writes the four orientations (cases/oriented_pool.py); the
    # backward reads x and the output gradient and writes x's gradient.
    x = pool.make_inputs(torch.device("meta"))["x"].numel()
    assert minimum["forward"] == 4 * pool.source.forward_elements
    assert minimum["backward"] == 4 * (pool.source.forward_elements + x)


# Traced at the quick size and at a larger one: (op, builder in its cases module, arguments).
LARGER = {
    "oriented_pool": ("oriented_pool", "_maps", (16, 512, 7)),  # 4x the quick case's bytes
}
SCALED_TRACE = """
import dataclasses, importlib, json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import gpu_model
from cases.runs import model_runs
op, module, builder, arguments = json.loads(sys.argv[3])
tracer = gpu_model.Tracer(Path(sys.argv[2]))
run = next(model_runs(full_sizes=False, all_variants=False, ops=[op]))
made = getattr(importlib.import_module("cases." + module), builder)(*arguments)
# A builder gives make_inputs, or (make_inputs, the ssanet_ops call at those sizes, ...).
source = dataclasses.replace(run.source, make_inputs=made)
if isinstance(made, tuple):
    calls = {"ssanet_ops": made[1]}
    source = dataclasses.replace(source, make_inputs=made[0], implementations=calls)
larger = dataclasses.replace(run, source=source)
print(json.dumps([gpu_model.op_calls(r, tracer) for r in (run, larger)]))
"""


def traced_at_two_sizes(op: str, module: str, builder: str, arguments) -> list[list[dict]]:
    """The records of op's quick float32 case and of the case `builder(*arguments)` makes."""
    result = subprocess.run(
        [sys.executable, "-c", SCALED_TRACE, str(ROOT / "benchmarks"), str(trace_library()),
         json.dumps([op, module, builder, arguments])],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return json.loads(result.stdout.splitlines()[-1])


@needs_trace_build
@pytest.mark.parametrize("op", sorted(LARGER))
def test_the_bytes_per_minimum_byte_and_sector_use_hold_at_a_larger_size(op):
    """What the extrapolation to the full sizes assumes, traced at a second, larger size."""
    quick, larger = traced_at_two_sizes(op, *LARGER[op])
    for small, big in zip(quick, larger, strict=True):
        assert big["bytes_minimum"] >= 2 * small["bytes_minimum"]
        assert big["launches"] == small["launches"]
        ratios = [r["bytes_moved"] / r["bytes_minimum"] for r in (small, big)]
        assert ratios[1] == pytest.approx(ratios[0], rel=0.02), small["direction"]
        for k_small, k_big in zip(small["kernels"], big["kernels"], strict=True):
            assert k_big["sector_use"] == pytest.approx(k_small["sector_use"], abs=0.02)


@needs_trace_build
def test_scale_aligns_backward_bytes_grow_with_its_minimum():
    """scale_align's backward is one traced kernel (align_backward_kernel) that reads each input
    once and writes each gradient once: at 4x D its bytes per minimum byte hold, as the
    extrapolation assumes. The op stays unextrapolated for its forward (NOT_EXTRAPOLATED)."""
    assert "scale_align" in gpu_model.NOT_EXTRAPOLATED
    quick, larger = traced_at_two_sizes("scale_align", "scale_align", "_align_inputs",
                                        (16, 5, 4 * 512, 50))  # fmt: skip
    small, big = (next(r for r in records if r["direction"] == "backward")
                  for records in (quick, larger))  # fmt: skip
    assert big["bytes_minimum"] > 3.5 * small["bytes_minimum"]
    assert big["launches"] == small["launches"] == 1
    ratios = [r["bytes_moved"] / r["bytes_minimum"] for r in (small, big)]
    assert ratios[1] == pytest.approx(ratios[0], rel=0.01)
