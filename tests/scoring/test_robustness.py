"""Score robustness (He et al. Figs. 3 and 10): nested settings against direct scoring, the agreement statistics
against scipy and hand-worked values, lowest-k against `select`, refusals, and `layerdrop score --robustness`."""

from __future__ import annotations

import json
import math
import random

import pytest
from typer.testing import CliRunner

from layerdrop_patch.errors import ConfigError, DataError
from layerdrop_patch.evaluation.toy import byte_tokenizer
from layerdrop_patch.scoring import (KINDS, METRICS, ImportanceScores, RobustnessConfig, compute_importance,
                                     load_calibration, score_robustness)
from layerdrop_patch.scoring.robustness import RobustnessResult, lowest_k, overlap_at_k, rank_correlation
from tests.conftest import tiny_model

PNG = b"\x89PNG\r\n\x1a\n"
TEXT = "\n\n".join(f"Paragraph {i}: the river ran {i % 7} miles past the mill and the {i}th bridge." for i in range(60))


@pytest.fixture(scope="module")
def tiny():
    return tiny_model("llama", 6, vocab_size=258), byte_tokenizer()


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("robust") / "notes.txt"
    path.write_text(TEXT)
    return path


# ------------------------------------------------------------------------------------------------ statistics
def test_rank_correlation_by_hand():
    # one swapped pair of four: Spearman 1 - 6*2/(4*15) = 0.8; Kendall (5 - 1) / 6
    assert rank_correlation([1, 2, 3, 4], [10, 30, 20, 40]) == pytest.approx(0.8)
    assert rank_correlation([1, 2, 3, 4], [10, 30, 20, 40], "kendall") == pytest.approx(4 / 6)
    assert rank_correlation([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # a NaN (absent sublayer) on either side leaves that layer out
    assert rank_correlation([1, math.nan, 2, 3], [5, 0, 6, 7]) == pytest.approx(1.0)
    assert math.isnan(rank_correlation([1, 1, 1], [1, 2, 3]))  # constant: undefined
    assert math.isnan(rank_correlation([1, math.nan], [1, 2]))
    with pytest.raises(ConfigError, match="equal length"):
        rank_correlation([1, 2], [1, 2, 3])


def _scores(values: dict[str, list[float]]) -> ImportanceScores:
    n = len(next(iter(values.values())))
    kinds = {k: values.get(k, [float(i) for i in range(n)]) for k in KINDS}
    return ImportanceScores({m: kinds for m in METRICS}, "cosine")


def test_lowest_k_is_what_select_drops():
    from layerdrop_patch.selection import select

    rng = random.Random(0)
    for _ in range(20):
        values = [rng.choice([0.1, 0.2, 0.3, 0.4, math.nan]) for _ in range(12)]
        if sum(not math.isnan(v) for v in values) < 5:
            continue
        for kind in ("attn", "mlp"):
            scores = _scores({kind: values})
            assert lowest_k(values, 4) == sorted(getattr(select(scores, kind, n=4), kind)), values
    assert overlap_at_k([1, 2, 3, 4, 5], [5, 4, 3, 2, 1], 2) == 0
    assert overlap_at_k([1, 2, 3, 4, 5], [2, 1, 9, 9, 0], 2) == 1  # {0, 1} vs {4, 1}


# ------------------------------------------------------------------------------------------------ scoring
def test_every_setting_equals_direct_scoring_of_its_samples(tiny, text_file):
    """One incremental pass per source gives, for every count n, the scores of compute_importance on exactly
    the first n samples that load_calibration returns for n: nested sets, exact token-weighted means."""
    model, tok = tiny
    result = score_robustness(model, tok, sources=["c4", str(text_file)], sample_counts=[6, 1, 3], seq_len=24,
                              batch_size=2, seed=5, progress=False)
    assert result.labels == ["c4", "notes"] and result.counts == [1, 3, 6]
    for source, label in (("c4", "c4"), (text_file, "notes")):
        for n in (1, 3, 6):
            direct = compute_importance(model, load_calibration(source, tok, n, 24, seed=5), progress=False)
            got = result.scores[(label, n)]
            assert got.tokens == direct.tokens == n * 24
            for metric in METRICS:
                for kind in KINDS:
                    assert got.metrics[metric][kind] == pytest.approx(direct.metrics[metric][kind], rel=1e-5, abs=1e-7)
    # the agreement numbers are those of the stored scores, for the chosen metric and under another one
    rm = result.with_metric("relative_magnitude")
    a, b = ("c4", 1), ("notes", 6)
    for view, metric in ((result, "cosine"), (rm, "relative_magnitude")):
        va, vb = result.scores[a].metrics[metric]["attn"], result.scores[b].metrics[metric]["attn"]
        row = view.compare("attn", a, b)
        assert row["spearman"] == pytest.approx(rank_correlation(va, vb))
        assert row["overlap"] == len(set(lowest_k(va, 2)) & set(lowest_k(vb, 2)))  # k = round(6 / 4) = 2


def _synthetic(attn_by_setting: dict[tuple[str, int], list[float]], **config) -> RobustnessResult:
    labels = list(dict.fromkeys(label for label, _ in attn_by_setting))
    counts = sorted({n for _, n in attn_by_setting})
    cfg = RobustnessConfig(sources=labels, sample_counts=counts, **config)
    return RobustnessResult(cfg, [{"label": s, "source": s, "description": s} for s in labels],
                            {key: _scores({"attn": v}) for key, v in attn_by_setting.items()}, "synthetic")


def test_summaries_and_json_follow_from_the_scores():
    base = [0.9, 0.1, 0.2, 0.3, 0.8, 0.7, 0.6, 0.5]  # k = 2: layers {1, 2}
    result = _synthetic({
        ("web", 1): [0.9, 0.3, 0.2, 0.1, 0.8, 0.7, 0.6, 0.5],  # {2, 3}
        ("web", 2): [0.9, 0.1, 0.3, 0.2, 0.8, 0.7, 0.6, 0.5],  # {1, 3}
        ("web", 4): [0.9, 0.1, 0.2, 0.25, 0.8, 0.7, 0.6, 0.5],  # {1, 2}
        ("web", 8): base,
        ("books", 1): base, ("books", 2): base,
        ("books", 4): [0.9, 0.25, 0.2, 0.1, 0.8, 0.7, 0.6, 0.5],  # {2, 3}: the set changes back and forth
        ("books", 8): base,
    })
    assert result.k("attn") == 2
    assert result.stable_from("attn") == {"web": 4, "books": 8}
    within = result.across_counts("attn")
    assert [within["web"][n]["overlap"] for n in (1, 2, 4, 8)] == [1, 1, 2, 2]
    assert within["web"][1]["spearman"] == pytest.approx(rank_correlation(result.values("attn", ("web", 1)), base))
    across = result.across_sources("attn")
    assert [across[n]["overlap_min"] for n in (1, 2, 4, 8)] == [1, 1, 1, 2]
    assert across[8]["spearman_min"] == pytest.approx(1.0)
    assert len(result.pairs("attn")) == 8 * 7 // 2  # every pair of the 8 settings
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))  # NaN-free JSON
    assert data["kinds"]["attn"]["stable_from"] == {"web": 4, "books": 8}
    assert data["kinds"]["attn"]["lowest_k"]["web"]["2"] == [1, 3]
    assert len(data["settings"]) == 8 and data["settings"][0]["scores"]["format"].startswith("layerdrop-importance")
    assert RobustnessResult.from_dict(data).to_dict() == data  # re-read to re-draw or re-analyse without scoring
    with pytest.raises(DataError, match="not a robustness file"):
        RobustnessResult.from_dict({"format": "layerdrop-importance-scores/1"})


