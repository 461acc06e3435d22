"""The facts, the commit stamp and the one-page summary of the GPU check (benchmarks/gpu_check.sh).

    python benchmarks/gpu_check_report.py facts OUT_DIR REPO
        Writes OUT_DIR/facts.json (the GPU and its architecture, the machine, the driver, torch,
        CUDA, nvcc, compute-sanitizer and pytest-timeout versions, the commit, the Python
        packages the check needs and lacks); exits 2, saying why, when there is no usable GPU.
    python benchmarks/gpu_check_report.py stamp REPO
        Writes REPO/.gpu_check_stamp.json: the commit (`git describe --always --dirty`) and a
        digest of every file git would copy (tracked, and untracked but not ignored), so that a
        copy of the tree without .git still names its commit, and says when the stamp is stale.
    python benchmarks/gpu_check_report.py summary OUT_DIR REPO
        Writes OUT_DIR/summary.md from what the check left in OUT_DIR and prints it, with the
        GPU model's predictions (REPO/benchmarks/results/gpu_model.json) beside what the steps
        "times" and "ncu" measured (gpu_check_compare.py); exits 0 when everything that ran
        passed, 1 when something failed, 2 when the check stopped before building (no usable
        GPU).

Only `facts` imports torch: the summary is written even where torch is broken.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

# Import names of the packages the steps use (the build, pytest, the benchmarks).
NEEDED_PYTHON_PACKAGES = {
    "pytest": "pytest",
    "pytest_timeout": "pytest-timeout",
    "numpy": "numpy",
    "tqdm": "tqdm",
    "torchvision": "torchvision",
    "PIL": "pillow",
    "scikit_build_core": "scikit-build-core",
}
SANITIZER_TOOLS = ("memcheck", "racecheck", "synccheck", "initcheck")
SANITIZER_LIST = "benchmarks/sanitizer_tests.txt"
STAMP = ".gpu_check_stamp.json"


def command_output(command: list[str]) -> str | None:
    """The stripped stdout of `command`, or None when it cannot run or fails."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def tool_version(path: str) -> str | None:
    """The version nvcc or compute-sanitizer reports ("13.0.88", "2025.3.1.0")."""
    if not path:
        return None
    text = command_output([path, "--version"]) or ""
    match = re.search(r"(?:release [\d.]+, V|Version )([\d.]+)", text)
    return match.group(1) if match else None


def git_output(repo: Path, *arguments: str) -> str | None:
    """git's output in `repo`, or None where `repo` is not the top of a git work tree (a copy
    of the tree without .git, or one inside another repository)."""
    top = command_output(["git", "-C", str(repo), "rev-parse", "--show-toplevel"])
    if top is None or Path(top).resolve() != repo.resolve():
        return None
    return command_output(["git", "-C", str(repo), *arguments])


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def write_stamp(repo: Path) -> int:
    describe = git_output(repo, "describe", "--always", "--dirty")
    listing = git_output(repo, "ls-files", "--cached", "--others", "--exclude-standard")
    if describe is None or listing is None:
        print(f"gpu_check: {repo} is not the top of a git work tree", file=sys.stderr)
        return 1
    paths = sorted({path for path in listing.splitlines() if (repo / path).is_file()})
    stamp = {
        "commit": describe,
        "written": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "files": {path: file_digest(repo / path) for path in paths},
    }
    (repo / STAMP).write_text(json.dumps(stamp, indent=0) + "\n")
    print(f"{repo / STAMP}: {describe}, {len(paths)} files")
    return 0


def commit_of(repo: Path) -> str:
    """The tree's commit: git's where .git is, else the stamp's, said to be stale when the tree
    has changed since the stamp was written."""
    describe = git_output(repo, "describe", "--always", "--dirty")
    if describe is not None:
        return describe
    path = repo / STAMP
    if not path.exists():
        return f"unknown (no .git, and no {STAMP}: see `benchmarks/gpu_check.sh --stamp`)"
    stamp = json.loads(path.read_text())
    changed = [
        name
        for name, digest in stamp["files"].items()
        if not (repo / name).is_file() or file_digest(repo / name) != digest
    ]
    if not changed:
        return f"{stamp['commit']} (from {STAMP} of {stamp['written']}; the tree matches it)"
    return (
        f"{stamp['commit']}, but STALE: {len(changed)} files changed since {STAMP} was written "
        f"({stamp['written']}), {', '.join(changed[:3])}"
    )


