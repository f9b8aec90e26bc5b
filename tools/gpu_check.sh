#!/usr/bin/env bash
# The GPU check, in one command, for a Linux machine with a GPU and no network.
#
#   tools/gpu_check.sh OUT_DIR [WHEEL_DIR]    run the check, write OUT_DIR/summary.txt
#   tools/gpu_check.sh --prepare WHEEL_DIR    on a machine with network: fill WHEEL_DIR
#
# It uses the machine's Python ($PYTHON, default python3) with its numpy,
# CuPy and NCCL. With WHEEL_DIR, it makes a virtualenv (in a temporary
# folder) that sees that Python's packages, and installs into it from
# WHEEL_DIR (and WHEEL_DIR-large, see --prepare) only what is missing:
# setuptools below 70, wheel, chainer 7.8.1, numba,
# mpich and mpi4py (both, where mpi4py cannot load an MPI library),
# pytest, matplotlib and their dependencies. Without WHEEL_DIR it uses
# $PYTHON as it is installed. Then, each step with its own time limit, all of
# them within $GPU_CHECK_SECONDS (default 540) seconds:
#
#   environment   versions, the GPU, or why CuPy sees none
#   gpu tests     pytest -m gpu (tests/models/test_gpu_device.py): the model, dropout's
#                 masks and the exchanges (NCCL with 2 GPUs) against the CPU;
#                 skipped, with the reason, where there is no GPU
#   train -n 1    mpiexec -n 1 train.py --gpu, synthetic data, one short epoch
#   train -n 2    the same on 2 processes (they share the GPU on a one-GPU machine)
#   step times    benchmarks/step_time.py --gpu, batch 64 and 512, float32:
#                 ours on 1 process against the plain Chainer VGG16
#   epoch -n 4    the user's mpiexec -n 4 train.py --gpu on one CIFAR-sized
#                 synthetic epoch (50,000 training, 10,000 test images)
#
# The training runs and step times need a GPU: without one they are skipped,
# and the summary says why. OUT_DIR gets summary.txt (every step's status,
# time and key lines) and logs/ (every step's whole output, the training
# runs' LogReport and the step times' JSON). Exit status: 0 when no step
# failed and at least one step that needs a GPU passed (others may skip,
# such as the NCCL test on one GPU), 1 when a step failed, 2 for bad
# arguments, 3 when nothing failed but no step that needs a GPU passed (no
# GPU: the check checked nothing), after a line on stderr that says why.
#
# --prepare builds chainer 7.8.1 (an sdist) into a wheel with setuptools
# below 70 and downloads the other wheels for Python $PYTHON_VERSION
# (default 3.12), manylinux x86_64, leaving out numpy (the GPU machine's own
# numpy, the one its CuPy is built for, is used). See docs/gpu.md.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
USAGE='usage: tools/gpu_check.sh OUT_DIR [WHEEL_DIR], or tools/gpu_check.sh --prepare WHEEL_DIR'
# What the check installs where it is missing (the versions docs/versions.md
# names), and the MPI pair, installed together where mpi4py cannot load MPI.
REQUIREMENTS=("setuptools<70" wheel "chainer==7.8.1" "numba>=0.61" "pytest>=8" "matplotlib>=3.8")
MPI_REQUIREMENTS=("mpich==5.0.2" "mpi4py==4.1.2")
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64
           manylinux2014_x86_64 manylinux_2_5_x86_64 manylinux1_x86_64)
LIMIT_MIB=64

usage_error() {  # one line on stderr, exit 2
  echo "gpu_check.sh: error: $1; $USAGE" >&2
  exit 2
}

writable_dir() {  # create $1 if needed; true if it is a folder we can write in
  mkdir -p -- "$1" 2>/dev/null && [ -d "$1" ] && [ -w "$1" ] &&
    touch -- "$1/.gpu_check_probe" 2>/dev/null && rm -f -- "$1/.gpu_check_probe"
}

# ---- the arguments ----

