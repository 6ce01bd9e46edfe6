#!/usr/bin/env bash
# The Hugging Face tier: guide_jax.importers against transformers itself (tests/test_hf_*.py).
#
#   tests/hf_tier.sh            # from the repo root or anywhere; extra arguments go to pytest
#
# Installs the `hf` extra (torch CPU, transformers 5.x, safetensors, lm-eval, accelerate) into the main venv
# (GUIDE_JAX_VENV, default <repo>/.venv, which .ci/run builds first). torch==2.13.0 is installed
# explicitly first: that is the CPU wheel this machine type serves locally; an unpinned torch would
# pull a multi-GB CUDA build from PyPI. The tests skip when torch/transformers are missing, so the
# tier fails here instead if either does not import after the install.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${GUIDE_JAX_VENV:-$REPO/.venv}"
TORCH="${GUIDE_JAX_TORCH:-torch==2.13.0}"
TRANSFORMERS="${GUIDE_JAX_TRANSFORMERS:-transformers==5.24.0}"

if [[ ! -x "$VENV/bin/python" ]]; then
  echo "hf tier: no venv at $VENV (run: python3 -m venv .venv && .venv/bin/pip install -e '.[test]')" >&2
  exit 1
fi
start=$SECONDS
if ! "$VENV/bin/python" -c "import torch, transformers, tiktoken, lm_eval, accelerate" >/dev/null 2>&1; then
  "$VENV/bin/pip" install -q "$TORCH"
  "$VENV/bin/pip" install -q -e "${REPO}[hf]" "$TRANSFORMERS"
fi
"$VENV/bin/python" -c "import torch, transformers, lm_eval; print(f'hf tier: torch {torch.__version__}, transformers {transformers.__version__}, lm-eval {lm_eval.__version__}')"
echo "hf tier: install took $((SECONDS - start)) s"

cd "$REPO"
start=$SECONDS
"$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/test_importers.py tests/test_hf_*.py "$@"
echo "hf tier: tests took $((SECONDS - start)) s"