def runtime_of(kernel_release: str) -> str:
    """The sandbox a machine's kernel release suggests: gVisor reports the fixed release 4.4.0;
    the Firecracker-based machines' kernels carry "-fc-" (6.18.44-fc-v310-gpu)."""
    if kernel_release == "4.4.0":
        return "gVisor"
    return "Firecracker" if "-fc-" in kernel_release else "unknown"


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def gather_facts(repo: Path) -> dict:
    """Everything the summary reports about the machine; facts["stop"] is None when a GPU is
    usable, else the reason there is none."""
    facts: dict = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "commit": commit_of(repo),
        "kernel": platform.release(),
        "runtime": runtime_of(platform.release()),
        "cpus": os.cpu_count(),
        "nvcc": tool_version(os.environ.get("GPU_CHECK_NVCC", "")),
        "compute_sanitizer": tool_version(os.environ.get("GPU_CHECK_SANITIZER", "")),
        "ncu": tool_version(os.environ.get("GPU_CHECK_NCU", "")),
        "pytest_timeout": package_version("pytest-timeout"),
        "missing_python_packages": [
            wheel
            for module, wheel in NEEDED_PYTHON_PACKAGES.items()
            if importlib.util.find_spec(module) is None
        ],
        "stop": None,
    }
    smi = shutil.which("nvidia-smi")
    query = "name,driver_version,memory.total"
    smi_text = smi and command_output([smi, f"--query-gpu={query}", "--format=csv,noheader"])
    facts["nvidia_smi"] = smi_text.splitlines()[0] if smi_text else None
    try:
        import torch

        # The benchmarks' own name for the GPU, which their tables' file names carry.
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from timing import device_slug
    except ImportError as error:
        facts["stop"] = f"{sys.executable} cannot import torch ({error})"
        return facts
    facts["torch"] = torch.__version__
    facts["torch_cuda"] = torch.version.cuda
    if torch.version.cuda is None:
        facts["stop"] = f"no GPU found: torch {torch.__version__} was built without CUDA"
    elif not torch.cuda.is_available():
        seen = facts["nvidia_smi"] or ("no nvidia-smi" if smi is None else "nvidia-smi lists none")
        facts["stop"] = (
            f"no GPU found: torch.cuda.is_available() is False (nvidia-smi: {seen}; "
            f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})"
        )
    else:
        major, minor = torch.cuda.get_device_capability(0)
        properties = torch.cuda.get_device_properties(0)
        facts["gpu"] = torch.cuda.get_device_name(0)
        facts["gpu_slug"] = device_slug(torch.device("cuda", 0))
        # The build's TORCH_CUDA_ARCH_LIST: this GPU's architecture only.
        facts["gpu_arch"] = f"{major}.{minor}"
        facts["gpu_memory_gib"] = round(properties.total_memory / 2**30, 1)
        facts["gpu_count"] = torch.cuda.device_count()
    return facts


def write_facts(out: Path, repo: Path) -> int:
    facts = gather_facts(repo)
    (out / "facts.json").write_text(json.dumps(facts, indent=2) + "\n")
    if facts["stop"]:
        print(f"gpu_check: {facts['stop']}; stopping.", file=sys.stderr)
        return 2
    return 0


def read_steps(out: Path) -> list[dict]:
    path = out / "steps.tsv"
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"), strict=True)) for line in lines[1:]]


def junit_counts(path: Path) -> dict | None:
    """Passed, failed, error and skipped counts and the failing ids from a JUnit XML file."""
    if not path.exists():
        return None
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "failing": []}
    for case in ElementTree.parse(path).iter("testcase"):
        if case.get("name") is None:  # the test pytest was in when a signal stopped it
            continue
        outcome = "passed"
        for child in case:
            if child.tag == "failure":
                outcome = "failed"
            elif child.tag == "error":
                outcome = "errors"
            elif child.tag == "skipped" and outcome == "passed":
                outcome = "skipped"
        counts[outcome] += 1
        if outcome in ("failed", "errors"):
            counts["failing"].append(f"{case.get('classname')}::{case.get('name')}")
    return counts


def sanitizer_errors(log: Path) -> int | None:
    """The error count of compute-sanitizer's "ERROR SUMMARY" line; None without one."""
    if not log.exists():
        return None
    counts = re.findall(r"ERROR SUMMARY: (\d+) error", log.read_text(errors="replace"))
    return sum(int(count) for count in counts) if counts else None


