#!/usr/bin/env bash
# Launch guide_jax training on a Cloud TPU VM or pod slice (every worker at once).
# Bash 3.2+ (macOS's /bin/bash works). See usage() or run with -h.
set -euo pipefail

readonly LIBTPU_URL="https://storage.googleapis.com/jax-releases/libtpu_releases.html"
readonly REMOTE_DIR="guide_jax"          # relative to the remote home directory
readonly REMOTE_TARBALL="guide_jax.tar.gz"

usage() {
  cat <<'EOF'
Usage: launch/tpu_run.sh --project=P --zone=Z --tpu_name=N --accelerator_type=T \
           --model_dir=gs://BUCKET/DIR [options] -- [guide_jax.train args...]

Runs `python3 -m guide_jax.train` on all workers of a Cloud TPU VM / pod slice:
  1. (--create) create the TPU VM unless it exists
  2. git archive HEAD -> tarball, scp it to all workers
  3. unpack it and pip install 'jax[tpu]' and the project on all workers (unless --skip_install)
  4. run the trainer on all workers at once with GUIDE_JAX_DISTRIBUTED=1 (the trainer calls
     jax.distributed.initialize()) and --gin.MODEL_DIR="<model_dir>" before your args.

Required:
  --project P             GCP project
  --zone Z                e.g. us-central2-b
  --tpu_name N            TPU VM name
  --accelerator_type T    e.g. v4-32
  --model_dir gs://...    where checkpoints and summaries go (must be a gs:// path)
Options:
  --runtime_version V     TPU VM image (default tpu-ubuntu2204-base)
  --create                create the TPU VM if it does not exist (otherwise reuse it)
  --spot                  with --create: create a Spot VM
  --skip_install          skip step 3 (the workers already have the dependencies)
  --restart_on_preemption rerun step 4 until the run finishes: on exit status 75 (the trainer saved
                          and stopped unfinished: SIGTERM on preemption, or the run lease is still
                          held) the same command reruns after --restart_wait seconds; when the VM
                          was preempted (state PREEMPTED, or gone) it is deleted and created again
                          (steps 1-3) first. Any other failure stops. At most --max_restarts times.
  --max_restarts N        default 20
  --restart_wait S        seconds between tries (default 60)
  --dry_run               print every command (prefixed "+ ") instead of running it
  -h, --help              this help
Everything after `--` goes to guide_jax.train verbatim, e.g.
  -- --gin_file=gin/runs/pretrain.gin --gin.TRAIN_STEPS=1000
Flags take `--flag value` or `--flag=value`. Run it from anywhere inside the git checkout.
EOF
}

die() {  # die CODE MESSAGE
  echo "tpu_run.sh: error: $2" >&2
  [ "$1" = 2 ] && echo "Run 'launch/tpu_run.sh -h' for usage." >&2
  exit "$1"
}

# shellcheck source=launch/quote.sh
source "$(dirname "${BASH_SOURCE[0]}")/quote.sh"

# run CMD...: run it, or print it under --dry_run.
run() {
  if [ "$DRY_RUN" = 1 ]; then
    echo "+ $(join_quoted "$@")"
  else
    echo "+ $(join_quoted "$@")" >&2
    "$@"
  fi
}

PROJECT="" ZONE="" TPU_NAME="" ACCEL="" MODEL_DIR=""
RUNTIME="tpu-ubuntu2204-base"
CREATE=0 SPOT=0 SKIP_INSTALL=0 DRY_RUN=0 RESTART=0 MAX_RESTARTS=20 RESTART_WAIT=60
TRAIN_ARGS=()

# need_value FLAG NARGS: fail unless FLAG has a value after it.
need_value() {
  [ "$2" -ge 2 ] || die 2 "$1 needs a value"
}

