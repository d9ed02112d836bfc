"""vLLM in a worker process: `python vllm_worker.py`, in any Python that has vLLM (see protocol.py for why).

Ops: `load` (a checkpoint directory), `generate` (greedy token ids and their logprobs), `time` (wall seconds of
one batched generate), `unload`. Prompts are token ids: the engine's tokenizer is never involved, so a served
model is compared token for token with the patched model.

The engine runs in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`, set by the client), so one worker can
serve several exports one after another (tests), and one worker per model holds each model loaded while a
benchmark interleaves them. Prefix caching is off: a repeated prompt must be computed again each time it is timed.
"""

from __future__ import annotations

import gc
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from protocol import serve, timed  # noqa: E402  (a sibling file: this script runs outside the package)

STATE: dict = {"llm": None}


def _unload() -> None:
    llm = STATE.pop("llm", None)
    STATE["llm"] = None
    if llm is None:
        return
    engine = getattr(llm, "llm_engine", None)
    core = getattr(engine, "engine_core", None)
    if core is not None and hasattr(core, "shutdown"):
        core.shutdown()
    del llm, engine, core
    gc.collect()
    from vllm.distributed import cleanup_dist_env_and_memory

    cleanup_dist_env_and_memory()


def load(request: dict) -> dict:
    from vllm import LLM

    _unload()
    STATE["llm"] = LLM(
        model=request["path"], dtype=request.get("dtype", "float32"), trust_remote_code=request.get("trust_remote_code",
                                                                                                    False),
        enforce_eager=True, max_model_len=request["max_model_len"], kv_cache_memory_bytes=request["kv_cache_bytes"],
        max_num_seqs=request.get("max_num_seqs", 16), enable_prefix_caching=False, skip_tokenizer_init=True,
        seed=0)
    import vllm
    from vllm.platforms import current_platform

    config = STATE["llm"].llm_engine.model_config
    return {"architecture": list(config.architectures or []), "max_model_len": config.max_model_len,
            "version": f"vllm {vllm.__version__}", "device": current_platform.device_type}


def _params(max_tokens: int, logprobs: bool):
    from vllm import SamplingParams

    return SamplingParams(temperature=0.0, max_tokens=max_tokens, min_tokens=0, ignore_eos=True,
                          logprobs=1 if logprobs else None, detokenize=False)


def _prompts(request: dict) -> list:
    from vllm.inputs import TokensPrompt

    return [TokensPrompt(prompt_token_ids=[int(t) for t in ids]) for ids in request["prompts"]]


def generate(request: dict) -> dict:
    outputs = STATE["llm"].generate(_prompts(request), _params(request["max_tokens"], True), use_tqdm=False)
    tokens, logprobs = [], []
    for out in outputs:
        completion = out.outputs[0]
        tokens.append(list(completion.token_ids))
        logprobs.append([float(step[token].logprob) for token, step in zip(completion.token_ids,
                                                                            completion.logprobs or [])])
    return {"tokens": tokens, "logprobs": logprobs}


def time_generate(request: dict) -> dict:
    prompts, params = _prompts(request), _params(request["max_tokens"], False)
    outputs, seconds = timed(lambda: STATE["llm"].generate(prompts, params, use_tqdm=False))
    return {"seconds": seconds, "generated": [len(o.outputs[0].token_ids) for o in outputs]}


if __name__ == "__main__":  # vLLM starts processes of its own: nothing may run on import
    serve({"load": load, "generate": generate, "time": time_generate, "unload": lambda r: (_unload(), {})[1]})