def declared_kernels(repo: Path) -> list[str]:
    """The __global__ functions in csrc/, as "<op>::<name>": each op's kernels live in its folder
    csrc/<op>/ and namespace ssanet_ops::<op> (kernels of csrc/common/ as "common::<name>")."""
    # __global__ [__launch_bounds__(...)] void [__launch_bounds__(...)] name( ; the simulator's
    # "#define __global__" has no void after it.
    bounds = r"(?:__launch_bounds__\s*\([^)]*\)\s*)?"
    pattern = re.compile(rf"__global__\s+{bounds}void\s+{bounds}(\w+)\s*\(")
    kernels = set()
    for path in sorted((repo / "csrc").rglob("*")):
        if path.suffix in (".cu", ".cuh", ".h", ".hpp"):
            op = path.relative_to(repo / "csrc").parts[0]
            names = pattern.findall(path.read_text(errors="replace"))
            kernels.update(f"{op}::{name}" for name in names)
    return sorted(kernels)


def launches_of(kernel: str, launched: list[str]) -> list[str]:
    """The launched (demangled) kernel names that are `kernel` ("<op>::<name>")."""
    op, name = kernel.split("::")
    scope = "ssanet_ops::" if op == "common" else f"ssanet_ops::{op}::"
    return [k for k in launched if scope in k and re.search(rf"\b{name}\b", k)]


def kernel_coverage(out: Path, repo: Path) -> dict | None:
    """Which of csrc/'s kernels the sanitizer list launched (gpu_check_kernels.py's record)."""
    path = out / "kernels_launched.txt"
    if not path.exists():
        return None
    launched = path.read_text().splitlines()
    declared = declared_kernels(repo)
    return {
        "declared": declared,
        "missing": [kernel for kernel in declared if not launches_of(kernel, launched)],
    }


def fresh_json(path: Path, since: float) -> dict | None:
    """A benchmark's JSON if this run wrote it (not a previous run's leftover)."""
    if not path.exists() or path.stat().st_mtime < since:
        return None
    return json.loads(path.read_text())


def target_rows(ops: dict | None, model: dict | None) -> list[tuple[str, str, str, bool]]:
    """(benchmark, measured, target, met) for every benchmark result that has a target."""
    rows = []
    for row in (ops or {}).get("rows", []):
        if "target" in row:
            name = f"{row['op']} {row['size']}, {row['dtype']}, {row['pass']}"
            rows.append(
                (name, f"{row['ratio']:.2f}x", f">= {row['target']:g}x", row["meets_target"])
            )
    for row in (model or {}).get("rows", []):
        name = f"SSANet {row['part_features']}, {row['precision']}, batch {row['batch']}"
        if "latency_target_ms" in row:
            rows.append(
                (
                    f"{name}: latency",
                    f"{row['median_ms']:.2f} ms",
                    f"<= {row['latency_target_ms']:g} ms",
                    row["meets_latency_target"],
                )
            )
        if "meets_speedup_target" in row:
            rows.append(
                (
                    f"{name}: kernels vs reference ops",
                    f"{row['speedup_vs_reference']:.2f}x",
                    ">= 1.5x",
                    row["meets_speedup_target"],
                )
            )
    return rows


def machine_line(facts: dict) -> str:
    return (
        f"- machine: kernel {facts.get('kernel')} ({facts.get('runtime')}), "
        f"{facts.get('cpus')} CPUs; nvidia-smi: {facts.get('nvidia_smi')}"
    )


def versions_line(facts: dict) -> str:
    return (
        f"- torch {facts.get('torch')} (CUDA {facts.get('torch_cuda')}), "
        f"Python {facts.get('python')}, nvcc {facts.get('nvcc')}, "
        f"compute-sanitizer {facts.get('compute_sanitizer')}, ncu {facts.get('ncu')}, "
        f"pytest-timeout {facts.get('pytest_timeout')}"
    )


def stopped_summary(facts: dict) -> str:
    lines = ["# GPU check: STOPPED before the build", ""]
    if "date" in facts:
        lines.append(f"- {facts['date']}, commit {facts['commit']}")
    lines.append(f"- {facts['stop']}")
    if "date" in facts:
        lines += [machine_line(facts), versions_line(facts)]
    return "\n".join(lines) + "\n\nNothing was built, tested or timed.\n"


