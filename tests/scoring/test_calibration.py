"""Calibration loading: packing semantics, every source type, and the documented errors."""

from __future__ import annotations

import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from layerdrop_patch.errors import DataError, LayerdropError
from layerdrop_patch.scoring.calibration import Calibration, load_calibration


class WordTokenizer:
    """A deterministic whitespace tokenizer (id = hash of the word), with the call signature of HF tokenizers."""

    eos_token_id = 1

    def encode(self, text: str) -> list[int]:
        return [2 + (sum(map(ord, w)) * 31 + len(w)) % 500 for w in text.split()]

    def __call__(self, texts, add_special_tokens=True):
        assert add_special_tokens is False  # chunks are packed documents, not one BOS-prefixed sentence each
        return {"input_ids": [self.encode(t) for t in texts]}


TOK = WordTokenizer()
DOCS = [" ".join(f"w{i}_{j}" for j in range(5 + i % 7)) for i in range(40)]


def expected_stream(docs, seed):
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    out = []
    for i in order:
        out += TOK.encode(docs[i]) + [TOK.eos_token_id]
    return out


def test_list_of_strings_packs_eos_joined_documents_in_seeded_order():
    calib = load_calibration(DOCS, TOK, n_samples=4, seq_len=16, seed=3)
    assert isinstance(calib, Calibration) and calib.input_ids.dtype == torch.long
    assert calib.input_ids.shape == (4, 16) and calib.tokens_used == 64
    assert calib.input_ids.flatten().tolist() == expected_stream(DOCS, 3)[:64]
    assert (calib.input_ids == TOK.eos_token_id).any()  # documents are separated by EOS, no padding
    assert "4 x 16" in calib.description and "seed 3" in calib.description and "64 tokens" in calib.description
    assert calib.documents_used < len(DOCS)  # stops tokenizing once it has enough
    other = load_calibration(DOCS, TOK, n_samples=4, seq_len=16, seed=4)
    assert not torch.equal(other.input_ids, calib.input_ids)
    assert torch.equal(load_calibration(DOCS, TOK, n_samples=4, seq_len=16, seed=3).input_ids, calib.input_ids)


def test_bundled_sources():
    c4 = load_calibration("c4", TOK, n_samples=8, seq_len=64)
    assert c4.input_ids.shape == (8, 64) and "C4" in c4.description
    wt = load_calibration("wikitext2", TOK, n_samples=2, seq_len=32, seed=1)
    assert wt.input_ids.shape == (2, 32) and "WikiText-2" in wt.description


def test_file_types_and_directory(tmp_path):
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps({"text": d, "id": i}) for i, d in enumerate(DOCS[:10])) + "\n")
    (tmp_path / "b.json").write_text(json.dumps([{"text": d} for d in DOCS[10:20]]))
    pq.write_table(pa.table({"text": DOCS[20:30], "url": ["u"] * 10}), tmp_path / "c.parquet")
    (tmp_path / "d.txt").write_text("\n\n".join(DOCS[30:40]))
    for name in ("a.jsonl", "b.json", "c.parquet", "d.txt"):
        calib = load_calibration(tmp_path / name, TOK, n_samples=2, seq_len=8)
        assert calib.input_ids.shape == (2, 8), name
    everything = load_calibration(tmp_path, TOK, n_samples=1, seq_len=8)
    assert "of 40 documents" in everything.description
    (tmp_path / "e.json").write_text(json.dumps(DOCS[:5]))  # a plain list of strings is fine too
    assert load_calibration(tmp_path / "e.json", TOK, n_samples=1, seq_len=8).tokens_used == 8
    (tmp_path / "f.jsonl").write_text("\n".join(json.dumps({"content": d}) for d in DOCS))
    assert load_calibration(tmp_path / "f.jsonl", TOK, n_samples=1, seq_len=8, text_column="content").n_samples == 1


def test_datasets_dataset_and_unreachable_hub():
    import datasets

    ds = datasets.Dataset.from_dict({"text": DOCS})
    assert load_calibration(ds, TOK, n_samples=2, seq_len=8).input_ids.shape == (2, 8)
    with pytest.raises(ValueError, match=r"columns found: \['body'\]"):
        load_calibration(datasets.Dataset.from_dict({"body": DOCS}), TOK, n_samples=1, seq_len=8)
    with pytest.raises(DataError, match="could not load calibration dataset .*local"):
        load_calibration("someone/no-such-dataset", TOK, n_samples=1, seq_len=8)


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="no non-empty"):
        load_calibration([], TOK)
    with pytest.raises(ValueError, match="no non-empty"):
        load_calibration(["", "  \n"], TOK)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine text \xff\xfe broken")
    with pytest.raises(ValueError, match="not valid UTF-8"):
        load_calibration(bad, TOK)
    notjson = tmp_path / "x.json"
    notjson.write_text("{'text': 'single quotes'}")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_calibration(notjson, TOK)
    badline = tmp_path / "x.jsonl"
    badline.write_text(json.dumps({"text": "ok"}) + "\nnot json\n")
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):
        load_calibration(badline, TOK)
    nocol = tmp_path / "y.jsonl"
    nocol.write_text(json.dumps({"body": "a b c", "title": "t"}) + "\n")
    with pytest.raises(ValueError, match=r"fields found: \['body', 'title'\]"):
        load_calibration(nocol, TOK)
    pq.write_table(pa.table({"content": ["a b"]}), tmp_path / "z.parquet")
    with pytest.raises(ValueError, match=r"columns found: \['content'\]"):
        load_calibration(tmp_path / "z.parquet", TOK)
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 not really")
    with pytest.raises(ValueError, match="not a readable Parquet"):
        load_calibration(broken, TOK)
    with pytest.raises(ValueError, match=r"holds 12 tokens .* seq_len=100"):
        load_calibration(["a b c d e", "f g h i j"], TOK, n_samples=1, seq_len=100)
    with pytest.raises(FileNotFoundError):
        load_calibration(tmp_path / "missing.jsonl", TOK)
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(ValueError, match="contains no .json"):
        load_calibration(tmp_path / "empty_dir", TOK)
    with pytest.raises(TypeError, match="tokenizer"):
        load_calibration(DOCS)
    with pytest.raises(LayerdropError, match="strings only"):
        load_calibration(["ok", 3], TOK)
    with pytest.raises(ValueError, match="positive"):
        load_calibration(DOCS, TOK, n_samples=0)


def test_fewer_chunks_than_requested_warns_and_says_so():
    with pytest.warns(UserWarning, match=r"using 2 samples .* instead of the 50"):
        calib = load_calibration(DOCS[:3], TOK, n_samples=50, seq_len=8)
    assert calib.n_samples == 2 and calib.tokens_used == 16


@pytest.mark.integration
def test_real_tokenizer_on_bundled_c4(smollm2):
    _, tokenizer = smollm2
    calib = load_calibration("c4", tokenizer, n_samples=4, seq_len=128, seed=0)
    assert calib.input_ids.shape == (4, 128)
    text = tokenizer.decode(calib.input_ids[0])
    assert len(text) > 200 and calib.input_ids.max() < len(tokenizer)
