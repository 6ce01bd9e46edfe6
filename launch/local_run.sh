#!/usr/bin/env bash
# Run guide_jax training on this machine, optionally as N local CPU processes (multi-process JAX).
# Bash 3.2+ (macOS's /bin/bash works). See usage() or run with -h.
set -euo pipefail

readonly DEFAULT_GIN="gin/runs/pretrain.gin"

usage() {
  cat <<'EOF'
Usage: launch/local_run.sh [--install] [--dry_run] [--num_processes N] [--port P] [--] [train args...]

Runs `python -m guide_jax.train ARGS` from the repository root, with
--gin_file=gin/runs/pretrain.gin prepended unless ARGS already set --gin_file.
Python: $GUIDE_JAX_PYTHON if set, else .venv/bin/python if it exists, else python3.

  --install           create .venv (if missing) and pip install -e . into it first
  --num_processes N   launch N processes (JAX_PLATFORMS=cpu) with GUIDE_JAX_COORDINATOR=localhost:P,
                      GUIDE_JAX_NUM_PROCESSES=N, GUIDE_JAX_PROCESS_ID=i (the trainer calls
                      jax.distributed.initialize from them); waits for all, and if one fails
                      stops the others and exits with its status. Output lines are prefixed [i].
  --port P            coordinator port for --num_processes > 1 (default 12355)
  --dry_run           print the commands (prefixed "+ ") instead of running them
  -h, --help          this help
Other arguments (and everything after `--`) go to guide_jax.train verbatim.
EOF
}

die() {
  echo "local_run.sh: error: $1" >&2
  exit 2
}

# shellcheck source=launch/quote.sh
source "$(dirname "${BASH_SOURCE[0]}")/quote.sh"

INSTALL=0 DRY_RUN=0 NUM_PROCESSES=1 PORT=12355
TRAIN_ARGS=()
while [ $# -gt 0 ]; do
  case $1 in
    -h|--help) usage; exit 0 ;;
    --install) INSTALL=1 ;;
    --dry_run) DRY_RUN=1 ;;
    --num_processes=*) NUM_PROCESSES=${1#*=} ;;
    --port=*) PORT=${1#*=} ;;
    --num_processes|--port)
      [ $# -ge 2 ] || die "$1 needs a value"
      if [ "$1" = --port ]; then PORT=$2; else NUM_PROCESSES=$2; fi
      shift ;;
    --) shift; TRAIN_ARGS+=("$@"); break ;;
    *) TRAIN_ARGS+=("$1") ;;
  esac
  shift
done
[[ $NUM_PROCESSES =~ ^[1-9][0-9]*$ ]] || die "--num_processes must be a positive integer, got '$NUM_PROCESSES'"
[[ $PORT =~ ^[1-9][0-9]*$ ]] || die "--port must be a positive integer, got '$PORT'"

cd "$(dirname "${BASH_SOURCE[0]}")/.."

has_gin_file=0
for arg in ${TRAIN_ARGS[@]+"${TRAIN_ARGS[@]}"}; do
  case $arg in --gin_file|--gin_file=*) has_gin_file=1 ;; esac
done
if [ "$has_gin_file" = 0 ]; then
  TRAIN_ARGS=("--gin_file=$DEFAULT_GIN" ${TRAIN_ARGS[@]+"${TRAIN_ARGS[@]}"})
fi

run() {
  echo "+ $(join_quoted "$@")"
  [ "$DRY_RUN" = 1 ] || "$@"
}

if [ -n "${GUIDE_JAX_PYTHON:-}" ]; then
  PYTHON=$GUIDE_JAX_PYTHON
elif [ "$INSTALL" = 1 ] || [ -x .venv/bin/python ]; then
  PYTHON=.venv/bin/python
else
  PYTHON=python3
fi
if [ "$INSTALL" = 1 ]; then
  [ -x .venv/bin/python ] || run python3 -m venv .venv
  run .venv/bin/python -m pip install -e .
fi

TRAIN=("$PYTHON" -m guide_jax.train ${TRAIN_ARGS[@]+"${TRAIN_ARGS[@]}"})
if [ "$NUM_PROCESSES" = 1 ]; then
  if [ "$DRY_RUN" = 1 ]; then
    run "${TRAIN[@]}"
    exit 0
  fi
  echo "+ $(join_quoted "${TRAIN[@]}")"
  exec "${TRAIN[@]}"
fi

PIDS=()  # background pids; "" once reaped
# shellcheck disable=SC2317  # invoked from traps
stop_all() {
  local pid
  for pid in ${PIDS[@]+"${PIDS[@]}"}; do
    [ -z "$pid" ] || kill "$pid" 2>/dev/null || true
  done
}
trap 'stop_all; exit 130' INT TERM

for ((i = 0; i < NUM_PROCESSES; i++)); do
  env_vars=(JAX_PLATFORMS=cpu "GUIDE_JAX_COORDINATOR=localhost:$PORT"
            "GUIDE_JAX_NUM_PROCESSES=$NUM_PROCESSES" "GUIDE_JAX_PROCESS_ID=$i")
  echo "+ $(join_quoted "${env_vars[@]}" "${TRAIN[@]}")"
  [ "$DRY_RUN" = 1 ] && continue
  env "${env_vars[@]}" "${TRAIN[@]}" > >(sed -u "s/^/[$i] /" 2>/dev/null || sed "s/^/[$i] /") 2>&1 &
  PIDS+=($!)
done
[ "$DRY_RUN" = 1 ] && exit 0

# Poll (portable: no `wait -n`); the first failure stops the rest.
status=0
remaining=${#PIDS[@]}
while [ "$remaining" -gt 0 ]; do
  remaining=0
  for i in "${!PIDS[@]}"; do
    pid=${PIDS[$i]}
    [ -n "$pid" ] || continue
    if kill -0 "$pid" 2>/dev/null; then
      remaining=$((remaining + 1))
      continue
    fi
    rc=0
    wait "$pid" || rc=$?
    PIDS[i]=""
    if [ "$rc" != 0 ] && [ "$status" = 0 ]; then
      status=$rc
      echo "local_run.sh: process $i exited with status $rc; stopping the others" >&2
      stop_all
    fi
  done
  [ "$remaining" -eq 0 ] || sleep 0.2
done
exit "$status"
