"""The `layerdrop` CLI through Typer's CliRunner, on a tiny random Llama saved to a directory (the model argument
is that path, as a user would pass it). Assertions are on the files each command writes and on numbers that
can be derived independently (which layers the scores say to drop, the KV-cache ratio, the reload check)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from layerdrop_patch.cli import app
from tests.tiny_checkpoint import NUM_LAYERS, ppl_file, save_tiny

PNG = b"\x89PNG\r\n\x1a\n"
COMMANDS = ["score", "drop", "eval", "bench", "quantize", "recover", "export", "push", "demo", "recipe run",
            "recipe validate"]


@pytest.fixture(scope="module")
def runner():
    return CliRunner(env={"COLUMNS": "200", "LAYERDROP_TRACEBACK": ""})


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A tiny model dir, its scores and an attention-dropped checkpoint, shared by the tests below."""
    root = tmp_path_factory.mktemp("cli")
    save_tiny(root / "tiny")
    ppl_file(root)
    return root


def invoke(runner, *args, ok=True):
    result = runner.invoke(app, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, f"{args}: exit {result.exit_code}\n{result.output}\n{result.exception!r}"
    return result


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(runner, command):
    result = invoke(runner, *command.split(), "--help")
    assert "Example" in result.output, result.output


@pytest.fixture(scope="module")
def scored(runner, work):
    """`layerdrop score` on the tiny model; returns its scores.json path."""
    invoke(runner, "score", work / "tiny", "--n-samples", 4, "--seq-len", 32, "-o", work / "scores")
    return work / "scores" / "scores.json"


@pytest.fixture(scope="module")
def attn2(runner, work, scored):
    """The 2 lowest-scoring attention sublayers dropped by `layerdrop drop --scores`; returns (dir, output)."""
    out = invoke(runner, "drop", work / "tiny", "--kind", "attn", "-n", 2, "--scores", scored, "-o", work / "attn2").output
    return work / "attn2", out


@pytest.fixture(scope="module")
def manual(runner, work):
    """Block 1 and attention 3 dropped by hand."""
    invoke(runner, "drop", work / "tiny", "--blocks", 1, "--attn", 3, "-o", work / "manual")
    return work / "manual"


def test_score_then_drop_by_scores(work, scored, attn2):
    for name in ("importance.png", "drop_order.png"):
        assert (work / "scores" / name).read_bytes()[:8] == PNG
    scores = json.loads(scored.read_text())
    assert scores["num_layers"] == NUM_LAYERS and scores["tokens"] == 4 * 32
    assert scores["model_name"] == str(work / "tiny")  # the argument as given, not a resolved cache path
    attn = scores["metrics"]["cosine"]["attn"]
    lowest_two = sorted(sorted(range(NUM_LAYERS), key=attn.__getitem__)[:2])
    path, out = attn2
    config = json.loads((path / "config.json").read_text())
    assert config["drop_config"]["attn"] == lowest_two and config["drop_config"]["mlp"] == []
    assert config["drop_config"]["base_model"] == str(work / "tiny")
    assert "2/4" in out  # attention layers kept


def test_drop_manual_blocks_and_a_baseline_without_scores(runner, work, manual):
    cfg = json.loads((manual / "config.json").read_text())["drop_config"]
    assert (cfg["attn"], cfg["mlp"]) == ([1, 3], [1])
    invoke(runner, "drop", work / "tiny", "--kind", "mlp", "-n", 2, "--method", "reverse", "--keep-last",
           "-o", work / "reverse")
    cfg = json.loads((work / "reverse" / "config.json").read_text())["drop_config"]
    assert (cfg["attn"], cfg["mlp"], cfg["method"]) == ([], [1, 2], "reverse-mlp")  # deepest first, last kept


def test_greedy_drop_records_its_order_beside_the_output_and_a_rerun_goes_on_from_it(runner, work):
    greedy = ("drop", work / "tiny", "--kind", "attn", "--method", "greedy", "--n-samples", 4, "--seq-len", 32)
    invoke(runner, *greedy, "-n", 2, "-o", work / "greedy")
    record = json.loads((work / "greedy-selection" / "selection_history.json").read_text())["history"]
    cfg = json.loads((work / "greedy" / "config.json").read_text())["drop_config"]
    assert cfg["attn"] == sorted(h["layer"] for h in record) and len(record) == 2
    assert (work / "greedy-selection" / "drop_config.json").is_file()
    invoke(runner, *greedy, "-n", 3, "-o", work / "greedy", "--overwrite")  # one more step, not three
    longer = json.loads((work / "greedy-selection" / "selection_history.json").read_text())["history"]
    assert [h["layer"] for h in longer[:2]] == [h["layer"] for h in record]
    assert [h.get("resumed", False) for h in longer] == [True, True, False]
    assert json.loads((work / "greedy" / "config.json").read_text())["drop_config"]["attn"] == sorted(
        h["layer"] for h in longer)
    # a directory of the user's where the record would go is refused, untouched, before the model loads
    (work / "mine-selection").mkdir()
    (work / "mine-selection" / "notes.txt").write_text("mine")
    result = invoke(runner, *greedy, "-n", 2, "-o", work / "mine", ok=False)
    assert result.exit_code == 1 and "mine-selection already holds files" in result.output
    assert [f.name for f in (work / "mine-selection").iterdir()] == ["notes.txt"] and not (work / "mine").exists()


def test_user_errors_are_one_line_without_traceback(runner, work):
    result = invoke(runner, "drop", work / "tiny", "--attn", 9, "-o", work / "bad", ok=False)
    assert result.exit_code == 1
    assert "Error: drop_config.attn: layer index 9 is out of range" in result.output
    assert "Traceback" not in result.output and not (work / "bad").exists()
    result = invoke(runner, "drop", work / "tiny", "--method", "random", "-n", 2, "--ratio", 0.5, "-o", work / "bad",
                    ok=False)
    assert result.exit_code == 1 and "give exactly one of n" in result.output
    result = invoke(runner, "score", work / "nope", ok=False)
    assert result.exit_code == 1 and "Error:" in result.output


def test_eval_compares_models_and_bench_measures_the_kv_cache(runner, work, attn2):
    ppl = work / "ppl.txt"
    result = invoke(runner, "eval", work / "tiny", work / "attn2", "--tasks", "", "--ppl-dataset", ppl,
                    "--ppl-tokens", 256, "--ppl-seq-len", 8, "-o", work / "eval")
    columns = json.loads((work / "eval" / "eval.json").read_text())
    base, dropped = (columns[str(work / name)]["perplexity"]["value"] for name in ("tiny", "attn2"))
    assert base > 1 and dropped > 1 and base != dropped
    assert "ppl.txt perplexity" in (work / "eval" / "eval_table.md").read_text()
    # 32 windows: the paired test is run window by window and over runs of 8 neighbouring windows
    paired = json.loads((work / "eval" / "paired.json").read_text())["perplexity"]
    assert paired["n"] == 32 and paired["difference"] == pytest.approx(dropped / base, rel=1e-6)
    assert paired["blocks"]["block"] == 8 and paired["blocks"]["difference"] == pytest.approx(dropped / base, rel=1e-6)
    assert "8-window blocks: p=" in " ".join(result.output.split())

    invoke(runner, "bench", work / "tiny", work / "attn2", "--prompt-len", 8, "--new-tokens", 4, "--repeats", 1,
           "-o", work / "bench")
    bench = json.loads((work / "bench" / "bench.json").read_text())
    ratio = bench["ratios"][str(work / "attn2")]["kv_cache_ratio"]
    assert ratio == pytest.approx(2 / 4)  # 2 of 4 attention layers keep a cache
    assert bench["models"][str(work / "attn2")]["kv_cache_layers"] == 2


def test_eval_sweep_plots_quality_against_dropped_count(runner, work, scored):
    invoke(runner, "eval", work / "tiny", "--sweep", "0,1,2", "--scores", work / "scores" / "scores.json",
           "--tasks", "", "--ppl-dataset", work / "ppl.txt", "--ppl-tokens", 256, "-o", work / "sweep")
    rows = json.loads((work / "sweep" / "sweep.json").read_text())
    assert [r["n"] for r in rows] == [0, 1, 2] and rows[0]["dropped"] == "nothing"
    assert (work / "sweep" / "perplexity_vs_dropped.png").read_bytes()[:8] == PNG


def test_eval_runs_an_lm_eval_task(runner, work, attn2):
    invoke(runner, "eval", work / "attn2", "--tasks", "arc_easy", "--limit", 2, "--no-perplexity", "-o", work / "lm")
    res = json.loads((work / "lm" / "eval.json").read_text())[str(work / "attn2")]
    score = res["tasks"]["arc_easy"]
    assert score["n"] == 2 and score["metric"] == "acc_norm" and 0.0 <= score["value"] <= 1.0


def test_recover_writes_a_reloadable_checkpoint_and_loss_curve(runner, work, manual):
    invoke(runner, "recover", work / "manual", "-o", work / "recovered", "--steps", 2, "--batch-size", 2,
           "--seq-len", 32, "--eval-tokens", 0)
    assert (work / "recovered" / "loss.png").read_bytes()[:8] == PNG
    assert len(json.loads((work / "recovered" / "recovery.json").read_text())["losses"]) == 2
    from layerdrop_patch.models import load_model

    model, _ = load_model(str(work / "recovered"))
    assert model.config.drop_config["attn"] == [1, 3]


def test_quantize_refuses_autoawq_with_the_reason(runner, work, attn2):
    result = invoke(runner, "quantize", work / "attn2", "-o", work / "awq", "--backend", "autoawq", ok=False)
    assert result.exit_code == 1 and "backend='autoawq'" in result.output and "Fix:" in result.output
    assert not (work / "awq").exists()


def test_export_is_wired_to_the_export_module(runner, work, manual):
    import importlib.util

    result = invoke(runner, "export", work / "manual", "--format", "standard", "-o", work / "exported", ok=False)
    if importlib.util.find_spec("layerdrop_patch.export") is None:
        assert result.exit_code == 1 and "export module is not available" in result.output
    else:  # a mixed attention/block drop is not a block-only drop: the standard format must refuse or write it
        assert result.exit_code in (0, 1) and "Traceback" not in result.output


def test_push_uploads_the_checkpoint_folder_through_huggingface_hub(runner, work, monkeypatch, attn2, scored):
    import huggingface_hub

    uploaded = {}

    def create_repo(self, repo_id, **kwargs):
        uploaded["repo"] = repo_id

    def upload_folder(self, *, folder_path, repo_id, **kwargs):
        uploaded["files"] = sorted(p.name for p in Path(folder_path).iterdir())
        uploaded["card"] = (Path(folder_path) / "README.md").read_text()
        return type("Info", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/abc", "pr_url": None})()

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    json.dump({"tasks": {"arc_easy": {"value": 0.5, "metric": "acc_norm"}}, "perplexity": None},
              open(work / "card_eval.json", "w"))
    out = invoke(runner, "push", work / "attn2", "alice/tiny-attn2", "--token", "hf_x", "--eval", work / "card_eval.json",
                 "--scores", work / "scores" / "scores.json").output
    assert "https://huggingface.co/alice/tiny-attn2/commit/abc" in out.replace("\n", "")
    assert uploaded["repo"] == "alice/tiny-attn2"
    assert {"config.json", "model.safetensors", "modeling_layerdrop.py", "README.md"} <= set(uploaded["files"])
    assert "arc_easy" in uploaded["card"]


def test_recipe_commands(runner, work, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"model: {work / 'tiny'}\ndrop:\n  kind: attn\n  n: 1\n  metrc: cosine\n")
    result = invoke(runner, "recipe", "validate", bad, ok=False)
    assert result.exit_code == 1 and "drop.metrc: unknown key; did you mean 'metric'?" in result.output
    good = tmp_path / "good.yaml"
    good.write_text(f"model: {work / 'tiny'}\ncalibration: {{n_samples: 2, seq_len: 16}}\ndrop: {{kind: joint, n: 2}}\n"
                    f"evaluate: {{baseline: false, perplexity_dataset: {work / 'ppl.txt'}, perplexity_tokens: 128,"
                    f" perplexity_seq_len: 64}}\noutput: {tmp_path / 'run'}\n")
    assert "score" in invoke(runner, "recipe", "validate", good).output
    import importlib.util

    awq = Path(__file__).resolve().parents[2] / "recipes" / "smollm2-attn-drop-awq.yaml"
    shown = invoke(runner, "recipe", "validate", awq).output.replace("\n", "")
    if importlib.util.find_spec("gptqmodel") is None:  # the warning says how to install, brackets intact
        assert "pip install 'layerdrop-patch[awq]'" in shown
    invoke(runner, "recipe", "run", good)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"]["drop"]["num_dropped"] == 2
    again = invoke(runner, "recipe", "run", good).output
    assert again.count("already done") == 4  # score, drop, evaluate, report


def test_demo_end_to_end_on_a_tiny_model(runner, work):
    out = invoke(runner, "demo", "--model", work / "tiny", "-o", work / "demo", "--n-attn", 2, "--tasks", "",
                 "--calibration-samples", 2, "--ppl-dataset", work / "ppl.txt", "--ppl-tokens", 256,
                 "--new-tokens", 4, "--no-sweep").output
    summary = json.loads((work / "demo" / "demo_summary.json").read_text())
    reload = summary["reload_without_package"]
    assert reload["same_greedy_tokens"] and reload["max_abs_logit_diff"] < 1e-4
    assert reload["layerdrop_modules_imported"] == []
    assert summary["dropped"]["kv_cache_bytes"] * 2 == summary["baseline"]["kv_cache_bytes"]
    assert summary["dropped"]["checkpoint_bytes"] < summary["baseline"]["checkpoint_bytes"]
    for row in ("decode tokens/s", "KV-cache bytes", "checkpoint bytes", "perplexity"):
        assert row in out
    for name in ("scores.json", "importance.png", "drop_order.png", "checkpoint/config.json"):
        assert (work / "demo" / name).exists(), name