def sanitizer_findings(log: Path, limit: int = 3) -> list[str]:
    """The first `limit` findings compute-sanitizer reported in `log`, each with the place it
    names first (the kernel, for memcheck and initcheck)."""
    if not log.exists():
        return []
    findings: list[str] = []
    expects_place = False
    for line in log.read_text(errors="replace").splitlines():
        if re.match(r"=+ (Invalid|Error|Race|Barrier|Program hit|Uninitialized|Malloc)", line):
            findings.append(line.lstrip("=").strip())
            expects_place = True
        elif expects_place and (place := re.match(r"=+\s+at (.+)", line)):
            findings[-1] += f", at {place.group(1)[:160]}"
            expects_place = False
    return findings[:limit]


TESTS_SELECTION = '-m "cuda_kernels and not cuda_simulator"'
# pytest-timeout's message when a step's time limit stopped pytest between two tests.
SESSION_TIMEOUT = "session-timeout:"


def write_summary(out: Path, repo: Path) -> int:
    facts_path = out / "facts.json"
    if facts_path.exists():
        facts = json.loads(facts_path.read_text())
    else:
        facts = {"stop": "the facts step did not finish (logs/facts.log)"}
    if facts["stop"]:
        text = stopped_summary(facts)
        (out / "summary.md").write_text(text)
        print(text)
        return 2

    start = float(os.environ.get("GPU_CHECK_START", facts_path.stat().st_mtime))
    steps = read_steps(out)
    status = {step["step"]: step["status"] for step in steps}

    def ran(name: str) -> bool:
        return status.get(name) in ("ok", "failed", "timeout")

    problems = []
    for step in steps:
        if step["status"] not in ("failed", "timeout"):
            continue
        log = out / step["log"] if step["log"] else None
        if log and log.is_file() and SESSION_TIMEOUT in log.read_text(errors="replace"):
            note = "its time limit stopped pytest before the last test"
        else:
            note = step["note"]
        problems.append(f"step {step['step']}: {step['status']} ({note})")
    skipped: dict[str, list[str]] = {}
    for step in steps:
        if step["status"] == "skipped":
            skipped.setdefault(step["note"], []).append(step["step"])
    problems += [f"skipped: {', '.join(names)} ({note})" for note, names in skipped.items()]
    # What this machine could not check: reported, not failures.
    not_checked = []
    refused = [s for s in steps if s["status"] == "unsupported" and s["step"] in SANITIZER_TOOLS]
    if refused:
        not_checked.append(
            f"{', '.join(step['step'] for step in refused)}: compute-sanitizer refused this GPU "
            f"({refused[0]['note']}), as on the gVisor-based machines"
        )
    if facts["pytest_timeout"] is None:
        not_checked.append("no per-test time limit: pytest-timeout is not installed")
    lines = [
        "",  # the title, once the verdict is known
        "",
        f"- {facts['date']}, commit {facts['commit']}, {round(time.time() - start)} s "
        f"(budget {os.environ.get('GPU_CHECK_BUDGET_S', '?')} s)",
        f"- GPU: {facts['gpu']}, compute capability {facts['gpu_arch']}, "
        f"{facts['gpu_memory_gib']} GiB",
        machine_line(facts),
        versions_line(facts),
    ]
    build_path = out / "build_info.json"
    if ran("build") and status["build"] != "ok":
        lines.append("- ssanet_ops: the build failed (logs/build.log)")
    elif build_path.exists():
        build = json.loads(build_path.read_text())
        lines.append(
            f"- ssanet_ops {build['version']} built against torch {build['torch_version']}: "
            f"CUDA kernels {build['cuda']}, architectures {build['cuda_architectures']}"
        )
    else:
        lines.append("- ssanet_ops: not importable after the build")
        problems.append("ssanet_ops not importable")
    if facts["missing_python_packages"]:
        lines.append(f"- missing Python packages: {', '.join(facts['missing_python_packages'])}")

    lines += ["", "| step | result | seconds | log | note |", "|---|---|---:|---|---|"]
    lines += [
        f"| {step['step']} | {step['status']} | {step['seconds']} | {step['log']} "
        f"| {step['note']} |"
        for step in steps
    ]

    if ran("tests"):
        counts = junit_counts(out / "tests.xml")
        lines += ["", f"## CUDA tests (`pytest {TESTS_SELECTION}`)", ""]
        if counts is None:
            lines.append("No results (tests.xml missing).")
            problems.append("no CUDA test results")
        else:
            lines.append(
                f"{counts['passed']} passed, {counts['failed']} failed, "
                f"{counts['errors']} errors, {counts['skipped']} skipped."
            )
            lines += [f"- FAILED {name}" for name in counts["failing"][:20]]
            if len(counts["failing"]) > 20:
                lines.append(f"- ... and {len(counts['failing']) - 20} more (logs/tests.log)")
            if counts["failed"] or counts["errors"]:
                problems.append(f"{counts['failed'] + counts['errors']} CUDA tests failed")
            if not counts["passed"]:
                problems.append("no CUDA test passed")

    logs = {tool: out / "logs" / f"sanitizer-{tool}.log" for tool in SANITIZER_TOOLS}
    tools = [tool for tool in SANITIZER_TOOLS if ran(tool) and logs[tool].exists()]
    if tools or ran("kernels"):
        lines += ["", f"## compute-sanitizer on the tests in {SANITIZER_LIST}", ""]
    if tools:
        lines += ["| tool | errors | first findings | log |", "|---|---:|---|---|"]
    for tool in tools:
        errors = sanitizer_errors(logs[tool])
        findings = "; ".join(sanitizer_findings(logs[tool])).replace("|", "/")
        shown = "no summary" if errors is None else errors
        lines.append(f"| {tool} | {shown} | {findings} | logs/sanitizer-{tool}.log |")
        if errors is None:
            problems.append(f"{tool}: no error summary")
        elif errors:
            problems.append(f"{tool}: {errors} errors")
    if ran("kernels"):
        coverage = kernel_coverage(out, repo)
        if coverage is None:
            lines.append("\nKernels launched by the list: not recorded (step kernels).")
            problems.append("kernel launches not recorded")
        else:
            declared = len(coverage["declared"])
            launched = declared - len(coverage["missing"])
            lines.append(f"\nThe list launches {launched} of the {declared} kernels in csrc/.")
            if coverage["missing"]:
                lines.append(f"Not launched: {', '.join(coverage['missing'])}.")
                problems.append(f"{len(coverage['missing'])} kernels not launched by the list")

    benchmarks = {"bench-ops": "ops", "bench-model": "model"}
    results = {}
    for step, stem in benchmarks.items():
        if ran(step):
            results[stem] = fresh_json(out / f"{stem}_{facts['gpu_slug']}.json", start)
            if results[stem] is None:
                problems.append(f"{step}: no results")
    if results:
        tables = [f"{stem}_{facts['gpu_slug']}.md" for stem, data in results.items() if data]
        lines += ["", "## Benchmarks against their targets", ""]
        lines += [f"Tables: {', '.join(tables) or 'none'}.", ""]
        lines += ["| benchmark | measured | target | |", "|---|---:|---|---|"]
        for name, measured, target, met in target_rows(results.get("ops"), results.get("model")):
            lines.append(f"| {name} | {measured} | {target} | {'met' if met else 'NOT MET'} |")
            if not met:
                problems.append(f"target not met: {name}")

    # The GPU model's predictions beside this GPU's times and Nsight Compute's counters.
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from gpu_check_compare import section

    measured = {"times": ran("times"), "ncu": ran("ncu") or status.get("ncu") == "unsupported"}
    model_lines, model_problems, model_not_checked = section(
        out, repo / "benchmarks" / "results" / "gpu_model.json", measured
    )
    lines += model_lines
    problems += model_problems
    not_checked += model_not_checked

    verdict = "PASS" if not problems else f"FAIL ({len(problems)} problems)"
    if not_checked:
        verdict += ", with parts not checked here"
    if "not selected" in status.values():
        chosen = [step["step"] for step in steps if step["status"] != "not selected"]
        verdict += f", steps run: {', '.join(chosen) or 'none'} (GPU_CHECK_STEPS)"
    lines[0] = f"# GPU check on {facts['gpu']}: {verdict}"
    if problems:
        lines += ["", "## Problems", ""] + [f"- {problem}" for problem in problems]
    if not_checked:
        lines += ["", "## Not checked on this machine", ""] + [f"- {item}" for item in not_checked]
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text)
    print(text)
    return 0 if not problems else 1


def main(argv: list[str]) -> int:
    if argv[:1] == ["stamp"] and len(argv) == 2:
        return write_stamp(Path(argv[1]))
    if len(argv) != 3 or argv[0] not in ("facts", "summary"):
        print(__doc__, file=sys.stderr)
        return 64
    out, repo = Path(argv[1]), Path(argv[2])
    return write_facts(out, repo) if argv[0] == "facts" else write_summary(out, repo)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
