#!/usr/bin/env bash
# Second test stage: AWQ quantisation through GPTQModel, in its own virtualenv.
# gptqmodel 7.6.0 pins numpy==2.2.6, so it is kept out of the main environment; the stage venv
# (.ci/stage_venv.sh) shadows only what gptqmodel needs. optimum is required too: with gptqmodel installed, peft
# refuses LoRA without it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
VENV=.cache/awqenv
source .ci/stage_venv.sh
stage_venv "$VENV"
"$STAGE_PY" -m pip install --quiet --disable-pip-version-check -c .ci/constraints.txt \
    "gptqmodel==7.6.0" "optimum>=1.24"
GPTQMODEL_CPU_WORKERS=2 "$STAGE_PY" -m pytest -q -m awq tests/quantize tests/recover
