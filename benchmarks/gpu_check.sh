#!/usr/bin/env bash
# The GPU check in one command (docs/testing.md, "GPU check"):
#
#     benchmarks/gpu_check.sh [--archive DIR] OUT_DIR   # on the GPU machine
#     benchmarks/gpu_check.sh --stamp                   # where git is, before copying the tree
#
# On a Linux machine with an NVIDIA GPU, nvcc and a CUDA build of torch already installed, and no
# network: builds ssanet_ops for this GPU's architecture only (CUDA library, no simulator) into
# the environment of $PYTHON, runs the CUDA tests, compute-sanitizer (memcheck, racecheck,
# synccheck, initcheck) on the few tests of benchmarks/sanitizer_tests.txt, the operator and
# model benchmarks, and the op calls of the GPU model (benchmarks/gpu_model.py): their times with
# CUDA events and, where Nsight Compute runs, their kernels' DRAM bytes and sectors per request
# (benchmarks/gpu_check_model.py); and writes the logs, the tables and summary.md, which sets
# the measurements beside the model's predictions, into OUT_DIR. With --archive
# DIR it then packs OUT_DIR into DIR/gpu_check.tar.gz and copies summary.md beside it: two
# files, for machines that return only a few. The summary is printed last.
#
# Budget, made for a machine that runs one command for at most 600 s: each step has a cap (the
# `plan` below) and must end by the sum of the caps up to and including its own, counted from
# the start, under `timeout`. Time a step leaves unused goes to the later ones, and a slow step
# never takes their share. The caps add up to 525 s; the summary and the archive take at most
# 15 s more: the check ends within 540 s, the build included, 60 s inside 600 s.
# The build for one architecture without the simulator takes about 90 CPU seconds, 15 for its
# largest file. pytest runs with pytest-timeout: 60 s for one test, and no new test after the
# step's time less 20 s, so a slow or hung test costs neither tests.xml nor a sanitizer's error
# summary.
#
# The commit: `git describe` of the tree; where the tree arrived without .git, the stamp that
# `--stamp` wrote (.gpu_check_stamp.json, git-ignored: copy it along), checked against the tree.
#
# Exit status: 0 everything that ran passed (every test, no sanitizer error, every kernel
# launched by the sanitizer list, every benchmark target met, the model's calls measured), 1
# something failed, 2 no usable GPU (nothing was built or run), 64 wrong usage.
# compute-sanitizer or ncu refusing the device ("Device not supported", as on gVisor-based
# machines), or ncu missing, is reported, not a failure.
#
# Environment: PYTHON (default python3, the environment that has torch), GPU_CHECK_STEPS (the
# steps to run, default all: build import kernels tests memcheck racecheck synccheck initcheck
# bench-ops bench-model times ncu).
set -uo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
report="$repo/benchmarks/gpu_check_report.py"
usage="usage: $0 [--archive DIR] OUT_DIR, or $0 --stamp"

