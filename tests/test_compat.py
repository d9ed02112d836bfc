"""The contract with transformers, in a few seconds: run first by `make test`, so that a transformers release
that breaks us fails with one clear message (see `pytest_terminal_summary` in conftest) before the full suite.

What transformers changes under us is where the KV cache travels (`past_key_values` until 5.23, `cache` from
5.24), how generate() builds caches, and how configs and remote code are saved; each has a check here.
"""

from __future__ import annotations

import copy
import inspect
import warnings

import pytest
import torch
import transformers
from transformers import LlamaModel

from layerdrop_patch import DropConfig
from layerdrop_patch.modeling.modeling_layerdrop import CACHE_KWARG
from layerdrop_patch.patch import apply_drop, returned_cache
from tests.conftest import PACKAGE_DIR, caused_by_layerdrop, tiny_model
from tests.reference_forward import reference_greedy


def test_the_cache_keyword_is_the_installed_releases():
    assert CACHE_KWARG in inspect.signature(LlamaModel.forward).parameters
    expected = "cache" if tuple(int(p) for p in transformers.__version__.split(".")[:2]) >= (5, 24) else "past_key_values"
    assert CACHE_KWARG == expected


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_generate_uses_the_compact_cache(cache):
    base = tiny_model("llama", 4)
    model = apply_drop(copy.deepcopy(base), DropConfig(attn=[0, 2]))
    model.generation_config.eos_token_id = None  # the reference is plain argmax decoding: no early stop
    ids = torch.randint(1, 128, (1, 5), generator=torch.Generator().manual_seed(1))
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                         pad_token_id=0, cache_implementation=cache, return_dict_in_generate=True)
    assert len(returned_cache(out).layers) == 2
    assert out.sequences.tolist() == reference_greedy(base, ids, 6, {0, 2}).tolist()


def test_stock_save_writes_the_shipped_classes(tmp_path):
    model = apply_drop(tiny_model("llama", 2), DropConfig(attn=[1]))
    model.save_pretrained(tmp_path)
    config = (tmp_path / "config.json").read_text()
    assert '"layerdrop_llama"' in config and "modeling_layerdrop.LayerDropLlamaForCausalLM" in config
    assert (tmp_path / "modeling_layerdrop.py").is_file() and (tmp_path / "configuration_layerdrop.py").is_file()


# ------------------------------------------------------------------------------------------- the guard itself
def _run_as_if_in(filename: str, source: str, namespace: dict) -> None:
    """Execute `source` with frames that report `filename`, as code living there would."""
    exec(compile(source, filename, "exec"), namespace)  # noqa: S102 - test of the warning guard only


def test_a_deprecation_caused_by_library_code_is_an_error():
    def deprecated_api():  # stands in for a transformers function that warns its caller
        warnings.warn("`old` is deprecated", FutureWarning, stacklevel=2)

    namespace = {"deprecated_api": deprecated_api}
    _run_as_if_in(str(PACKAGE_DIR / "pretend_module.py"), "def call():\n    deprecated_api()\n", namespace)
    with pytest.raises(FutureWarning, match="layerdrop_patch triggered a deprecation"):
        namespace["call"]()
    with pytest.warns(FutureWarning):  # the same call from a test is only a warning
        deprecated_api()
    assert not caused_by_layerdrop(inspect.currentframe())
