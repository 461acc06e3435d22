#!/usr/bin/env bash
# The one-call GPU check (README, "GPU check"):
#
#     benchmarks/gpu_check.sh OUT_DIR
#
# On a Linux machine with an NVIDIA GPU, nvcc and a CUDA build of torch already installed, and no
# network: builds ssanet_ops for this GPU's architecture only into the current Python environment,
# runs the CUDA tests, compute-sanitizer (memcheck, racecheck, synccheck) on the short list of
# tests in benchmarks/sanitizer_tests.txt, and the operator and model benchmarks, and writes the
# logs, the tables and summary.md into OUT_DIR.
#
# Every step runs under `timeout`; the whole check keeps to GPU_CHECK_BUDGET_S (460 s: under
# 8 minutes on an H100 or H200). A failed step is recorded and the next one runs, except that
# nothing runs on a failed build (an older installed build would be tested instead).
# Exit status: 0 everything passed (every test, no sanitizer error, every kernel launched by the
# sanitizer list, every benchmark target met), 1 something failed, 2 no usable GPU (nothing was
# built or run), 64 wrong usage.
#
# Environment: PYTHON (default python3, the environment that has torch), GPU_CHECK_BUDGET_S,
# GPU_CHECK_STEPS (the steps to run, default all: build kernels tests memcheck racecheck
# synccheck bench-ops bench-model), GPU_CHECK_WHEELHOUSE (a folder of wheels to install missing
# Python packages from, offline).
set -uo pipefail