case "${1:-}" in
  -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  "") echo "$USAGE" >&2; exit 2 ;;
  --prepare)
    [ $# -eq 2 ] || usage_error "--prepare takes one argument, WHEEL_DIR"
    MODE=prepare; WHEEL_DIR=$2 ;;
  -*) usage_error "unknown option $1" ;;
  *)
    [ $# -le 2 ] || usage_error "too many arguments"
    MODE=check; OUT_DIR=$1; WHEEL_DIR=${2:-} ;;
esac
if [ "$MODE" = prepare ]; then
  writable_dir "$WHEEL_DIR" || usage_error "WHEEL_DIR $WHEEL_DIR is not a writable folder"
else
  if [ -n "$WHEEL_DIR" ] && [ ! -d "$WHEEL_DIR" ]; then
    usage_error "WHEEL_DIR $WHEEL_DIR is not a folder"
  fi
  writable_dir "$OUT_DIR" || usage_error "OUT_DIR $OUT_DIR is not a writable folder"
fi
"$PYTHON" -c pass 2>/dev/null || usage_error "PYTHON=$PYTHON does not run"

# ---- --prepare: the wheel folder, on a machine with network ----

if [ "$MODE" = prepare ]; then
  WHEEL_DIR=$(cd "$WHEEL_DIR" && pwd)
  version=${PYTHON_VERSION:-3.12}
  build=$(mktemp -d)
  trap 'rm -rf "$build"' EXIT
  echo "== building chainer 7.8.1 into a wheel (setuptools below 70, no build isolation)"
  "$PYTHON" -m venv "$build/venv"
  "$build/venv/bin/pip" install --quiet "setuptools<70" wheel
  "$build/venv/bin/pip" wheel --quiet --no-deps --no-build-isolation -w "$WHEEL_DIR" "chainer==7.8.1"
  echo "== downloading the other wheels for Python $version, manylinux x86_64"
  platforms=()
  for platform in "${PLATFORMS[@]}"; do platforms+=(--platform "$platform"); done
  "$build/venv/bin/pip" download --quiet --only-binary :all: --python-version "$version" \
    --implementation cp "${platforms[@]}" --find-links "$WHEEL_DIR" -d "$WHEEL_DIR" \
    "${REQUIREMENTS[@]}" "${MPI_REQUIREMENTS[@]}"
  rm -f "$WHEEL_DIR"/numpy-*.whl
  ls -l "$WHEEL_DIR"
  # One carry to a lent machine holds 64 MiB; llvmlite's wheel (numba's
  # compiler) alone is about 57. The largest wheels move to WHEEL_DIR-large
  # until WHEEL_DIR fits; the check reads both folders.
  mib_of() { local kib; kib=$(du -sk "$1" | cut -f1); echo "$((kib * 10 / 1024 / 10)).$((kib * 10 / 1024 % 10)) MiB"; }
  rm -rf "$WHEEL_DIR-large"
  while [ "$(du -sk "$WHEEL_DIR" | cut -f1)" -ge $((LIMIT_MIB * 1024)) ]; do
    mkdir -p "$WHEEL_DIR-large"
    mv "$(ls -S "$WHEEL_DIR"/*.whl | head -n 1)" "$WHEEL_DIR-large/"
  done
  for folder in "$WHEEL_DIR" "$WHEEL_DIR-large"; do
    [ -d "$folder" ] || continue
    echo "$folder: $(find "$folder" -name '*.whl' | wc -l) wheels, $(mib_of "$folder")"
    if [ "$(du -sk "$folder" | cut -f1)" -ge $((LIMIT_MIB * 1024)) ]; then
      echo "gpu_check.sh: $folder comes to $(mib_of "$folder"), over the $LIMIT_MIB MiB a carry holds" >&2
      exit 1
    fi
  done
  exit 0
fi

# ---- the check ----

OUT_DIR=$(cd "$OUT_DIR" && pwd)
[ -z "$WHEEL_DIR" ] || WHEEL_DIR=$(cd "$WHEEL_DIR" && pwd)
LOGS=$OUT_DIR/logs
SUMMARY=$OUT_DIR/summary.txt
mkdir -p "$LOGS"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
BUDGET=${GPU_CHECK_SECONDS:-540}
DEADLINE=$((SECONDS + BUDGET))
FAILED=0
CHECKED=0  # 1 once a step that needs a GPU passed
cd "$REPO"
export PYTHONPATH=$REPO PYTHONUNBUFFERED=1 MPLBACKEND=Agg

{
  echo "GPU check of $(git -C "$REPO" describe --always --dirty 2>/dev/null || echo "$REPO"), $(date -u '+%Y-%m-%d %H:%M UTC') on $(hostname)"
  echo "each step: its status, seconds, log (under $OUT_DIR), key lines; all within $BUDGET s"
  echo
} >"$SUMMARY"

# record NAME STATUS SECONDS LOG [KEY LINES...]: one step's block in the summary
record() {
  local name=$1 status=$2 seconds=$3 log=$4; shift 4
  printf '== %-16s %s  [%s s%s]\n' "$name" "$status" "$seconds" "${log:+, logs/$log}" >>"$SUMMARY"
  local lines line
  for lines in "$@"; do
    while IFS= read -r line; do
      [ -z "$line" ] || printf '   %s\n' "$line" >>"$SUMMARY"
    done <<<"$lines"
  done
  case "$status" in failed*|timed*|"not run"*) FAILED=1 ;; esac
  return 0
}