def test_bad_settings_are_refused_with_the_fix(tiny, tmp_path, monkeypatch):
    model, tok = tiny
    with pytest.raises(ConfigError, match="must not repeat"):
        RobustnessConfig(sample_counts=[4, 4])
    with pytest.raises(ConfigError, match=">= 1"):
        RobustnessConfig(sample_counts=[0, 4])
    with pytest.raises(ConfigError, match="nothing to compare"):
        RobustnessConfig(sources=["c4"], sample_counts=[8])
    with pytest.raises(ConfigError, match="metric"):
        RobustnessConfig(metric="cosinus")
    with pytest.raises(ConfigError, match="k_attn: 6 of 6 layers"):
        RobustnessConfig(k_attn=6).k_for("attn", 6)
    # a source too short for the largest count is refused before anything is scored
    import layerdrop_patch.scoring.robustness as robustness

    monkeypatch.setattr(robustness, "compute_importance", lambda *a, **k: pytest.fail("scored before checking"))
    short = tmp_path / "short.txt"
    short.write_text("x" * 40)  # 40 bytes + EOS = 2 samples of 16 byte tokens
    with pytest.raises(DataError, match=r"short.txt' holds only 2 samples of 16 tokens.*--sample-counts"):
        score_robustness(model, tok, sources=["c4", str(short)], sample_counts=[1, 4], seq_len=16, progress=False)


def test_cli_score_robustness_writes_json_table_and_figures(tmp_path, text_file):
    from layerdrop_patch.cli import app
    from tests.tiny_checkpoint import NUM_LAYERS, save_tiny

    save_tiny(tmp_path / "tiny")
    out = tmp_path / "robust"
    args = ["score", str(tmp_path / "tiny"), "--robustness", "--sources", f"c4,{text_file}", "--sample-counts", "1,2",
            "--seq-len", "16", "--metric", "relative_magnitude", "--k-attn", "1", "-o", str(out)]
    result = CliRunner(env={"COLUMNS": "200"}).invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "score robustness (relative_magnitude)" in result.output and "attn overlap@1" in result.output
    data = json.loads((out / "robustness.json").read_text())
    assert data["metric"] == "relative_magnitude" and data["num_layers"] == NUM_LAYERS
    assert data["kinds"]["attn"]["k"] == 1 and data["kinds"]["mlp"]["k"] == 1  # round(4 / 4)
    assert len(data["kinds"]["block"]["pairs"]) == 6 and [s["n_samples"] for s in data["settings"]] == [1, 2, 1, 2]
    assert data["config"]["seq_len"] == 16 and data["settings"][3]["scores"]["tokens"] == 32
    for name in ("robustness_by_source.png", "robustness_by_samples.png"):
        assert (out / name).read_bytes()[:8] == PNG
    assert not (out / "scores.json").exists()
    bad = CliRunner().invoke(app, args[:-2] + ["--sample-counts", "2,2", "-o", str(tmp_path / "x")])
    assert bad.exit_code == 1 and "must not repeat" in bad.output
