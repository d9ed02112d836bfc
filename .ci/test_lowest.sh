#!/usr/bin/env bash
# Test stage: the main suite again, on the LOWEST transformers release that pyproject.toml admits.
# The declared range is exactly what CI proves: the main stage runs the newest release pip resolves today,
# this one the floor. Its venv (.ci/stage_venv.sh) shadows only transformers.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
LOWEST=$($PY - <<'PYEOF'
import tomllib
from packaging.requirements import Requirement
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
spec = next(Requirement(d) for d in deps if Requirement(d).name == "transformers").specifier
print(next(s.version for s in spec if s.operator == ">="))
PYEOF
)
VENV=.cache/lowest-transformers
source .ci/stage_venv.sh
stage_venv "$VENV"
"$STAGE_PY" -m pip install --quiet --disable-pip-version-check -c .ci/constraints.txt "transformers==$LOWEST"
echo "main suite on the lowest supported transformers ($LOWEST):"
"$STAGE_PY" -m pytest -q -p no:cacheprovider "$@"
