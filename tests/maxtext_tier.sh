#!/usr/bin/env bash
# The MaxText test tier: tests/maxtext against MaxText itself (AI-Hypercomputer/maxtext, from source).
#
#   tests/maxtext_tier.sh            # from the repo root or anywhere
#
# GUIDE_JAX_THIRDPARTY: the directory holding maxtext/ and constraints-maxtext.txt (default:
# ../shared/thirdparty relative to the repo root). Without them the tier is skipped (exit 0).
# GUIDE_JAX_MAXTEXT_VENV: the venv to use or create (default: <repo>/.venv-maxtext). It is created
# when missing: the pinned PyPI set of constraints-maxtext.txt (less the distributions nothing here
# imports, SKIP below), installed with --no-deps, MaxText's src/ on the venv's path (a .pth: PyPI's
# maxtext needs Python >= 3.12), guide_jax with --no-deps, plus pytest and gin-config. Extra arguments go to pytest.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
THIRDPARTY="${GUIDE_JAX_THIRDPARTY:-$REPO/../shared/thirdparty}"
VENV="${GUIDE_JAX_MAXTEXT_VENV:-$REPO/.venv-maxtext}"
PYTHON="${PYTHON:-python3}"
# In the freeze but imported by nothing the tier runs (MaxText's HF-datasets, Kaggle and TFDS
# pipelines, numba): checked by running the tier with them absent.
SKIP='^(datasets|dill|multiprocess|xxhash|numba|llvmlite|kagglehub|kagglesdk|tensorflow-datasets|tensorflow-metadata|promise|hf_transfer|pylatexenc)=='

if [[ ! -d "$THIRDPARTY/maxtext/src/maxtext" || ! -f "$THIRDPARTY/constraints-maxtext.txt" ]]; then
  echo "maxtext tier skipped: no MaxText sources at $THIRDPARTY (set GUIDE_JAX_THIRDPARTY)"
  exit 0
fi
THIRDPARTY="$(cd "$THIRDPARTY" && pwd)"

if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c "import maxtext.configs.pyconfig, guide_jax, pytest" >/dev/null 2>&1; then
  echo "maxtext tier: building $VENV from $THIRDPARTY"
  start=$SECONDS
  "$PYTHON" -m venv "$VENV"
  grep -Ev "$SKIP" "$THIRDPARTY/constraints-maxtext.txt" > "$VENV/requirements-maxtext.txt"
  "$VENV/bin/pip" install -q --no-deps -r "$VENV/requirements-maxtext.txt"
  site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  echo "$THIRDPARTY/maxtext/src" > "$site/maxtext_src.pth"
  # pytest and gin-config before guide_jax: guide_jax goes in with --no-deps (the tier needs none of
  # its plotting/data extras), so pip's dependency check has nothing of it to complain about.
  "$VENV/bin/pip" install -q pytest gin-config
  "$VENV/bin/pip" install -q --no-deps -e "$REPO"
  echo "maxtext tier: venv built in $((SECONDS - start)) s"
fi

cd "$REPO"
# No third-party pytest plugins; a missing MaxText is an error here. MaxText's Google Cloud
# integrations off (its own CPU tests do the same); nothing from a model hub.
export PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 GUIDE_JAX_MAXTEXT_TIER=1 DECOUPLE_GCLOUD=TRUE HF_HUB_OFFLINE=1 JAX_PLATFORMS=cpu
start=$SECONDS
"$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/maxtext "$@"
echo "maxtext tier: tests took $((SECONDS - start)) s"
