#!/usr/bin/env bash
# The t5x test tier: tests/t5x against real t5x (google-research/t5x), installed from source.
#
#   tests/t5x_tier.sh            # from the repo root or anywhere
#
# GUIDE_JAX_THIRDPARTY: the directory holding t5x/, airio/, jestimator/ and constraints.txt
# (default: ../shared/thirdparty relative to the repo root). Without it the tier is skipped (exit 0).
# GUIDE_JAX_T5X_VENV: the venv to use or create (default: <repo>/.venv-t5x). It is created when
# missing: the pinned PyPI set in constraints.txt, then `pip install --no-deps -e` of the three
# source trees and of guide_jax, plus pytest. Extra arguments go to pytest.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
THIRDPARTY="${GUIDE_JAX_THIRDPARTY:-$REPO/../shared/thirdparty}"
VENV="${GUIDE_JAX_T5X_VENV:-$REPO/.venv-t5x}"
PYTHON="${PYTHON:-python3}"

if [[ ! -d "$THIRDPARTY/t5x" || ! -f "$THIRDPARTY/constraints.txt" ]]; then
  echo "t5x tier skipped: no t5x sources at $THIRDPARTY (set GUIDE_JAX_THIRDPARTY)"
  exit 0
fi
THIRDPARTY="$(cd "$THIRDPARTY" && pwd)"

if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c "import t5x.models, guide_jax, pytest" >/dev/null 2>&1; then
  echo "t5x tier: building $VENV from $THIRDPARTY"
  start=$SECONDS
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install -q -r "$THIRDPARTY/constraints.txt"
  "$VENV/bin/pip" install -q --no-deps -e "$THIRDPARTY/t5x" -e "$THIRDPARTY/airio" -e "$THIRDPARTY/jestimator"
  "$VENV/bin/pip" install -q --no-deps -e "$REPO"
  "$VENV/bin/pip" install -q pytest
  echo "t5x tier: venv built in $((SECONDS - start)) s"
fi

cd "$REPO"
# No third-party pytest plugins (a venv may hold a broken pytest-xdist); a missing t5x is an error here.
export PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 GUIDE_JAX_T5X_TIER=1
start=$SECONDS
"$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/t5x "$@"
echo "t5x tier: tests took $((SECONDS - start)) s"