while [ $# -gt 0 ]; do
  case $1 in
    -h|--help) usage; exit 0 ;;
    --project=*) PROJECT=${1#*=} ;;
    --zone=*) ZONE=${1#*=} ;;
    --tpu_name=*) TPU_NAME=${1#*=} ;;
    --accelerator_type=*) ACCEL=${1#*=} ;;
    --runtime_version=*) RUNTIME=${1#*=} ;;
    --model_dir=*) MODEL_DIR=${1#*=} ;;
    --max_restarts=*) MAX_RESTARTS=${1#*=} ;;
    --restart_wait=*) RESTART_WAIT=${1#*=} ;;
    --max_restarts|--restart_wait)
      need_value "$1" $#
      case $1 in
        --max_restarts) MAX_RESTARTS=$2 ;;
        --restart_wait) RESTART_WAIT=$2 ;;
      esac
      shift ;;
    --project|--zone|--tpu_name|--accelerator_type|--runtime_version|--model_dir)
      need_value "$1" $#
      case $1 in
        --project) PROJECT=$2 ;;
        --zone) ZONE=$2 ;;
        --tpu_name) TPU_NAME=$2 ;;
        --accelerator_type) ACCEL=$2 ;;
        --runtime_version) RUNTIME=$2 ;;
        --model_dir) MODEL_DIR=$2 ;;
      esac
      shift ;;
    --create) CREATE=1 ;;
    --spot) SPOT=1 ;;
    --skip_install) SKIP_INSTALL=1 ;;
    --restart_on_preemption) RESTART=1 ;;
    --dry_run) DRY_RUN=1 ;;
    --) shift; TRAIN_ARGS=("$@"); break ;;
    *) die 2 "unknown flag '$1' (trainer args go after '--')" ;;
  esac
  shift
done

