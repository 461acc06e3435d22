"""The GPU model's op calls measured on a GPU: the GPU check's steps "times" and "ncu"
(benchmarks/gpu_check.sh; docs/testing.md, "GPU check").

    python benchmarks/gpu_check_model.py times OUT_JSON [--seconds S] [--device cuda]
        The op calls of benchmarks/cases/runs.py (the ones benchmarks/gpu_model.py models, under
        the same keys), forward and backward, timed with CUDA events after warm-up: the median
        of repeated calls, at the cases' quick sizes (the model's) and then the full ones, as
        long as S seconds allow; and the model's two constants measured: the device-to-device
        copy rate and the cost of a launch. Rewrites OUT_JSON after each run.
    python benchmarks/gpu_check_model.py ncu OUT_DIR [--seconds S] [--ncu PATH]
        Nsight Compute's counters of one launch of every kernel of those calls at the quick
        sizes (DRAM bytes, sectors per global load and store request, duration): runs `profile`
        below under ncu and writes OUT_DIR/model_ncu.json. Exit status 3 when ncu is missing or
        refuses this GPU (then the JSON says why), 1 when it failed otherwise.
    python benchmarks/gpu_check_model.py profile MANIFEST [--variants LABEL ...]
        The program ncu runs: each op call once, after a marker kernel (torch.cuda._sleep) that
        splits ncu's list of launches into calls; MANIFEST lists the calls' keys in order.

`--device cpu` runs `times` on the CPU kernels (wall-clock medians), to check the script where
no GPU is. benchmarks/gpu_check_compare.py sets these records beside the model's.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from cases.runs import DETERMINISTIC_BACKWARD, VARIANTS, Run, directions, model_runs  # noqa: E402
from gpu_check_compare import NCU_METRICS, attribute, ncu_refusal, parse_ncu_csv  # noqa: E402
from timing import copy_bandwidth_gbs, device_name, median_ms  # noqa: E402

# Calls per measurement: warm-up, then timed (the median is reported).
REPEATS = {"quick": (5, 30), "full": (2, 10)}
LAUNCH_STREAM = 100  # small ops back to back, for the launch cost within a stream
# The profiling runs, one ncu process each, most wanted first: a run that ncu's time limit
# stops loses only its own records.
NCU_CHUNKS = (("float32",), ("bfloat16", "float32 channels-last"))
REFUSED_EXIT = 3


def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in _tensors(item)]
    return []


@contextlib.contextmanager
def deterministic(on: bool):
    """torch.use_deterministic_algorithms(True) inside, when `on` (warn_only: an op without a
    deterministic path warns instead of failing)."""
    before = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    if on:
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn_only)


def op_calls(run: Run, device: torch.device) -> dict:
    """The run's calls by direction, as gpu_model.py traces them: the forward with autograd
    recording; the backward of its first output with a random gradient to every input that
    requires one (the graph kept, so that it can be called again)."""
    inputs = run.make_inputs(device)
    differentiable = [t for t in _tensors(list(inputs.values())) if t.requires_grad]

    def forward():
        return run.function(**inputs)

    output = _tensors(forward())[0]
    gradient = torch.randn_like(output)

    def backward():
        return torch.autograd.grad(output, differentiable, gradient, retain_graph=True)

    return {d: forward if d == "forward" else backward for d in directions(run.op)}


def measure_constants(device: torch.device) -> dict:
    """The model's constants on this device: the copy rate (bytes read + written per second of
    a device-to-device copy of 256 MB) and the cost of a launch: one small torch op (an add to
    one element) timed alone, and each of LAUNCH_STREAM of them timed back to back."""
    small = torch.zeros(1, device=device)
    alone = median_ms(lambda: small.add_(1), device, repeats=50, warmup=10)

    def stream():
        for _ in range(LAUNCH_STREAM):
            small.add_(1)

    in_stream = median_ms(stream, device, repeats=10, warmup=2) / LAUNCH_STREAM
    megabytes = 256 if device.type == "cuda" else 16
    return {
        "copy_bytes_per_s": copy_bandwidth_gbs(device, megabytes) * 1e9,
        "copy_megabytes": megabytes,
        "launch_us": alone * 1e3,
        "launch_us_in_stream": in_stream * 1e3,
    }


def write_json(path: Path, data: dict) -> None:
    """Written whole or not at all (a step stopped by its deadline leaves the last one)."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(temporary, path)


