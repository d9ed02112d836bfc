"""Hostile and careless input, each case as it was reported: no code run behind the user's back, no user file
deleted or replaced, no raw dependency traceback, no silent wrong result. (The generated cases are in
test_fuzz.py.)"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from layerdrop_patch import DropConfig, LayerdropError, apply_drop
from layerdrop_patch.checkpoint import from_pretrained, save_pretrained
from layerdrop_patch.cli import app
from layerdrop_patch.errors import MAX_MESSAGE, CheckpointError, ConfigError, InputNotFoundError, OutputExistsError
from layerdrop_patch.run.recipe import load_recipe
from tests.conftest import tiny_model
from tests.tiny_checkpoint import ppl_file, save_tiny

TAMPER = '\nimport pathlib as _p\n_p.Path({marker!r}).write_text("the shipped code ran")\n'


@pytest.fixture(scope="module")
def runner():
    return CliRunner(env={"COLUMNS": "200", "LAYERDROP_TRACEBACK": ""})


def invoke(runner, *args, input=None):
    return runner.invoke(app, [str(a) for a in args], input=input)


@pytest.fixture(scope="module")
def tampered(tmp_path_factory):
    """A pruned checkpoint whose shipped modeling file was edited to leave a marker when it is executed."""
    root = tmp_path_factory.mktemp("hostile")
    save_tiny(root / "tiny")
    invoke(CliRunner(), "drop", root / "tiny", "--attn", "1", "-o", root / "pruned")
    marker = root / "MARKER"
    for name in ("modeling_layerdrop.py", "configuration_layerdrop.py"):
        path = root / "pruned" / name
        path.write_text(path.read_text() + TAMPER.format(marker=str(marker)))
    ppl_file(root)
    return root, marker


def test_no_command_prompts_for_or_runs_the_shipped_code(runner, tampered):
    """Every command that loads the checkpoint loads its tokenizer too; a terminal answering "y" must not matter."""
    root, marker = tampered
    calls = [
        ("score", root / "pruned", "--n-samples", 2, "--seq-len", 16, "-o", root / "s"),
        ("eval", root / "pruned", "--ppl-dataset", root / "ppl.txt", "--ppl-tokens", 64, "-o", root / "e"),
        ("bench", root / "pruned", "--prompt-len", 4, "--new-tokens", 2, "--repeats", 1),
        ("drop", root / "pruned", "--attn", "1,2", "-o", root / "d"),
        ("export", root / "pruned", "--format", "decilm", "-o", root / "x"),
    ]
    for args in calls:
        result = invoke(runner, *args, input="y\ny\ny\n")
        assert "custom code" not in result.output and "[y/N]" not in result.output, (args, result.output)
        assert result.exit_code in (0, 1), (args, result.output, result.exception)
    assert not marker.exists(), "layerdrop ran the code shipped inside a checkpoint"


def test_python_loaders_never_run_the_shipped_code(tampered):
    from layerdrop_patch.models import empty_model, load_model

    root, marker = tampered
    load_model(str(root / "pruned"))
    from_pretrained(root / "pruned")
    empty_model(str(root / "pruned"))
    assert not marker.exists()


def test_a_yaml_bomb_is_refused_quickly_with_a_short_message(tmp_path):
    bomb = "model: m\ndrop: {kind: attn, n: 1}\na: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},"
        f"*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)}]\n" for i in range(8))
    path = tmp_path / "bomb.yaml"
    path.write_text(bomb)
    assert len(bomb) < 700
    with pytest.raises(LayerdropError) as info:
        load_recipe(path)
    assert "anchors/aliases" in str(info.value) and len(str(info.value)) < 1000


def test_duplicate_keys_deep_nesting_and_bad_overrides_are_named(tmp_path):
    dup = tmp_path / "dup.yaml"
    dup.write_text("model: m\ndrop: {kind: attn, n: 1}\ndrop: {kind: mlp, n: 2}\n")
    with pytest.raises(LayerdropError, match=r"line 3: key 'drop' appears twice \(first on line 2\)"):
        load_recipe(dup)
    deep = tmp_path / "deep.yaml"
    deep.write_text("model: m\nx: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(LayerdropError, match="nesting deeper than"):
        load_recipe(deep)
    ok = tmp_path / "ok.yaml"
    ok.write_text("model: m\ndrop: {kind: attn, n: 1}\n")
    with pytest.raises(LayerdropError, match=r"--set drop.n: the value .* is not YAML"):
        load_recipe(ok, ["drop.n=[1, 2"])
    with pytest.raises(LayerdropError, match="expected KEY=VALUE"):
        load_recipe(ok, ["drop.n"])


def test_recipe_run_never_deletes_or_replaces_user_files(runner, tmp_path):
    save_tiny(tmp_path / "tiny")
    ppl = ppl_file(tmp_path)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {tmp_path / 'tiny'}\ncalibration: {{n_samples: 2, seq_len: 16}}\n"
                      f"drop: {{kind: attn, n: 1}}\nevaluate: {{perplexity_dataset: {ppl}, perplexity_tokens: 64, "
                      "perplexity_seq_len: 32, baseline: false}\n")
    out = tmp_path / "out"
    (out / "model-dropped").mkdir(parents=True)
    (out / "model-dropped" / "my_weights.bin").write_bytes(b"precious")
    (out / "summary.json").write_text('{"mine": true}')
    result = invoke(runner, "recipe", "run", recipe, "-o", out)
    assert result.exit_code == 1 and "already holds files that no earlier recipe run wrote" in result.output
    assert (out / "model-dropped" / "my_weights.bin").read_bytes() == b"precious"
    assert json.loads((out / "summary.json").read_text()) == {"mine": True}
    fresh = tmp_path / "fresh"
    assert invoke(runner, "recipe", "run", recipe, "-o", fresh).exit_code == 0
    assert invoke(runner, "recipe", "run", recipe, "-o", fresh).exit_code == 0  # its own directory: resumes


def test_a_resumed_run_rebuilds_a_checkpoint_whose_weights_were_damaged(runner, tmp_path):
    save_tiny(tmp_path / "tiny")
    ppl = ppl_file(tmp_path)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {tmp_path / 'tiny'}\ncalibration: {{n_samples: 2, seq_len: 16}}\n"
                      f"drop: {{kind: attn, n: 1}}\nevaluate: {{perplexity_dataset: {ppl}, perplexity_tokens: 64, "
                      "perplexity_seq_len: 32, baseline: false}\n")
    assert invoke(runner, "recipe", "run", recipe, "-o", tmp_path / "run").exit_code == 0
    weights = tmp_path / "run" / "model-dropped" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # truncated behind our back
    result = invoke(runner, "recipe", "run", recipe, "-o", tmp_path / "run")
    assert result.exit_code == 0 and "drop: already done" not in result.output
    from_pretrained(tmp_path / "run" / "model-dropped")  # whole again


def test_damaged_checkpoints_are_named_not_dependency_tracebacks(tmp_path):
    model = apply_drop(tiny_model("llama", 4), DropConfig(attn=[1]))
    save_pretrained(model, tmp_path / "ok")
    weights = tmp_path / "ok" / "model.safetensors"
    import shutil

    shutil.copytree(tmp_path / "ok", tmp_path / "truncated")
    cut = tmp_path / "truncated" / "model.safetensors"
    cut.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="weight file is unreadable"):
        from_pretrained(tmp_path / "truncated")

    shutil.copytree(tmp_path / "ok", tmp_path / "reshaped")
    tensors = load_file(tmp_path / "reshaped" / "model.safetensors")
    tensors["model.layers.0.mlp.up_proj.weight"] = torch.zeros(3, 3)
    save_file(tensors, tmp_path / "reshaped" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"mismatched shapes: .*model\.layers\.0\.mlp\.up_proj\.weight"):
        from_pretrained(tmp_path / "reshaped")

    shutil.copytree(tmp_path / "ok", tmp_path / "stringly")
    config = json.loads((tmp_path / "stringly" / "config.json").read_text())
    config["drop_config"]["format_version"] = "1"
    (tmp_path / "stringly" / "config.json").write_text(json.dumps(config))
    with pytest.raises(LayerdropError, match="format_version must be an integer"):
        from_pretrained(tmp_path / "stringly")

    with pytest.raises(ConfigError, match="drop_config must be a DropConfig or its dict"):
        from_pretrained(tmp_path / "ok", drop_config=[1, 2])
    with pytest.raises(InputNotFoundError, match="neither a local directory nor a hub id"):
        from_pretrained("./no/such/model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputNotFoundError, match="no config.json"):
        from_pretrained(tmp_path / "empty")


def test_advice_names_only_formats_that_accept_the_family(tmp_path):
    from layerdrop_patch.export import ExportError, export

    model = apply_drop(tiny_model("phi3", 4, pad_token_id=0, bos_token_id=1, eos_token_id=2), DropConfig(attn=[1]))
    with pytest.raises(ExportError) as info:
        export(model, "standard", tmp_path / "std")
    assert "decilm" not in str(info.value) and "gguf" not in str(info.value)
    with pytest.raises(ExportError, match="supports model types .*not 'phi3'"):
        export(model, "gguf", tmp_path / "m.gguf")


def test_mistakes_that_would_pass_silently_are_refused(runner, tmp_path):
    save_tiny(tmp_path / "tiny")
    result = invoke(runner, "drop", tmp_path / "tiny", "-n", 0, "--method", "reverse", "-o", tmp_path / "n0")
    assert result.exit_code == 1 and "the drop is empty" in result.output and not (tmp_path / "n0").exists()
    result = invoke(runner, "drop", tmp_path / "tiny", "-n", 1, "--seq-len", 4096, "-o", tmp_path / "long")
    assert result.exit_code == 1 and "longer than this model's context of 512" in result.output
    for overwrite in ((), ("--overwrite",)):
        result = invoke(runner, "drop", tmp_path / "tiny", "--attn", 1, "-o", tmp_path / "tiny", *overwrite)
        assert result.exit_code == 1 and "replace the input" in result.output
    assert (tmp_path / "tiny" / "config.json").is_file()
    result = invoke(runner, "export", tmp_path / "tiny", "--format", "decilm", "-o", tmp_path)
    assert result.exit_code == 1 and "replace the input" in result.output
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    result = invoke(runner, "export", tmp_path / "tiny", "--format", "standard", "-o", tmp_path / "taken")
    assert result.exit_code == 1 and "--overwrite" in result.output
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"


def test_outputs_honour_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        model = apply_drop(tiny_model("llama", 2), DropConfig(attn=[1]))
        save_pretrained(model, tmp_path / "ckpt")
        from layerdrop_patch.files import atomic_write_json

        atomic_write_json(tmp_path / "x.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "ckpt").stat().st_mode) == 0o755
    for path in [tmp_path / "x.json", *(tmp_path / "ckpt").iterdir()]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_cli_errors_are_one_bounded_line_and_bugs_keep_their_traceback(runner, tmp_path, monkeypatch):
    result = invoke(runner, "drop", "x" * 5000, "--attn", 1, "-o", tmp_path / "o")
    assert result.exit_code == 1 and result.output.startswith("Error:") and len(result.output) < MAX_MESSAGE + 200
    from layerdrop_patch.cli import analyse

    def bug(*args, **kwargs):
        raise ValueError("a genuine bug")

    monkeypatch.setattr("layerdrop_patch.models.load_model", bug)
    save_tiny(tmp_path / "tiny")
    result = invoke(runner, "score", tmp_path / "tiny", "-o", tmp_path / "s")
    assert isinstance(result.exception, ValueError) and not isinstance(result.exception, LayerdropError)
    assert analyse  # the command module under test
    with pytest.raises(OutputExistsError):
        save_pretrained(apply_drop(tiny_model("llama", 2), DropConfig(attn=[1])), tmp_path / "tiny")
