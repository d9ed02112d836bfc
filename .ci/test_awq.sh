#!/usr/bin/env bash
# Second test stage: AWQ quantisation through GPTQModel, in its own virtualenv.
# gptqmodel 7.6.0 pins numpy==2.2.6, so it is kept out of the main environment. Like the other stages' venvs, this
# one sees the main environment's packages through a .pth file (site.addsitedir) and shadows only what gptqmodel
# needs. (--system-site-packages would not do: when the main environment is itself a venv, it exposes the base
# interpreter's packages, not the venv's, and peft was missing.) optimum is required too: with gptqmodel installed,
# peft refuses LoRA without it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
VENV=.cache/awqenv
[ -x "$VENV/bin/python" ] || $PY -m venv "$VENV"
MAIN_SITE=$($PY -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
VENV_SITE=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
echo "import site; site.addsitedir('$MAIN_SITE')" > "$VENV_SITE/layerdrop-main-env.pth"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -c .ci/constraints.txt \
    "gptqmodel==7.6.0" "optimum>=1.24"
GPTQMODEL_CPU_WORKERS=2 "$VENV/bin/python" -m pytest -q -m awq tests/quantize tests/recover
