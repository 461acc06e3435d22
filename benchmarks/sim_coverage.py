"""Line coverage of the CUDA kernels under the host simulator (issue 9).

    python benchmarks/sim_coverage.py            # build, run the simulated tests, write the table
    python benchmarks/sim_coverage.py -- -k oriented_pool   # pytest arguments after --

Builds the simulator's op library (libssanet_ops_sim.so) on its own in build/sim-coverage (CMake
option SSANET_OPS_SIM_COVERAGE: --coverage and AddressSanitizer), runs every test marked
cuda_simulator against that build (SSANET_OPS_SIM_LIBRARY), reads the counts with gcov and
writes, for every csrc/*/kernels.cuh, its executable and covered lines, the lines never run,
every __global__ kernel with the instantiations (dtype, index type) that ran and how often, and
every gpu::launch call, to benchmarks/results/sim_coverage.md. Needs gcc's gcov and the package
installed (the tests import it); the installed _C and CPU op library are used as they are.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build" / "sim-coverage"
RESULT = ROOT / "benchmarks" / "results" / "sim_coverage.md"


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    print("+", " ".join(str(part) for part in command), flush=True)
    return subprocess.run(command, check=True, **kwargs)


def build() -> Path:
    import ssanet_ops

    run(
        [
            "cmake", "-S", str(ROOT), "-B", str(BUILD), "-G", "Ninja",
            "-DSSANET_OPS_CUDA=off", "-DSSANET_OPS_SIM=on", "-DSSANET_OPS_SIM_COVERAGE=on",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DSKBUILD_PROJECT_VERSION={ssanet_ops.__version__}",
        ],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", "1")
    run(["cmake", "--build", str(BUILD), "--target", "ssanet_ops_sim", "-j", jobs])
    (library,) = BUILD.glob("libssanet_ops_sim*.so")
    return library


def run_tests(library: Path, pytest_args: list[str]) -> int:
    for counts in BUILD.rglob("*.gcda"):
        counts.unlink()
    runtimes = [
        subprocess.run(
            ["gcc", f"-print-file-name={name}"], capture_output=True, text=True, check=True
        ).stdout.strip()
        for name in ("libasan.so", "libstdc++.so")
    ]
    env = dict(
        os.environ,
        SSANET_OPS_SIM_LIBRARY=str(library),
        # The instrumented simulator needs the ASan runtime loaded first, and libstdc++ with it
        # (ASan intercepts its exceptions); leaks and ODR are torch's and Python's business.
        LD_PRELOAD=" ".join(runtimes),
        ASAN_OPTIONS="detect_leaks=0:detect_odr_violation=0",
    )
    command = [sys.executable, "-m", "pytest", "-q", "-m", "cuda_simulator", *pytest_args]
    print("+", " ".join(command), flush=True)
    return subprocess.run(command, cwd=ROOT, env=env).returncode


def gcov_files() -> dict[str, dict]:
    """gcov's JSON for every source file the instrumented objects cover, by path."""
    files: dict[str, dict] = {}
    for notes in sorted(BUILD.rglob("*.gcno")):
        output = subprocess.run(
            ["gcov", "--json-format", "--stdout", "--demangled-names", str(notes)],
            capture_output=True,
            text=True,
            check=True,
            cwd=BUILD,
        ).stdout
        for line in output.splitlines():
            if not line.strip():
                continue
            for entry in json.loads(line)["files"]:
                path = str(Path(entry["file"]).resolve())
                merged = files.setdefault(path, {"lines": defaultdict(int), "functions": {}})
                for record in entry["lines"]:
                    merged["lines"][record["line_number"]] += record["count"]
                for function in entry["functions"]:
                    name = function["demangled_name"]
                    previous = merged["functions"].get(name, {"execution_count": 0})
                    merged["functions"][name] = {
                        "start_line": function["start_line"],
                        "execution_count": previous["execution_count"]
                        + function["execution_count"],
                    }
    return files


