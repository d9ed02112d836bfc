"""The engine machinery without an engine: worker processes, their failures, and how the served benchmark
interleaves and times models (a fake engine worker, `fake_worker.py`, speaks the real protocol)."""

import copy
import json
import sys
from pathlib import Path

import pytest

from layerdrop_patch import DropConfig
from layerdrop_patch.errors import EngineError, MissingDependencyError
from layerdrop_patch.evaluation.bench import compare_engine
from layerdrop_patch.evaluation.engines.registry import ENGINES, Engine, Served
from layerdrop_patch.evaluation.engines.worker import EngineWorker, engine_python
from layerdrop_patch.evaluation.toy import tiny_llama
from layerdrop_patch.patch import apply_drop, kept_attention_layers


class FakeEngine(Engine):
    name = "fake"
    module = "json"  # any module this interpreter has
    worker = str(Path(__file__).with_name("fake_worker.py"))
    python_env = "LAYERDROP_FAKE_PYTHON"
    install = "nothing to install"

    def serve(self, model, tokenizer, directory, *, gguf_type=None):
        layers = len(kept_attention_layers(model.config))
        directory.mkdir(parents=True)
        (directory / "model.fake").write_text(str(layers))
        return Served(directory / "model.fake", "fake", layers, layers * 100, {})


@pytest.fixture
def fake(monkeypatch, tmp_path):
    monkeypatch.setitem(ENGINES, "fake", FakeEngine())
    monkeypatch.setenv("FAKE_ENGINE_LOG", str(tmp_path / "requests.jsonl"))
    return ENGINES["fake"]


def _requests(tmp_path):
    return [json.loads(line) for line in (tmp_path / "requests.jsonl").read_text().splitlines()]


def test_served_benchmark_interleaves_models_and_splits_prefill_from_decode(fake, tmp_path):
    base = tiny_llama(num_layers=4, seed=1)
    dropped = apply_drop(copy.deepcopy(base), DropConfig(attn=[1, 2, 3]))
    out = compare_engine({"base": base, "attn3": dropped}, 258, engine="fake", batch_size=2, prompt_len=8,
                         new_tokens=5, repeats=2, warmup=1, progress=False)
    requests = _requests(tmp_path)
    loads, timed = requests[:2], requests[2:]
    assert [open(r["path"]).read() if Path(r["path"]).exists() else None for r in loads] == [None, None]  # cleaned up
    base_pid, dropped_pid = loads[0]["pid"], loads[1]["pid"]
    assert base_pid != dropped_pid  # one worker per model, both loaded while the runs alternate
    expected = [(pid, n) for _ in range(3) for pid in (base_pid, dropped_pid) for n in (1, 5)]
    assert [(r["pid"], r["max_tokens"]) for r in timed] == expected
    assert all(len(r["prompts"]) == 2 and len(r["prompts"][0]) == 8 for r in timed)
    assert timed[0]["prompts"] == timed[2]["prompts"]  # the same prompts for every model
    b, d = out["models"]["base"], out["models"]["attn3"]
    assert b["prefill_s"] == pytest.approx(4 * (1e-4 * 16 + 1e-3))
    assert b["decode_s"] == pytest.approx(4 * 4e-3) and d["decode_s"] == pytest.approx(1 * 4e-3)
    assert b["prefill_tok_s"] == pytest.approx(2 * 8 / b["prefill_s"])
    assert b["decode_tok_s"] == pytest.approx(2 * 4 / b["decode_s"])
    assert out["ratios"]["attn3"]["decode_speedup"] == pytest.approx(4.0)
    assert out["ratios"]["attn3"]["kv_cache_ratio"] == pytest.approx(0.25)
    assert b["kv_cache_bytes"] == 4 * 100 * 2 * (8 + 5 - 1) and b["repeats"] == 2
    assert (b["format"], out["settings"]["engine"], out["settings"]["engine_version"]) == ("fake", "fake", "fake 1.0")


def test_a_crashing_engine_becomes_an_engine_error_with_its_last_words(fake):
    worker = EngineWorker(fake).start()
    try:
        with pytest.raises(EngineError, match=r"(?s)ended \(exit status -6\).*GGML_ASSERT\(fake"):
            worker.call("crash")
    finally:
        worker.close()


def test_a_refusal_is_an_engine_error_and_the_worker_goes_on(fake, tmp_path):
    (tmp_path / "m.fake").write_text("2")
    with EngineWorker(fake) as worker:
        with pytest.raises(EngineError, match="does not serve that model"):
            worker.call("refuse")
        assert worker.call("load", path=str(tmp_path / "m.fake"))["version"] == "fake 1.0"
        with pytest.raises(EngineError, match="unknown op"):
            worker.call("no-such-op")


def test_missing_engine_or_interpreter_says_how_to_install(fake, monkeypatch):
    with pytest.raises(MissingDependencyError, match="does not exist"):
        engine_python(fake, "/nonexistent/bin/python")
    monkeypatch.setattr(FakeEngine, "module", "surely_not_an_installed_module")
    with pytest.raises(MissingDependencyError, match="nothing to install.*LAYERDROP_FAKE_PYTHON"):
        engine_python(fake)
    monkeypatch.setenv("LAYERDROP_FAKE_PYTHON", sys.executable)
    with pytest.raises(MissingDependencyError, match=f"not installed in {sys.executable}"):
        engine_python(fake)
