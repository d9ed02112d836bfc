#!/usr/bin/env bash
# Second test stage: AWQ quantisation through GPTQModel, in its own virtualenv.
# gptqmodel 7.6.0 pins numpy==2.2.6, so it is kept out of the main environment; the venv sees the main
# site-packages (--system-site-packages) and shadows only what gptqmodel needs. optimum is required too:
# with gptqmodel installed, peft refuses LoRA without it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
VENV=.cache/awqenv
if [ ! -x "$VENV/bin/python" ]; then
    $PY -m venv --system-site-packages "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -c .ci/constraints.txt \
    "gptqmodel==7.6.0" "optimum>=1.24"
GPTQMODEL_CPU_WORKERS=2 "$VENV/bin/python" -m pytest -q -m awq tests/quantize tests/recover
