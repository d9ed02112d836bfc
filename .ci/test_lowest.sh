#!/usr/bin/env bash
# Test stage: the main suite again, on the LOWEST transformers release that pyproject.toml admits.
# The declared range is exactly what CI proves: the main stage runs the newest release pip resolves today,
# this one the floor. The venv sees the main environment's packages through a .pth file (site.addsitedir, so
# the editable install works too) and shadows only what that transformers release needs.
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
[ -x "$VENV/bin/python" ] || $PY -m venv "$VENV"
MAIN_SITE=$($PY -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
VENV_SITE=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
echo "import site; site.addsitedir('$MAIN_SITE')" > "$VENV_SITE/layerdrop-main-env.pth"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -c .ci/constraints.txt "transformers==$LOWEST"
echo "main suite on the lowest supported transformers ($LOWEST):"
"$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@"