# record_gpu NAME STATUS ...: record for a step that needs a GPU; one that
# passed means the check checked something
record_gpu() {
  record "$@"
  case "$2" in ok|passed) CHECKED=1 ;; esac
}

# run LIMIT LOG COMMAND...: run within min(LIMIT, the time left); sets RC, TOOK, LIMIT_USED
run() {
  local limit=$1 log=$2; shift 2
  local left=$((DEADLINE - SECONDS)) start=$SECONDS
  LIMIT_USED=$((limit < left ? limit : left))
  RC=0
  if [ "$LIMIT_USED" -lt 10 ]; then
    RC=125; TOOK=0
    echo "not run: the check's $BUDGET s are spent" >"$LOGS/$log"
    return 0
  fi
  timeout --kill-after=10 "$LIMIT_USED" "$@" >"$LOGS/$log" 2>&1 || RC=$?
  TOOK=$((SECONDS - start))
}

# status_of: the status for the last run's RC
status_of() {
  case "$RC" in
    0) echo ok ;;
    124|137) echo "timed out after $LIMIT_USED s" ;;
    125) echo "not run: the check's $BUDGET s are spent" ;;
    *) echo "failed (exit $RC)" ;;
  esac
}

tail_of() {  # the last lines of a log, for a failed step
  tail -n "${2:-5}" "$LOGS/$1" 2>/dev/null || true
}

# ---- the environment: a virtualenv over the machine's packages, with what is missing ----

PY=$("$PYTHON" -c 'import sys; print(sys.executable)')
if [ -n "$WHEEL_DIR" ]; then
  VENV=$WORK/venv
  # shellcheck disable=SC2317  # run below, in a bash of its own
  install_environment() {
    "$PYTHON" -m venv --system-site-packages "$VENV" ||
      { echo "(no ensurepip: a virtualenv without pip of its own)"; rm -rf "$VENV";
        "$PYTHON" -m venv --system-site-packages --without-pip "$VENV"; }
    # Where $PYTHON is itself a virtualenv's, --system-site-packages shows its
    # base interpreter's packages, not the virtualenv's: add those (numpy,
    # CuPy, NCCL, the CUDA libraries) and its prefix, where CUDA's library
    # finder looks (site.getsitepackages).
    "$PYTHON" - "$VENV" <<'EOF'
import os, site, subprocess, sys
if sys.prefix != sys.base_prefix:
    purelib = subprocess.check_output(
        [os.path.join(sys.argv[1], 'bin', 'python'), '-c',
         'import sysconfig; print(sysconfig.get_paths()["purelib"])'], text=True).strip()
    line = (f'import site; site.PREFIXES[1:1] = [{sys.prefix!r}]; '
            f'list(map(site.addsitedir, {site.getsitepackages()!r}))\n')
    with open(os.path.join(purelib, '_gpu_check_machine_packages.pth'), 'w') as f:
        f.write(line)
    print(f'packages of the virtualenv {sys.prefix} added to the check\'s')
EOF
    local pip=("$VENV/bin/python" -m pip install --no-index --find-links "$WHEEL_DIR"
               --find-links "$WHEEL_DIR-large"
               --disable-pip-version-check --no-warn-script-location)
    "${pip[@]}" "${REQUIREMENTS[@]:0:2}"
    "${pip[@]}" --no-build-isolation "${REQUIREMENTS[@]:2}"
    if "$VENV/bin/python" -c 'from mpi4py import MPI' 2>/dev/null && [ -x "$VENV/bin/mpiexec" ]; then
      echo "mpi4py loads an MPI library, and mpiexec is there"
    else
      echo "mpi4py cannot load an MPI library here, or no mpiexec beside the Python: installing both"
      "${pip[@]}" --ignore-installed --no-deps "${MPI_REQUIREMENTS[@]}"
    fi
  }
  # In a bash of its own, so that the time limit applies to it.
  run 240 install.log bash -c "set -euo pipefail; $(declare -p REQUIREMENTS MPI_REQUIREMENTS \
    PYTHON VENV WHEEL_DIR); $(declare -f install_environment); install_environment"
  PY=$VENV/bin/python
  installed=$(sed -n 's/^Successfully installed //p' "$LOGS/install.log" | tr '\n' ' ')
  if [ "$RC" -eq 0 ]; then
    record install "ok" "$TOOK" install.log "from $WHEEL_DIR: ${installed:-nothing was missing}"
  else
    record install "$(status_of)" "$TOOK" install.log "$(tail_of install.log 8)"
  fi