if [ "${1:-}" = --stamp ] && [ $# -eq 1 ]; then
  exec "$python" "$report" stamp "$repo"
fi
archive_dir=""
if [ "${1:-}" = --archive ] && [ $# -eq 3 ] && [ -n "$2" ]; then
  archive_dir=$2
  shift 2
fi
if [ $# -ne 1 ] || [ -z "$1" ] || [[ "$1" == -* ]]; then
  echo "$usage" >&2
  exit 64
fi
mkdir -p "$1/logs" || exit 64
out=$(cd "$1" && pwd)
logs="$out/logs"
if [ -n "$archive_dir" ]; then
  mkdir -p "$archive_dir" || exit 64
  archive_dir=$(cd "$archive_dir" && pwd)
fi

# name:cap, in seconds, in the order the steps run.
plan=(facts:20 build:80 import:15 kernels:30 tests:115 memcheck:35 racecheck:30 synccheck:30
  initcheck:45 bench-ops:35 bench-model:20 times:30 ncu:40)
finish_cap=15  # the summary (10 s) and the archive (5 s)
budget=$finish_cap
for entry in "${plan[@]}"; do budget=$(( budget + ${entry#*:} )); done
all_steps="build import kernels tests memcheck racecheck synccheck initcheck bench-ops"
all_steps+=" bench-model times ncu"
selected=" ${GPU_CHECK_STEPS:-$all_steps} facts "
start=$(date +%s)
# pip: no version check (no network), and installs into a system Python's environment too
# (PEP 668), for machines whose torch is installed there.
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_BREAK_SYSTEM_PACKAGES=1 PYTHONUNBUFFERED=1 TQDM_DISABLE=1
export GPU_CHECK_START="$start" GPU_CHECK_BUDGET_S="$budget"
# A previous check's files in OUT_DIR go (the benchmark tables are overwritten, and the summary
# reads only those written after this start).
rm -f "$out"/{summary.md,facts.json,build_info.json,tests.xml,kernels_launched.txt} "$logs"/*.log \
  "$out"/{gpu_model.json,model_times.json,model_ncu.json} "$out"/ncu-*
printf 'step\tstatus\tseconds\tlog\tnote\n' > "$out/steps.tsv"

record() {  # NAME STATUS SECONDS LOG NOTE
  printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "${4#"$out"/}" "$5" >> "$out/steps.tsv"
}

# begin_step NAME [LEAST]: sets `left`, the seconds until NAME's deadline; records and returns
# 1 when NAME is not selected or has less than LEAST seconds left (default 10).
begin_step() {
  local entry deadline=$start
  for entry in "${plan[@]}"; do
    deadline=$(( deadline + ${entry#*:} ))
    [ "${entry%%:*}" = "$1" ] && break
  done
  if [[ "$selected" != *" $1 "* ]]; then
    record "$1" "not selected" 0 "" "GPU_CHECK_STEPS leaves it out"
    return 1
  fi
  left=$(( deadline - $(date +%s) ))
  if (( left < ${2:-10} )); then
    record "$1" skipped 0 "" "no time left"
    return 1
  fi
}

# run_capped NAME LOG COMMAND...: COMMAND, its output to LOG, within `left`; sets `rc` and
# `seconds`. `timeout` sends SIGINT to the command's process group (pytest then still writes its
# report, pip stops cmake and nvcc) and SIGKILL 5 s later. In the background, so that the trap
# below can stop it.
step_pid=""
run_capped() {
  local name=$1 log=$2 t0
  shift 2
  echo "[gpu_check] $name (at most ${left} s): $(printf '%q ' "$@")" | tee "$log" >&2
  t0=$(date +%s)
  timeout --signal=INT --kill-after=5 $(( left - 5 )) "$@" >> "$log" 2>&1 &
  step_pid=$!
  wait "$step_pid"
  rc=$?
  step_pid=""
  seconds=$(( $(date +%s) - t0 ))
  echo "[gpu_check] $name: exit status $rc after ${seconds} s" >&2
}

record_outcome() {  # NAME LOG: from `rc` and `seconds`
  if (( rc == 124 || rc == 137 )); then
    record "$1" timeout "$seconds" "$2" "stopped at its deadline"
  elif (( rc != 0 )); then
    record "$1" failed "$seconds" "$2" "exit status $rc"
  else
    record "$1" ok "$seconds" "$2" ""
  fi
}

run_step() {  # NAME LOG COMMAND...: returns 1 unless COMMAND ran and succeeded
  begin_step "$1" || return 1
  run_capped "$@"
  record_outcome "$1" "$2"
  return "$rc"
}

skip_rest() {  # NOTE: records every step not recorded yet as skipped
  local entry step
  for entry in "${plan[@]}"; do
    step=${entry%%:*}
    grep -q "^$step	" "$out/steps.tsv" || record "$step" skipped 0 "" "$1"
  done
}

# finish [STATUS]: the summary (unless STATUS, the exit status, is given because it was written
# already), then the archive; prints the summary last and exits with the summary's status.
finish() {
  local status=${1:-} file
  trap - INT TERM
  if [ -z "$status" ]; then
    timeout 10 "$python" "$report" summary "$out" "$repo" > /dev/null
    status=$?
  fi
  [ -f "$out/summary.md" ] || printf '# GPU check: no summary (exit status %s)\n' "$status" \
    > "$out/summary.md"
  if [ -n "$archive_dir" ]; then
    # A log too large for the archive (a machine returns files of at most 16 MiB) keeps its
    # first 1 MiB and last 4 MiB.
    while IFS= read -r -d '' file; do
      { head -c 1M "$file"; printf '\n[gpu_check: cut here]\n'; tail -c 4M "$file"; } > "$file.cut"
      mv "$file.cut" "$file"
    done < <(find "$logs" -type f -size +8M -print0)
    file=$(mktemp)
    timeout 5 tar -czf "$file" --exclude=./gpu_check.tar.gz -C "$out" . && chmod 644 "$file" \
      && mv "$file" "$archive_dir/gpu_check.tar.gz"
    [ "$out" = "$archive_dir" ] || cp "$out/summary.md" "$archive_dir/summary.md"
    echo "[gpu_check] $(du -h "$archive_dir/gpu_check.tar.gz" | cut -f1) archive of $out:" \
      "$archive_dir/gpu_check.tar.gz, and summary.md beside it" >&2
  fi
  echo
  cat "$out/summary.md"
  exit "$status"
}

# Ctrl-C or SIGTERM stops the running step too (timeout passes the TERM on to the step's
# process group), then the summary and the archive are written.
# shellcheck disable=SC2329  # the trap calls it
interrupted() {
  [ -n "$step_pid" ] && kill -TERM "$step_pid" 2> /dev/null
  echo "[gpu_check] interrupted" >&2
  skip_rest interrupted
  finish
}
trap interrupted INT TERM

# nvcc, compute-sanitizer and ncu: on PATH, else in CUDACXX's, CUDA_HOME's, CUDA_PATH's or
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
GPU_CHECK_NCU=$(find_cuda_tool ncu) || GPU_CHECK_NCU=""
export GPU_CHECK_NVCC GPU_CHECK_SANITIZER="$sanitizer" GPU_CHECK_NCU

if ! command -v "$python" > /dev/null; then
  printf '# GPU check: STOPPED before the build\n\nNo Python interpreter %s (set PYTHON).\n' \
    "$python" > "$out/summary.md"
  finish 2
fi

# The GPU, its architecture, the machine, the versions, the commit; exits 2, saying why, when
# there is no usable GPU.
if ! run_step facts "$logs/facts.log" "$python" "$report" facts "$out" "$repo"; then
  cat "$logs/facts.log" >&2
  finish
fi
fact() {  # KEY: a value of facts.json
  "$python" -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' \
    "$out/facts.json" "$1"
}

# The package, editable as in the README (the tests import it from the source tree), built
# against the installed torch without build isolation or any index, for this GPU's
# architecture only and without the simulator (CI tests that).
if ! run_step build "$logs/build.log" env SSANET_OPS_CUDA=on SSANET_OPS_SIM=off \
  TORCH_CUDA_ARCH_LIST="$(fact gpu_arch)" ${GPU_CHECK_NVCC:+CUDACXX="$GPU_CHECK_NVCC"} \
  CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" "$python" -m pip install -v --no-build-isolation \
  --no-deps --no-index -e "$repo" && [[ "$selected" == *" build "* ]]; then
  skip_rest "the build failed"
  finish
fi
# How the imported package was built (CUDA kernels, architectures), from outside the source tree.
if ! run_step import "$logs/import.log" env -C / "$python" -c \
  'import json, sys, ssanet_ops; json.dump(ssanet_ops.build_info(), open(sys.argv[1], "w"))' \
  "$out/build_info.json" && [[ "$selected" == *" import "* ]]; then
  skip_rest "ssanet_ops does not import"
  finish
fi

cd "$repo" || exit 1
mapfile -t smoke < <(sed -e 's/#.*//' -e 's/[[:space:]]*$//' -e '/^$/d' benchmarks/sanitizer_tests.txt)
pytest=("$python" -m pytest -q -p no:cacheprovider)
# pytest-timeout's limits within `left` (ignored, with a warning, where it is missing): 60 s a
# test, no new test in the last 20 s. A step that runs pytest begins with at least 25 s left;
# each has a cap of 30 s or more, which leaves room when the step before it ran to its deadline.
pytest_limits() {
  echo -o timeout=60 -o timeout_method=signal -o session_timeout=$(( left - 20 ))
}

# The sanitizer list without a sanitizer, recording the CUDA kernels it launches (the summary
# checks that it launches every kernel of csrc/).
if begin_step kernels 25; then
  # shellcheck disable=SC2046  # pytest_limits prints separate words
  run_capped kernels "$logs/kernels.log" env \
    PYTHONPATH="$repo/benchmarks${PYTHONPATH:+:$PYTHONPATH}" \
    GPU_CHECK_KERNELS_FILE="$out/kernels_launched.txt" "${pytest[@]}" $(pytest_limits) \
    -p gpu_check_kernels "${smoke[@]}"
  record_outcome kernels "$logs/kernels.log"
fi

# The CUDA tests on the GPU: those marked cuda_kernels, less the simulator's variants (marked
# cuda_simulator; CI runs them).
if begin_step tests 25; then
  # shellcheck disable=SC2046
  run_capped tests "$logs/tests.log" "${pytest[@]}" $(pytest_limits) -rfE \
    --junitxml="$out/tests.xml" -m "cuda_kernels and not cuda_simulator"
  record_outcome tests "$logs/tests.log"
fi

# compute-sanitizer checks only this package's kernels (their mangled names hold "ssanet_ops"):
# ATen's and cuBLAS's run unchecked, which keeps each run short. initcheck checks them all: it
# must see the writes of every kernel to know which memory is initialised, and a read of an
# output element our kernels left unwritten happens in torch's kernels. CUDA API errors are not
# its to report: torch probes the driver with calls that may fail, and a failed launch of ours
# fails its test. Without the caching allocator every tensor is its own allocation, so memcheck
# sees an access past a tensor's end and initcheck a read of memory no one wrote.
refused=""
for tool in memcheck racecheck synccheck initcheck; do
  begin_step "$tool" 25 || continue
  if [ -z "$sanitizer" ]; then
    record "$tool" failed 0 "" "compute-sanitizer not found"
    continue
  elif [ -n "$refused" ]; then
    record "$tool" unsupported 0 "" "$refused"
    continue
  fi
  filter=(--kernel-name kns=ssanet_ops)
  [ "$tool" = initcheck ] && filter=()
  log="$logs/sanitizer-$tool.log"
  # shellcheck disable=SC2046
  run_capped "$tool" "$log" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$sanitizer" --tool "$tool" \
    "${filter[@]}" --report-api-errors no --error-exitcode 86 \
    "${pytest[@]}" $(pytest_limits) "${smoke[@]}"
  if grep -q "Device not supported" "$log"; then
    refused="compute-sanitizer: Device not supported"
    record "$tool" unsupported "$seconds" "$log" "$refused"
  else
    record_outcome "$tool" "$log"
  fi
done

# The benchmarks at full size on the GPU; the model at batch 1 (the latency targets) without
# torch.compile (compiling ResNet-50 takes minutes).
run_step bench-ops "$logs/bench_ops.log" "$python" benchmarks/bench_ops.py --device cuda \
  --output-dir "$out"
run_step bench-model "$logs/bench_model.log" "$python" benchmarks/bench_model.py --device cuda \
  --batch-sizes 1 --compile off --output-dir "$out"

# The op calls the GPU model predicts (benchmarks/cases/runs.py), timed with CUDA events at the
# model's sizes, then the full ones while time lasts, with the copy rate and the launch cost;
# then Nsight Compute's counters of one launch of each of their kernels. Each script stops
# itself 10 s before its step's deadline and keeps what it measured.
if begin_step times 15; then
  cp "$repo/benchmarks/results/gpu_model.json" "$out/"  # the predictions, into the archive
  run_capped times "$logs/model_times.log" "$python" benchmarks/gpu_check_model.py times \
    "$out/model_times.json" --seconds $(( left - 10 ))
  record_outcome times "$logs/model_times.log"
fi
if begin_step ncu 25; then
  run_capped ncu "$logs/model_ncu.log" "$python" benchmarks/gpu_check_model.py ncu "$out" \
    --seconds $(( left - 10 ))
  if (( rc == 3 )); then  # ncu missing, or refusing this GPU: reported, not a failure
    record ncu unsupported "$seconds" "$logs/model_ncu.log" "$(tail -n 1 "$logs/model_ncu.log")"
  else
    record_outcome ncu "$logs/model_ncu.log"
  fi
fi

finish