def times_main(args) -> int:
    start = time.monotonic()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check_model: no CUDA device", file=sys.stderr)
        return 2
    timer = "CUDA events around each call" if device.type == "cuda" else "wall clock"
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": device_name(device),
        "torch": torch.__version__,
        "method": f"the median of {REPEATS['quick'][1]} calls after {REPEATS['quick'][0]} "
        f"warm-up calls ({REPEATS['full'][1]} after {REPEATS['full'][0]} at the full sizes), "
        f"{timer}; the forward records autograd's graph, the backward is "
        "torch.autograd.grad of the first output (retain_graph), as gpu_model.py traces them.",
        "constants": {},
        "records": [],
        "errors": [],
        "complete": False,
    }
    write_json(args.out, result)
    result["constants"] = measure_constants(device)
    write_json(args.out, result)
    plan = [("quick", run) for run in model_runs(False, True, args.ops)]
    if not args.quick_only:
        plan += [("full", run) for run in model_runs(True, True, args.ops)]
    longest = {"quick": 0.0, "full": 0.0}
    for sizes, run in plan:
        left = args.seconds - (time.monotonic() - start)
        # A run starts only where it should end in time, as the longest of its sizes did.
        if left < max(2.0, 1.5 * longest[sizes]):
            result["stopped"] = f"no time left for the {sizes} sizes from {run.op} {run.case}"
            break
        began = time.monotonic()
        warmup, repeats = REPEATS[sizes]
        try:
            for direction, call in op_calls(run, device).items():
                with deterministic(direction == DETERMINISTIC_BACKWARD):
                    ms = median_ms(call, device, repeats, warmup)
                result["records"].append(
                    {"op": run.op, "case": run.case, "direction": direction, "sizes": sizes,
                     "median_us": ms * 1e3, "repeats": repeats, "warmup": warmup}
                )  # fmt: skip
        except (RuntimeError, ValueError) as error:  # out of memory, an op's refusal
            result["errors"].append(f"{run.op} {run.case}: {str(error).splitlines()[0][:200]}")
        if device.type == "cuda":
            torch.cuda.empty_cache()
        longest[sizes] = max(longest[sizes], time.monotonic() - began)
        write_json(args.out, result)
    else:
        result["complete"] = True
    write_json(args.out, result)
    print(f"{args.out}: {len(result['records'])} records", file=sys.stderr)
    return 0 if result["records"] and not result["errors"] else 1


def profile_main(args) -> int:
    """Under ncu: every call once, each after a marker; a marker and a "setup" entry also before
    each run's preparation, whose forward launches the op's kernels too."""
    device = torch.device("cuda")
    manifest = []
    for run in model_runs(False, True):
        if run.variant not in args.variants:
            continue
        torch.cuda._sleep(1000)
        manifest.append({"op": run.op, "case": run.case, "direction": "setup"})
        calls = op_calls(run, device)
        for direction, call in calls.items():
            torch.cuda.synchronize()
            torch.cuda._sleep(1000)
            manifest.append({"op": run.op, "case": run.case, "direction": direction})
            with deterministic(direction == DETERMINISTIC_BACKWARD):
                call()
        torch.cuda.synchronize()
    # Written last: a manifest means the program ran to its end.
    args.manifest.write_text(json.dumps(manifest, indent=0) + "\n")
    return 0