else
  record install "not asked (no WHEEL_DIR): $PYTHON as it is installed" 0 ""
fi
BIN=$(dirname "$PY")
export PATH="$BIN:$PATH"
MPIEXEC=$BIN/mpiexec
[ -x "$MPIEXEC" ] || MPIEXEC=$(command -v mpiexec || echo mpiexec)

run 60 environment.log "$PY" - <<'EOF'
import job  # noqa: F401  (first: BLAS threads before numpy, compat before chainer)
import importlib.metadata, platform, sys
print(f'python {platform.python_version()} ({sys.executable})')
for name in ('numpy', 'cupy-cuda13x', 'cupy-cuda12x', 'cupy-cuda11x', 'chainer', 'numba',
             'mpi4py', 'mpich', 'nvidia-nccl-cu13', 'nvidia-nccl-cu12', 'pytest', 'matplotlib',
             'setuptools'):
    try:
        print(f'{name} {importlib.metadata.version(name)}')
    except importlib.metadata.PackageNotFoundError:
        pass
from mpi4py import MPI
print(f'MPI: {MPI.Get_library_version().splitlines()[0].strip()}')
from job import gpu
why = gpu.why_no_gpu()
if why:
    print(f'no GPU: {why}')
else:
    import cupy
    for index in range(gpu.gpu_count()):
        name = cupy.cuda.runtime.getDeviceProperties(index)['name']
        print(f'GPU {index}: {name.decode() if isinstance(name, bytes) else name}')
    print(f'CUDA runtime {cupy.cuda.runtime.runtimeGetVersion()}, '
          f'driver {cupy.cuda.runtime.driverGetVersion()}')
    from chainermn import nccl
    print(f'NCCL: {"available" if nccl._available else "missing"}')
EOF
# Why the steps that need a GPU cannot run, if they cannot; the reason in
# full is the environment's.
NO_GPU=$(grep -m1 '^no GPU: ' "$LOGS/environment.log" || true)
SKIPPED="no GPU (the environment above says why)"
if [ "$RC" -eq 0 ]; then
  mapfile -t lines <"$LOGS/environment.log"
  record environment "ok" "$TOOK" environment.log "${lines[@]}"
else
  record environment "$(status_of)" "$TOOK" environment.log "$(tail_of environment.log 3)"
  NO_GPU=incomplete
  SKIPPED="the environment is incomplete (logs/environment.log)"
fi

# ---- the GPU tests ----

run 200 pytest-gpu.log "$PY" -m pytest -m gpu -q -rfEs -p no:cacheprovider tests
final=$(grep -E '[0-9]+ (passed|failed|skipped|deselected|errors?)' "$LOGS/pytest-gpu.log" | tail -n 1 || true)
mapfile -t reasons < <(grep -E '^(SKIPPED|FAILED|ERROR)' "$LOGS/pytest-gpu.log" | head -n 12 || true)
if [ "$RC" -eq 0 ] && ! grep -q ' passed' <<<"$final"; then
  status="skipped: ${NO_GPU:+$SKIPPED}"
  [ -n "$NO_GPU" ] || status="skipped: every GPU test, with a GPU"
elif [ "$RC" -eq 0 ]; then
  status="passed"
else
  status=$(status_of)
fi
record_gpu "gpu tests" "$status" "$TOOK" pytest-gpu.log "${reasons[@]}" "$final"

# ---- short synthetic training runs on the GPU ----