if [ $# -ne 1 ] || [ -z "$1" ]; then
  echo "usage: $0 OUT_DIR" >&2
  exit 64
fi
repo=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$1/logs" || exit 64
out=$(cd "$1" && pwd)
logs="$out/logs"
python=${PYTHON:-python3}
budget=${GPU_CHECK_BUDGET_S:-460}
selected=" ${GPU_CHECK_STEPS:-build kernels tests memcheck racecheck synccheck bench-ops bench-model} "
report="$repo/benchmarks/gpu_check_report.py"
start=$(date +%s)
# pip: no version check (no network), and installs into a system Python's environment too
# (PEP 668), for machines whose torch is installed there.
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_BREAK_SYSTEM_PACKAGES=1 PYTHONUNBUFFERED=1 TQDM_DISABLE=1
export GPU_CHECK_START="$start" GPU_CHECK_BUDGET_S="$budget"
# A previous check's files in OUT_DIR go (the benchmark tables are overwritten, and the summary
# reads only those written after this start).
rm -f "$out"/{summary.md,facts.json,build_info.json,tests.xml,tests_selection.txt} \
  "$out/kernels_launched.txt" "$logs"/*.log
printf 'step\tstatus\tseconds\tlog\tnote\n' > "$out/steps.tsv"

# The steps in order, NAME:CAP:FLOOR. A step runs for at most CAP seconds and never into the
# FLOOR seconds kept for each later step, so the whole check ends within the budget however long
# one step takes; a step left with less than its own floor is skipped.
plan=(build:240:0 kernels:60:15 tests:120:30 memcheck:90:25 racecheck:60:20 synccheck:60:20
  bench-ops:90:25 bench-model:90:25)

# Ctrl-C stops the running step too: timeout passes the TERM on to the step's process group.
step_pid=""
trap '[ -n "$step_pid" ] && kill -TERM "$step_pid" 2> /dev/null; echo "[gpu_check] interrupted" >&2; exit 130' INT TERM

record() {  # NAME STATUS SECONDS LOG NOTE
  printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "${4#"$out"/}" "$5" >> "$out/steps.tsv"
}

# run_step NAME LOG COMMAND...: COMMAND's stdout and stderr go to LOG; its outcome to steps.tsv.
run_step() {
  local name=$1 log=$2 cap=0 floor=0 later=0 found=0 entry step step_cap step_floor
  shift 2
  for entry in "${plan[@]}"; do
    IFS=: read -r step step_cap step_floor <<< "$entry"
    if (( found )); then
      later=$(( later + step_floor ))
    elif [ "$step" = "$name" ]; then
      found=1 cap=$step_cap floor=$step_floor
    fi
  done
  if [[ "$selected" != *" $name "* ]]; then
    record "$name" "not selected" 0 "" "GPU_CHECK_STEPS leaves it out"
    return 0
  fi
  local left=$(( start + budget - $(date +%s) - later ))
  (( cap > left )) && cap=$left
  if (( cap < floor || cap < 5 )); then
    record "$name" skipped 0 "" "no time left in the ${budget} s budget"
    return 1
  fi
  echo "[gpu_check] $name (at most ${cap} s): $*" | tee "$log" >&2
  local t0 rc
  t0=$(date +%s)
  # timeout signals the command's whole process group (pip's cmake and nvcc, pytest under
  # compute-sanitizer), and kills it 5 s later if it is still there. In the background, so that
  # the trap below can stop it.
  timeout --kill-after=5 "$cap" "$@" >> "$log" 2>&1 &
  step_pid=$!
  wait "$step_pid"
  rc=$?
  step_pid=""
  local seconds=$(( $(date +%s) - t0 ))
  if (( rc == 124 || rc == 137 )); then
    record "$name" timeout "$seconds" "$log" "stopped after its ${cap} s"
  elif (( rc != 0 )); then
    record "$name" failed "$seconds" "$log" "exit status $rc"
  else
    record "$name" ok "$seconds" "$log" ""
  fi
  echo "[gpu_check] $name: exit status $rc after ${seconds} s" >&2
  return "$rc"
}

skip_rest() {  # NOTE: records every remaining step as skipped
  local entry step
  for entry in "${plan[@]}"; do
    step=${entry%%:*}
    grep -q "^$step	" "$out/steps.tsv" || record "$step" skipped 0 "" "$1"
  done
}

summarise() {
  "$python" "$report" summary "$out" "$repo"
  exit $?
}

# nvcc and compute-sanitizer: on PATH, else in CUDACXX's, CUDA_HOME's, CUDA_PATH's or
# /usr/local/cuda's bin.
find_cuda_tool() {
  local root
  command -v "$1" && return 0
  for root in "$(dirname "$(dirname "${CUDACXX:-/nonexistent/bin/nvcc}")")" "${CUDA_HOME:-}" \
    "${CUDA_PATH:-}" /usr/local/cuda; do
    if [ -n "$root" ] && [ -x "$root/bin/$1" ]; then
      echo "$root/bin/$1"
      return 0
    fi
  done
  return 1
}
GPU_CHECK_NVCC=$(find_cuda_tool nvcc) || GPU_CHECK_NVCC=""
sanitizer=$(find_cuda_tool compute-sanitizer) || sanitizer=""
export GPU_CHECK_NVCC GPU_CHECK_SANITIZER="$sanitizer"

if ! command -v "$python" > /dev/null; then
  printf '# GPU check: STOPPED\n\n%s\n' "No Python interpreter '$python' (set PYTHON)." \
    | tee "$out/summary.md"
  exit 2
fi

# The GPU, the versions, the missing tools; prints the GPU's architecture ("9.0"), or says why
# there is no usable GPU and exits 2.
if ! arch=$("$python" "$report" facts "$out" "$repo" 2> "$logs/facts.log"); then
  cat "$logs/facts.log" >&2
  summarise
fi

# Python packages the steps need and the environment lacks, from a local folder of wheels.
missing=$("$python" -c 'import json, sys; print(" ".join(json.load(open(sys.argv[1]))["missing_python_packages"]))' "$out/facts.json")
if [ -n "$missing" ] && [ -n "${GPU_CHECK_WHEELHOUSE:-}" ]; then
  # shellcheck disable=SC2086  # one word per package
  "$python" -m pip install --no-index --find-links "$GPU_CHECK_WHEELHOUSE" $missing \
    > "$logs/wheelhouse.log" 2>&1 || echo "[gpu_check] installing $missing failed" >&2
fi

# The package, built for this GPU only against the installed torch, editable as in the README
# (the tests import it from the source tree), without build isolation or any index.
if ! run_step build "$logs/build.log" env SSANET_OPS_CUDA=on TORCH_CUDA_ARCH_LIST="$arch" \
  CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" "$python" -m pip install -v --no-build-isolation \
  --no-deps --no-index -e "$repo"; then
  if [[ "$selected" == *" build "* ]]; then
    skip_rest "the build failed"
    summarise
  fi
fi
# How the imported package was built (CUDA kernels, architectures), from outside the source tree.
(cd / && "$python" -c 'import json, ssanet_ops; print(json.dumps(ssanet_ops.build_info()))') \
  > "$out/build_info.json" 2>> "$logs/build.log" || rm -f "$out/build_info.json"

cd "$repo" || exit 1
mapfile -t smoke < <(sed -e 's/#.*//' -e 's/[[:space:]]*$//' -e '/^$/d' benchmarks/sanitizer_tests.txt)
pytest=("$python" -m pytest -q -p no:cacheprovider)

# The sanitizer list without a sanitizer, recording the CUDA kernels it launches (the summary
# checks that it launches every kernel of csrc/).
run_step kernels "$logs/kernels.log" env PYTHONPATH="$repo/benchmarks${PYTHONPATH:+:$PYTHONPATH}" \
  GPU_CHECK_KERNELS_FILE="$out/kernels_launched.txt" "${pytest[@]}" -p gpu_check_kernels \
  "${smoke[@]}"

# The CUDA tests on the GPU: those marked cuda_kernels, less the simulator's variants (marked
# cuda_simulator; CI runs them); in a tree without these markers, every test with "cuda" in its id.
markers=$("${pytest[@]}" --markers 2> /dev/null)
if [[ "$markers" == *"@pytest.mark.cuda_simulator"* ]]; then
  select=(-m "cuda_kernels and not cuda_simulator")
elif [[ "$markers" == *"@pytest.mark.cuda_kernels"* ]]; then
  select=(-m cuda_kernels)
else
  select=(-k cuda)
fi
printf '%s "%s"\n' "${select[@]}" > "$out/tests_selection.txt"
run_step tests "$logs/tests.log" "${pytest[@]}" -rfE --junitxml="$out/tests.xml" "${select[@]}"

# compute-sanitizer checks only this package's kernels (their mangled names hold "ssanet_ops"):
# ATen's and cuBLAS's run unchecked, which keeps each run short. CUDA API errors are not its
# to report: torch probes the driver with calls that may fail, and a failed launch of ours
# fails its test. Without the caching allocator every tensor is its own allocation, so memcheck
# sees an access past a tensor's end.
for tool in memcheck racecheck synccheck; do
  if [ -z "$sanitizer" ]; then
    [[ "$selected" == *" $tool "* ]] && record "$tool" failed 0 "" "compute-sanitizer not found"
    continue
  fi
  run_step "$tool" "$logs/sanitizer-$tool.log" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
    "$sanitizer" --tool "$tool" --kernel-name kns=ssanet_ops --report-api-errors no \
    --error-exitcode 86 "${pytest[@]}" "${smoke[@]}"
done

# The benchmarks at full size on the GPU; the model at batch 1 (the latency targets) without
# torch.compile (compiling ResNet-50 takes minutes).
run_step bench-ops "$logs/bench_ops.log" "$python" benchmarks/bench_ops.py --device cuda \
  --output-dir "$out"
run_step bench-model "$logs/bench_model.log" "$python" benchmarks/bench_model.py --device cuda \
  --batch-sizes 1 --compile off --output-dir "$out"

summarise