def ncu_command(ncu: str, log: Path, manifest: Path, variants: tuple[str, ...]) -> list[str]:
    return [
        ncu, "--csv", "--print-units", "base", "--log-file", str(log),
        "--kernel-name-base", "demangled", "--print-kernel-base", "demangled",
        "--kernel-name", "regex:.*(ssanet_ops|spin_kernel).*",
        "--metrics", ",".join(NCU_METRICS.values()),
        sys.executable, str(Path(__file__).resolve()), "profile", str(manifest),
        "--variants", *variants,
    ]  # fmt: skip


def ncu_main(args) -> int:
    start = time.monotonic()
    out = args.out_dir
    result = {"status": "measured", "reason": "", "ncu": args.ncu, "records": []}
    path = out / "model_ncu.json"
    if not args.ncu:
        result |= {"status": "not found", "reason": "no ncu on PATH or in the CUDA toolkit"}
        write_json(path, result)
        return REFUSED_EXIT
    for index, variants in enumerate(NCU_CHUNKS):
        left = args.seconds - (time.monotonic() - start)
        if left < 20:
            result |= {"status": "partial", "reason": f"no time left for {', '.join(variants)}"}
            break
        log, manifest = out / f"ncu-{index}.csv", out / f"ncu-{index}-manifest.json"
        for stale in (log, manifest):
            stale.unlink(missing_ok=True)
        command = ncu_command(args.ncu, log, manifest, variants)
        print(f"[gpu_check_model] {' '.join(command)}", file=sys.stderr, flush=True)
        # In a session of its own, so that a run past its time goes with the program it
        # profiles.
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )  # fmt: skip
        try:
            output, _ = process.communicate(timeout=left - 5)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate()
            result |= {"status": "partial", "reason": f"ncu passed its time on {variants}"}
            print(output[-4000:], file=sys.stderr)
            break
        print(output[-4000:], file=sys.stderr)
        text = log.read_text(errors="replace") if log.exists() else ""
        launches = parse_ncu_csv(text + "\n" + output)
        if not launches:
            refusal = ncu_refusal(text + "\n" + output)
            # The program ran to its end (its manifest is there) but nothing was profiled:
            # ncu refused this GPU. Without the manifest the program itself failed.
            status = "refused" if manifest.exists() else "failed"
            reason = refusal or f"ncu exit status {process.returncode}, no kernel profiled"
            result |= {"status": status, "reason": reason}
            break
        try:
            records = attribute(launches, json.loads(manifest.read_text()))
        except (OSError, ValueError) as error:
            result |= {"status": "failed", "reason": f"{variants}: {error}"}
            break
        result["records"] += [r for r in records if r["direction"] != "setup"]
        write_json(path, result)
    write_json(path, result)
    # The last line of the step's log: the script's note when ncu is missing or refused.
    note = " ".join(str(result["reason"] or path).split())  # one line, no tab (steps.tsv)
    print(f"ncu {result['status']}: {note}", file=sys.stderr)
    if result["status"] in ("refused", "not found"):
        return REFUSED_EXIT
    return 0 if result["status"] == "measured" else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    times = commands.add_parser("times")
    times.add_argument("out", type=Path)
    times.add_argument("--seconds", type=float, default=60.0)
    times.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    times.add_argument("--ops", nargs="+", help="only these ops")
    times.add_argument("--quick-only", action="store_true", help="not the full sizes")
    ncu = commands.add_parser("ncu")
    ncu.add_argument("out_dir", type=Path)
    ncu.add_argument("--seconds", type=float, default=60.0)
    ncu.add_argument("--ncu", default=os.environ.get("GPU_CHECK_NCU", ""))
    profile = commands.add_parser("profile")
    profile.add_argument("manifest", type=Path)
    labels = [label for label, _, _ in VARIANTS]
    profile.add_argument("--variants", nargs="+", default=labels, choices=labels)
    args = parser.parse_args(argv)
    handlers = {"times": times_main, "ncu": ncu_main, "profile": profile_main}
    return handlers[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