for n in 1 2; do
  name="train -n $n"
  if [ -n "$NO_GPU" ]; then
    record_gpu "$name" "skipped: $SKIPPED" 0 ""
    continue
  fi
  out=$WORK/train-n$n
  run 90 "train-n$n.log" "$MPIEXEC" -n "$n" "$PY" train.py --gpu --dataset synthetic \
    --train-size 640 --test-size 128 --epoch 1 --out "$out"
  [ ! -f "$out/log" ] || cp "$out/log" "$LOGS/train-n$n-log.json"
  last=$("$PY" -c '
import json, sys
entry = json.load(open(sys.argv[1]))[-1]
print(", ".join(f"{k} {entry[k]:.4g}" if isinstance(entry[k], float) else f"{k} {entry[k]}"
                for k in ("epoch", "main/loss", "validation/main/loss", "main/accuracy",
                          "validation/main/accuracy", "elapsed_time", "memory/peak_mb",
                          "memory/gpu_pool_peak_mb") if k in entry))
' "$out/log" 2>/dev/null || true)
  header=$(grep -E '^(GPU|CPU), ' "$LOGS/train-n$n.log" || true)
  if [ "$RC" -eq 0 ]; then
    record_gpu "$name" ok "$TOOK" "train-n$n.log" "$header" "$last"
  else
    record_gpu "$name" "$(status_of)" "$TOOK" "train-n$n.log" "$header" "$(tail_of "train-n$n.log" 5)"
  fi
done

# ---- step times on the GPU ----

for batch in 64 512; do
  name="step times $batch"
  if [ -n "$NO_GPU" ]; then
    record_gpu "$name" "skipped: $SKIPPED" 0 ""
    continue
  fi
  run 75 "step_time-$batch.log" "$PY" benchmarks/step_time.py --gpu --batchsize "$batch" \
    --steps 5 --warmup 2 --rounds 2 --json "$LOGS/step_time-$batch.json"
  mapfile -t lines < <(grep -E '^(batch |    |ga |gb |gb / ga)|unavailable' "$LOGS/step_time-$batch.log" || true)
  if [ "$RC" -eq 0 ]; then
    record_gpu "$name" ok "$TOOK" "step_time-$batch.log" "${lines[@]}"
  else
    record_gpu "$name" "$(status_of)" "$TOOK" "step_time-$batch.log" "${lines[@]}" "$(tail_of "step_time-$batch.log" 3)"
  fi
done

# ---- one CIFAR-sized epoch on 4 processes sharing the GPUs ----

# The user's command, on 50,000 synthetic training and 10,000 test images
# (CIFAR-10's sizes), to set beside the original's published seconds per
# epoch (docs/original.md). Its LogReport's elapsed_time includes the
# evaluation; should the step run out of time, the progress bar's rate is
# in its log.
name="epoch -n 4"
if [ -n "$NO_GPU" ]; then
  record_gpu "$name" "skipped: $SKIPPED" 0 ""
else
  out=$WORK/epoch-n4
  run 240 epoch-n4.log "$MPIEXEC" -n 4 "$PY" train.py --gpu --dataset synthetic \
    --train-size 50000 --test-size 10000 --epoch 1 --out "$out"
  [ ! -f "$out/log" ] || cp "$out/log" "$LOGS/epoch-n4-log.json"
  elapsed=$("$PY" -c '
import json, sys
entry = json.load(open(sys.argv[1]))[-1]
print(f"elapsed_time {entry[\"elapsed_time\"]:.1f} s for epoch {entry[\"epoch\"]}, evaluation included")
' "$out/log" 2>/dev/null || true)
  rate=$(tr '\r' '\n' <"$LOGS/epoch-n4.log" | grep -E 'iters/sec' | tail -n 1 || true)
  if [ "$RC" -eq 0 ]; then
    record_gpu "$name" ok "$TOOK" epoch-n4.log "$elapsed" "$rate"
  else
    record_gpu "$name" "$(status_of)" "$TOOK" epoch-n4.log "$rate" "$(tail_of epoch-n4.log 5)"
  fi
fi

# A check that skipped every step that needs a GPU checked nothing: its own
# exit status, so that it cannot read as a pass.
if [ "$FAILED" -eq 1 ]; then
  RESULT="a step FAILED"; STATUS=1
elif [ "$CHECKED" -eq 0 ]; then
  RESULT="NOTHING CHECKED, no step that needs a GPU passed ($NO_GPU)"; STATUS=3
else
  RESULT="no step failed"; STATUS=0
fi
{
  echo
  echo "NCCL exchanges against host-staged ones need 2 GPUs, one per rank: on a one-GPU"
  echo "machine that gpu test skips (its line above), and the -n 2 run stages through the host."
  echo
  echo "result: $RESULT, $SECONDS s in all"
} >>"$SUMMARY"
cat "$SUMMARY"
if [ "$STATUS" -eq 3 ]; then
  echo "gpu_check.sh: nothing checked: $NO_GPU; run it on a machine where CuPy sees a GPU" >&2
fi
exit "$STATUS"
