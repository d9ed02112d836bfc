"""transformers: the patched models themselves, timed through `generate()` with the KV cache in this process
(`evaluation.bench.compare_generate`). Nothing is exported; `threads` sets torch's thread count for the run."""

from __future__ import annotations

from typing import Any

import torch

from layerdrop_patch.evaluation.engines.registry import Engine, register_engine

__all__ = ["TransformersEngine"]


@register_engine
class TransformersEngine(Engine):
    name = "transformers"
    formats = ()

    def threads(self, threads: int | None) -> int:
        return threads or torch.get_num_threads()

    def compare(self, models: Any, tokenizer_or_vocab: Any, config: Any, *, engine_python: str | None = None,
                progress: bool = True) -> dict:
        from layerdrop_patch.evaluation.bench import compare_generate

        before = torch.get_num_threads()
        torch.set_num_threads(self.threads(config.threads))
        try:
            result = compare_generate(models, tokenizer_or_vocab, config, measure_memory=False, progress=progress)
        finally:
            torch.set_num_threads(before)
        for name, summary in result["models"].items():
            summary["format"] = "patched model"
        return result