missing=()
[ -n "$PROJECT" ] || missing+=(--project)
[ -n "$ZONE" ] || missing+=(--zone)
[ -n "$TPU_NAME" ] || missing+=(--tpu_name)
[ -n "$ACCEL" ] || missing+=(--accelerator_type)
[ -n "$MODEL_DIR" ] || missing+=(--model_dir)
if [ ${#missing[@]} -gt 0 ]; then
  die 2 "missing required flag(s): ${missing[*]}"
fi
if ! [[ $MODEL_DIR =~ ^gs://[^[:space:]\'\"]+$ ]]; then
  die 2 "--model_dir must be a gs:// path without spaces or quotes (got '$MODEL_DIR'): every TPU worker must see it"
fi
[ "$SPOT" = 0 ] || [ "$CREATE" = 1 ] || die 2 "--spot only applies with --create"
[ -n "$RUNTIME" ] || die 2 "--runtime_version must not be empty"
[[ $MAX_RESTARTS =~ ^[0-9]+$ ]] || die 2 "--max_restarts must be a non-negative integer"
[[ $RESTART_WAIT =~ ^[0-9]+$ ]] || die 2 "--restart_wait must be a non-negative integer (seconds)"
readonly EXIT_NOT_FINISHED=75  # guide_jax.train: saved and stopped before TRAIN_STEPS; rerun it

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LOC=(--zone="$ZONE" --project="$PROJECT")
TPU=(gcloud compute tpus tpu-vm)

# create: the VM create command (used again when a preempted VM is recreated).
create=("${TPU[@]}" create "$TPU_NAME" "${LOC[@]}" --accelerator-type="$ACCEL" --version="$RUNTIME")
[ "$SPOT" = 0 ] || create+=(--spot)
WORK_DIR=""

provision() {  # steps 1-3
  # 1. Create the VM unless it exists.
  if [ "$CREATE" = 1 ]; then
    if [ "$DRY_RUN" = 1 ]; then
      echo "# the create below runs only if describe fails (the TPU VM does not exist yet)"
      run "${TPU[@]}" describe "$TPU_NAME" "${LOC[@]}"
      run "${create[@]}"
    elif "${TPU[@]}" describe "$TPU_NAME" "${LOC[@]}" >/dev/null 2>&1; then
      echo "TPU VM $TPU_NAME exists; reusing it" >&2
    else
      run "${create[@]}"
    fi
  fi

  # 2. Ship HEAD of the checkout (uncommitted changes are NOT included) to every worker.
  if [ "$DRY_RUN" = 1 ]; then
    WORK_DIR="${TMPDIR:-/tmp}/guide_jax_launch.dryrun"
  elif [ -z "$WORK_DIR" ]; then
    WORK_DIR=$(mktemp -d "${TMPDIR:-/tmp}/guide_jax_launch.XXXXXX")
    trap 'rm -rf "$WORK_DIR"' EXIT
    if [ -n "$(git -C "$REPO_ROOT" status --porcelain --untracked-files=no)" ]; then
      echo "tpu_run.sh: warning: uncommitted changes are not shipped (git archive HEAD)" >&2
    fi
  fi
  TARBALL="$WORK_DIR/$REMOTE_TARBALL"
  run git -C "$REPO_ROOT" archive --format=tar.gz --prefix="$REMOTE_DIR/" -o "$TARBALL" HEAD
  run "${TPU[@]}" scp --recurse "$TARBALL" "$TPU_NAME:" --worker=all "${LOC[@]}"

  # 3. Unpack (replacing any previous copy) and install on every worker.
  unpack="rm -rf $REMOTE_DIR && tar -xzf $REMOTE_TARBALL"
  if [ "$SKIP_INSTALL" = 1 ]; then
    setup=$unpack
  else
    setup="$unpack && python3 -m pip install -U 'jax[tpu]' -f $LIBTPU_URL && python3 -m pip install -e ./$REMOTE_DIR"
  fi
  [ "$DRY_RUN" = 0 ] || echo "#   on every worker: $setup"
  run "${TPU[@]}" ssh "$TPU_NAME" --worker=all "${LOC[@]}" --command="$setup"
}

# 4. Train on all workers at once. Each argument is quoted for the remote shell.
train=(python3 -m guide_jax.train "--gin.MODEL_DIR=\"$MODEL_DIR\"" ${TRAIN_ARGS[@]+"${TRAIN_ARGS[@]}"})
remote="cd $REMOTE_DIR && GUIDE_JAX_DISTRIBUTED=1 $(join_quoted "${train[@]}")"
[ "$DRY_RUN" = 0 ] || echo "#   on every worker: $remote"

provision
if [ "$RESTART" = 0 ] || [ "$DRY_RUN" = 1 ]; then
  [ "$DRY_RUN" = 0 ] || [ "$RESTART" = 0 ] || echo "# --restart_on_preemption: the command below reruns until it exits 0"
  run "${TPU[@]}" ssh "$TPU_NAME" --worker=all "${LOC[@]}" --command="$remote"
  exit 0
fi
tries=0
while true; do
  rc=0
  run "${TPU[@]}" ssh "$TPU_NAME" --worker=all "${LOC[@]}" --command="$remote" || rc=$?
  [ "$rc" != 0 ] || { echo "tpu_run.sh: the run finished" >&2; exit 0; }
  state=$("${TPU[@]}" describe "$TPU_NAME" "${LOC[@]}" --format='value(state)' 2>/dev/null || echo GONE)
  if [ "$state" != READY ]; then
    reason="the TPU VM is $state (preempted)"
  elif [ "$rc" = "$EXIT_NOT_FINISHED" ]; then
    reason="the run saved and stopped unfinished (exit $rc)"
  else
    die "$rc" "the run failed with exit status $rc on a READY VM (not a preemption); not restarting"
  fi
  tries=$((tries + 1))
  [ "$tries" -le "$MAX_RESTARTS" ] || die "$rc" "$reason, and --max_restarts=$MAX_RESTARTS restarts are used up"
  echo "tpu_run.sh: $reason; restart $tries of $MAX_RESTARTS in $RESTART_WAIT s" >&2
  sleep "$RESTART_WAIT"
  if [ "$state" != READY ]; then  # a preempted TPU VM cannot be restarted: delete it, create it again
    [ "$state" = GONE ] || run "${TPU[@]}" delete "$TPU_NAME" "${LOC[@]}" --quiet
    run "${create[@]}"
    CREATE=0 provision  # ship and install again on the new workers
  fi
done