def ranges(numbers: list[int]) -> str:
    """1, 2, 3, 7 -> '1-3, 7'."""
    spans: list[list[int]] = []
    for number in numbers:
        if spans and number == spans[-1][1] + 1:
            spans[-1][1] = number
        else:
            spans.append([number, number])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def report(files: dict[str, dict], tests_rc: int, pytest_args: list[str]) -> str:
    headers = sorted((ROOT / "csrc").glob("*/kernels.cuh"))
    lines = [
        "# Line coverage of the CUDA kernels under the host simulator",
        "",
        f"`python benchmarks/sim_coverage.py {' '.join(pytest_args)}`".replace(" `", "`"),
        f"({datetime.date.today().isoformat()}): the tests marked `cuda_simulator` "
        f"({'passed' if tests_rc == 0 else f'pytest exit status {tests_rc}'}), against the "
        "simulator built with `--coverage` (optimised as the normal build) and "
        "AddressSanitizer; counts from gcov. A kernel instantiation's count is how many "
        "simulated GPU threads ran it.",
        "",
        "| kernel header | executable lines | covered | not run (lines) |",
        "|---|---:|---:|---|",
    ]
    details: list[str] = []
    for header in headers:
        relative = header.relative_to(ROOT)
        data = files.get(str(header.resolve()))
        if data is None:
            lines.append(f"| `{relative}` | - | not compiled into the simulator | |")
            continue
        counts = data["lines"]
        source = header.read_text().splitlines()
        missed = sorted(number for number, count in counts.items() if count == 0)
        covered = len(counts) - len(missed)
        # gcov counts a function's closing brace as a line of its own, which a function whose
        # every path returns earlier never reaches: not a statement of the kernels.
        braces = [number for number in missed if source[number - 1].strip() == "}"]
        missed_text = ranges([number for number in missed if number not in braces]) or "none"
        if braces:
            missed_text += f" (and closing braces {ranges(braces)}, not statements)"
        lines.append(
            f"| `{relative}` | {len(counts)} | {covered} ({100 * covered / len(counts):.0f} %) "
            f"| {missed_text} |"
        )
        # __global__ [__launch_bounds__(...)] void [__launch_bounds__(...)] name(
        bounds = r"(?:__launch_bounds__\s*\([^)]*\)\s*)?"
        kernels = re.findall(rf"__global__\s+{bounds}void\s+{bounds}(\w+)\s*\(", header.read_text())
        details += ["", f"## `{relative}`", "", "| `__global__` kernel | instantiation | runs |"]
        details.append("|---|---|---:|")
        for kernel in kernels:
            instances = {
                name: function
                for name, function in data["functions"].items()
                # Not the lambdas defined inside the kernel, which gcov lists as functions too.
                if re.search(rf"::{kernel}(<|\()", name) and "::{lambda" not in name
            }
            if not instances:
                details.append(f"| `{kernel}` | never instantiated | 0 |")
            for name, function in sorted(instances.items()):
                arguments = re.search(rf"::{kernel}<(.*?)>\(", name)
                label = arguments.group(1) if arguments else "-"
                details.append(f"| `{kernel}` | `{label}` | {function['execution_count']} |")
        details += ["", "| launch (line) | runs |", "|---|---:|"]
        for number, text in enumerate(source, start=1):
            if "gpu::launch(" in text:
                launched = re.search(r"gpu::launch\((\w+)", text)
                label = launched.group(1) if launched else text.strip()
                details.append(f"| `{label}` ({number}) | {counts.get(number, 0)} |")
    return "\n".join(lines + details) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args()
    if shutil.which("gcov") is None:
        sys.exit("gcov (from gcc) is needed to read the coverage counts")
    library = build()
    tests_rc = run_tests(library, args.pytest_args)
    RESULT.write_text(report(gcov_files(), tests_rc, args.pytest_args))
    print(f"wrote {RESULT.relative_to(ROOT)}")
    sys.exit(tests_rc)


if __name__ == "__main__":
    main()
