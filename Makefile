# The README's two commands: `make demo` and `make test`. Both install what they need first.
PY ?= python
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export MPLBACKEND ?= Agg

.PHONY: install demo test test-lowest test-awq
install:
	PYTHON=$(PY) bash .ci/install.sh

demo: install
	$(PY) -m layerdrop_patch.cli demo

# The transformers contract first (seconds; a breaking release fails here with one message), then the main
# suite on the newest transformers pip resolves, again on the lowest pyproject.toml admits, then the AWQ stage
# (GPTQModel in its own venv: it pins numpy).
test: install
	$(PY) -m pytest -q -x tests/test_compat.py
	$(PY) -m pytest -q
	PYTHON=$(PY) bash .ci/test_lowest.sh
	PYTHON=$(PY) bash .ci/test_awq.sh

test-lowest: install
	PYTHON=$(PY) bash .ci/test_lowest.sh

test-awq: install
	PYTHON=$(PY) bash .ci/test_awq.sh
