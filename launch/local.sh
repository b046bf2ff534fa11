#!/usr/bin/env bash
# Sets lbt up on this machine (idempotent) and runs it.
#
#   bash launch/local.sh train [flags...]   train the default config, print test accuracy
#   bash launch/local.sh study [flags...]   run the default Fashion-MNIST batch-size study
#                                            into ${LBT_STUDY_DIR:-studies/fashion_mnist},
#                                            print its report's path and main table;
#                                            LBT_PROCESSES processes share it (default:
#                                            2 on a CPU-only machine with 2+ cores)
#   bash launch/local.sh test  [pytest args] run the test suite (what CI runs)
#   bash launch/local.sh setup               only install
#
# Set-up: a virtual environment in $LBT_VENV (default .venv) with
# `pip install -e .[test]`, redone only when setup.py changes, and Debian's
# dataset-fashion-mnist when apt is usable (otherwise lbt downloads the files).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${LBT_VENV:-.venv}"
PY="$VENV/bin/python"

setup() {
  if [ ! -x "$PY" ]; then
    if ! python3 -m venv "$VENV" 2>/dev/null; then
      # Debian splits venv out of python3.
      as_root apt-get install -y -qq python3-venv >/dev/null
      rm -rf "$VENV"
      python3 -m venv "$VENV"
    fi
  fi
  local stamp="$VENV/.lbt-setup-$(sha1sum setup.py | cut -c1-12)"
  if [ ! -e "$stamp" ]; then
    "$PY" -m pip install --quiet --upgrade pip
    "$PY" -m pip install --quiet -e '.[test]'
    rm -f "$VENV"/.lbt-setup-*
    touch "$stamp"
  fi
  if [ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
    (as_root apt-get update -qq && as_root apt-get install -y -qq dataset-fashion-mnist) \
      >/dev/null 2>&1 ||
      echo "lbt: could not apt-get dataset-fashion-mnist; it will be downloaded instead." >&2
  fi
}

# apt-get as root, or through sudo without a password prompt; fails otherwise.
as_root() {
  command -v apt-get >/dev/null || return 1
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n "$@"; fi
}

# glibc keeps freed memory in the process: XLA:CPU's per-update temporaries are
# otherwise returned and faulted in again (0.70x the LeNet-5 step with this;
# benchmarks/roofline.py). lbt.main and lbt.study set the same via mallopt.
export MALLOC_ARENA_MAX="${MALLOC_ARENA_MAX:-1}" \
  MALLOC_MMAP_THRESHOLD_="${MALLOC_MMAP_THRESHOLD_:-2147483647}" \
  MALLOC_TRIM_THRESHOLD_="${MALLOC_TRIM_THRESHOLD_:-2147483647}"

# How many lbt.study processes share a study on this machine: 2 on a CPU-only
# machine with 2 or more cores (a small-batch trial keeps about one core busy),
# else 1 (an accelerator is not shared between processes).
default_processes() {
  if [ "$(nproc)" -ge 2 ] && [ "$("$PY" -c 'import jax; print(jax.default_backend())' \
                                 2>/dev/null)" = cpu ]; then
    echo 2
  else
    echo 1
  fi
}

# run_study DIR N [flags...]: the default study in DIR, split over N processes
# of this machine (--shard=I/N; shard 0 prints its progress and writes the
# report, the others log to DIR/shard-I.log). The first to fail stops the others
# (each saves its trial; the same command resumes); so do Ctrl-C and SIGTERM.
run_study() {
  local dir="$1" processes="$2" i pid status=0
  shift 2
  local study=("$PY" -m lbt.study --study=configs/studies/fashion_mnist.py --workdir="$dir")
  if [ "$processes" -le 1 ]; then
    "${study[@]}" "$@"
    return
  fi
  mkdir -p "$dir"
  echo "lbt: $processes processes share the study (--shard=I/$processes); shard 0 prints" \
    "here, the others log to $dir/shard-I.log"
  local pids=()
  "${study[@]}" --shard="0/$processes" "$@" &
  pids+=("$!")
  for ((i = 1; i < processes; i++)); do
    "${study[@]}" --shard="$i/$processes" --noreport "$@" >>"$dir/shard-$i.log" 2>&1 &
    pids+=("$!")
  done
  trap 'kill -TERM "${pids[@]}" 2>/dev/null; wait; exit 143' INT TERM
  for ((i = 0; i < processes; i++)); do
    wait -n || { status=$?; kill -TERM "${pids[@]}" 2>/dev/null; wait; break; }
  done
  trap - INT TERM
  return "$status"
}

command="${1:-train}"
shift || true
case "$command" in
  setup) setup ;;
  train)
    setup
    exec "$PY" -m lbt.main --config=configs/fashion_mnist.py \
      --workdir="${LBT_WORKDIR:-workdirs/fashion_mnist}" "$@" ;;
  study)
    setup
    dir="${LBT_STUDY_DIR:-studies/fashion_mnist}"
    status=0
    run_study "$dir" "${LBT_PROCESSES:-$(default_processes)}" "$@" || status=$?
    if [ -e "$dir/report/report.md" ]; then
      echo "lbt: report $dir/report/report.md"
      "$PY" -c 'import sys; from lbt.reports import study_report; print(study_report.main_table(sys.argv[1]))' "$dir"
    fi
    exit "$status" ;;
  test)
    setup
    export XLA_FLAGS="--xla_force_host_platform_device_count=8"
    exec "$PY" -m pytest -q -p no:cacheprovider -n 2 tests "$@" ;;
  *) echo "usage: bash launch/local.sh {train|study|test|setup} [args]" >&2; exit 2 ;;
esac
