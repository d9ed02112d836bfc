"""Hub publishing and model cards, against huggingface_hub's real client with only its HTTP transport faked.

`FakeHub` implements the few Hub endpoints an upload touches (repo creation, branch creation, YAML validation,
preupload, LFS batch / PUT / verify, NDJSON commit) and RECORDS what ends up in each branch or PR. Everything
between `push_to_hub` and the transport -- HfApi, upload modes, LFS hashing, the commit payload -- is the
installed huggingface_hub's own code. The fake is strict where the Hub is: an LFS pointer whose bytes never
arrived, a sha256 that does not match, an unknown endpoint or a bad token all fail the push. Xet storage
itself (hf_xet's Rust client) cannot be faked at this layer; see `test_push_directory_default_pipeline`.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file

import huggingface_hub
from huggingface_hub import constants as hf_constants
from huggingface_hub.utils import _http as hf_http

from layerdrop_patch import DropConfig
from layerdrop_patch.publish.hub import NotALayerdropCheckpointError, push_to_hub
from layerdrop_patch.publish.model_card import GENERATED_MARKER, render_model_card, write_model_card
from layerdrop_patch.modeling import MODELING_FILE, SHIPPED_FILES

httpx = pytest.importorskip("httpx2" if hasattr(hf_http, "httpx2") else "httpx")
if not hasattr(hf_http, "set_client_factory"):  # pragma: no cover - huggingface_hub < 1.0 (requests-based)
    pytest.skip("needs huggingface_hub >= 1.0 (httpx client factory)", allow_module_level=True)

TOKEN = "hf_fake_write_token"
REPO = "alice/tiny-llama-attn-drop"
ENDPOINT = hf_constants.ENDPOINT.rstrip("/")


# ------------------------------------------------------------------------------------------- the fake
class FakeHub:
    """Just enough of the Hub's HTTP API for create_repo + upload_folder, recording every committed file."""

    def __init__(self, lfs_patterns=(r"\.safetensors$", r"\.png$"), lose_lfs_bodies=False, verify=True):
        self.lfs_patterns = [re.compile(p) for p in lfs_patterns]
        self.lose_lfs_bodies = lose_lfs_bodies  # simulate storage that accepts PUTs but keeps nothing
        self.verify = verify  # offer the LFS verify action (the commit checks the objects either way)
        self.repos: dict[str, dict] = {}
        self.lfs_store: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self.commits: list[dict] = []
        self.unexpected: list[str] = []

    # --- transport entry point
    def __call__(self, request):
        url = request.url
        path = url.path
        self.requests.append((request.method, path))
        if request.headers.get("authorization") != f"Bearer {TOKEN}" and not path.startswith("/__lfs"):
            return self._json(401, {"error": "Invalid credentials in Authorization header"})
        routes = [
            ("POST", r"/api/repos/create", self._create_repo),
            ("POST", r"/api/validate-yaml", self._validate_yaml),
            ("POST", r"/api/models/(?P<repo>[^/]+/[^/]+)/branch/(?P<rev>.+)", self._create_branch),
            ("POST", r"/api/models/(?P<repo>[^/]+/[^/]+)/preupload/(?P<rev>.+)", self._preupload),
            ("POST", r"/(?P<repo>[^/]+/[^/]+)\.git/info/lfs/objects/batch", self._lfs_batch),
            ("PUT", r"/__lfs/upload/(?P<oid>[0-9a-f]{64})", self._lfs_put),
            ("POST", r"/__lfs/verify/(?P<oid>[0-9a-f]{64})", self._lfs_verify),
            ("POST", r"/api/models/(?P<repo>[^/]+/[^/]+)/commit/(?P<rev>.+)", self._commit),
            ("HEAD", r"/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)", self._resolve),
            ("GET", r"/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)", self._resolve),
        ]
        for method, pattern, handler in routes:
            match = re.fullmatch(pattern, path)
            if method == request.method and match:
                return handler(request, **match.groupdict())
        self.unexpected.append(f"{request.method} {url}")
        return self._json(501, {"error": f"FakeHub does not implement {request.method} {path}"})

    @staticmethod
    def _json(status, body):
        return httpx.Response(status, json=body)

    # --- endpoints
    def _create_repo(self, request):
        payload = json.loads(request.content)
        repo = f"{payload.get('organization') or 'alice'}/{payload['name']}"
        if repo in self.repos:
            return self._json(409, {"error": "You already created this model repo", "url": f"{ENDPOINT}/{repo}"})
        self.repos[repo] = {"payload": payload, "refs": {"main": {}}}
        return self._json(200, {"url": f"{ENDPOINT}/{repo}", "name": repo})

    def _validate_yaml(self, request):
        content = json.loads(request.content)["content"]
        match = re.match(r"^---\n(.*?)\n---\n", content, re.S)
        try:
            meta = yaml.safe_load(match.group(1)) if match else None
        except yaml.YAMLError as exc:
            return self._json(400, {"errors": [{"message": str(exc)}]})
        if not isinstance(meta, dict):
            return self._json(400, {"errors": [{"message": "no YAML metadata block"}]})
        return self._json(200, {"errors": [], "warnings": []})

    def _create_branch(self, request, repo, rev):
        if repo not in self.repos:
            return self._json(404, {"error": "Repository not found"})
        refs = self.repos[repo]["refs"]
        if rev in refs:
            return self._json(409, {"error": "Reference already exists"})
        refs[rev] = dict(refs["main"])
        return self._json(200, {})

    def _preupload(self, request, repo, rev):
        if repo not in self.repos:
            return self._json(404, {"error": "Repository not found"})
        files = json.loads(request.content)["files"]
        out = []
        for f in files:
            lfs = any(p.search(f["path"]) for p in self.lfs_patterns)
            out.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False})
        return self._json(200, {"files": out, "commitOid": "0" * 40})

    def _lfs_batch(self, request, repo):
        payload = json.loads(request.content)
        assert payload["operation"] == "upload" and payload["hash_algo"] == "sha256"
        objects = []
        for obj in payload["objects"]:
            actions = {"upload": {"href": f"{ENDPOINT}/__lfs/upload/{obj['oid']}"}}
            if self.verify:
                actions["verify"] = {"href": f"{ENDPOINT}/__lfs/verify/{obj['oid']}"}
            objects.append({"oid": obj["oid"], "size": obj["size"], "actions": actions})
        return self._json(200, {"transfer": "basic", "objects": objects})

    def _lfs_put(self, request, oid):
        body = request.read()
        if hashlib.sha256(body).hexdigest() != oid:
            return self._json(400, {"error": "sha256 mismatch"})
        if not self.lose_lfs_bodies:
            self.lfs_store[oid] = body
        return httpx.Response(200)

    def _lfs_verify(self, request, oid):
        info = json.loads(request.content)
        stored = self.lfs_store.get(oid)
        if stored is None or len(stored) != info["size"]:
            return self._json(404, {"error": f"object {oid} not found"})
        return self._json(200, {})

    def _commit(self, request, repo, rev):
        if repo not in self.repos:
            return self._json(404, {"error": "Repository not found"})
        lines = [json.loads(line) for line in request.content.decode().splitlines() if line.strip()]
        assert lines[0]["key"] == "header"
        refs = self.repos[repo]["refs"]
        files, kinds = {}, {}
        for item in lines[1:]:
            value = item["value"]
            if item["key"] == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif item["key"] == "lfsFile":
                blob = self.lfs_store.get(value["oid"])
                if blob is None:
                    return self._json(400, {"error": f"LFS pointer {value['path']}: object {value['oid']} missing"})
                files[value["path"]] = blob
            else:
                return self._json(400, {"error": f"FakeHub: unsupported commit operation {item['key']}"})
            kinds[value["path"]] = item["key"]
        if url_params_pr(request):
            rev = f"refs/pr/{sum(r.startswith('refs/pr/') for r in refs) + 1}"
            refs[rev] = dict(refs["main"])
        elif rev not in refs:
            return self._json(404, {"error": f"Invalid rev id: {rev}"})
        refs[rev].update(files)
        oid = hashlib.sha1(request.content).hexdigest()
        self.commits.append({"repo": repo, "rev": rev, "summary": lines[0]["value"]["summary"], "kinds": kinds})
        pr = f"{ENDPOINT}/{repo}/discussions/{rev.rsplit('/', 1)[-1]}" if rev.startswith("refs/pr/") else None
        return self._json(200, {"commitUrl": f"{ENDPOINT}/{repo}/commit/{oid}", "commitOid": oid,
                                "pullRequestUrl": pr})

    def _resolve(self, request, repo, rev, path):
        """A file download (transformers' push_to_hub looks for an existing model card first)."""
        data = self.repos.get(repo, {}).get("refs", {}).get(rev, {}).get(path)
        if data is None:
            return httpx.Response(404, headers={"x-error-code": "EntryNotFound"}, json={"error": "Entry not found"})
        return httpx.Response(200, content=data if request.method == "GET" else b"",
                              headers={"content-length": str(len(data)), "x-repo-commit": "0" * 40})

    def files(self, repo=REPO, rev="main") -> dict[str, bytes]:
        return self.repos[repo]["refs"][rev]


def url_params_pr(request) -> bool:
    return request.url.params.get("create_pr") == "1"


def _install(monkeypatch, hub: FakeHub, xet: bool) -> None:
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_XET", not xet)
    huggingface_hub.set_client_factory(lambda: httpx.Client(transport=httpx.MockTransport(hub), follow_redirects=True))


@pytest.fixture
def fake_hub(monkeypatch):
    """A FakeHub answering like the Hub (weights and images go to LFS); Xet disabled so LFS is really used."""
    hub = FakeHub()
    _install(monkeypatch, hub, xet=False)
    yield hub
    huggingface_hub.set_client_factory(hf_http.default_client_factory)
    assert not hub.unexpected, f"client called endpoints the fake does not know: {hub.unexpected}"


@pytest.fixture
def restore_client():
    yield
    huggingface_hub.set_client_factory(hf_http.default_client_factory)


# ------------------------------------------------------------------------------------------- checkpoints
TINY_CONFIG = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=16, num_hidden_layers=4, rms_norm_eps=1e-6,
                   max_position_embeddings=256, tie_word_embeddings=False, dtype="float32")
DROP = DropConfig(attn=[1, 3], mlp=[3], method="joint-drop", metric="cosine", calibration="C4, 8 x 128 tokens",
                  base_model="HuggingFaceTB/SmolLM2-135M")


def _tiny_state_dict(drop: DropConfig) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    h, i, kv = 64, 96, 2 * 16
    sd = {"model.embed_tokens.weight": torch.randn(128, h, generator=g), "model.norm.weight": torch.ones(h),
          "lm_head.weight": torch.randn(128, h, generator=g)}
    for layer in range(4):
        p = f"model.layers.{layer}."
        if layer not in drop.attn:
            sd |= {p + "input_layernorm.weight": torch.ones(h),
                   p + "self_attn.q_proj.weight": torch.randn(h, h, generator=g),
                   p + "self_attn.k_proj.weight": torch.randn(kv, h, generator=g),
                   p + "self_attn.v_proj.weight": torch.randn(kv, h, generator=g),
                   p + "self_attn.o_proj.weight": torch.randn(h, h, generator=g)}
        if layer not in drop.mlp:
            sd |= {p + "post_attention_layernorm.weight": torch.ones(h),
                   p + "mlp.gate_proj.weight": torch.randn(i, h, generator=g),
                   p + "mlp.up_proj.weight": torch.randn(i, h, generator=g),
                   p + "mlp.down_proj.weight": torch.randn(h, i, generator=g)}
    return sd


@pytest.fixture
def checkpoint_dir(tmp_path) -> Path:
    """A hand-made pruned checkpoint directory (independent of checkpoint.save_pretrained)."""
    d = tmp_path / "ckpt"
    d.mkdir()
    config = dict(TINY_CONFIG, model_type="layerdrop_llama", architectures=["LayerDropLlamaForCausalLM"],
                  auto_map={"AutoConfig": "configuration_layerdrop.LayerDropLlamaConfig",
                            "AutoModelForCausalLM": "modeling_layerdrop.LayerDropLlamaForCausalLM"},
                  drop_config=DROP.to_dict())
    (d / "config.json").write_text(json.dumps(config, indent=2))
    save_file(_tiny_state_dict(DROP), str(d / "model.safetensors"))
    for shipped in SHIPPED_FILES:
        shutil.copyfile(shipped, d / shipped.name)
    return d


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir()}


def _assert_published(files: dict[str, bytes], local: Path) -> str:
    assert set(files) == {"config.json", "model.safetensors", "modeling_layerdrop.py", "configuration_layerdrop.py",
                          "README.md"}
    assert files["model.safetensors"] == (local / "model.safetensors").read_bytes()
    assert files["modeling_layerdrop.py"] == Path(MODELING_FILE).read_bytes()
    assert json.loads(files["config.json"])["drop_config"] == DROP.to_dict()
    card = files["README.md"].decode()
    assert f'AutoModelForCausalLM.from_pretrained("{REPO}", trust_remote_code=True)' in card
    assert f'layerdrop_patch.from_pretrained("{REPO}")' in card
    assert "| whole blocks (attention + MLP) | 3 |" in card and "| attention only | 1 |" in card
    return card


# ------------------------------------------------------------------------------------------- push tests
def test_push_directory_through_lfs(fake_hub, checkpoint_dir):
    before = _snapshot(checkpoint_dir)
    url = push_to_hub(checkpoint_dir, REPO, token=TOKEN, private=True, eval_results={"arc_easy": 0.5})
    assert url.startswith(f"{ENDPOINT}/{REPO}/commit/")
    assert fake_hub.repos[REPO]["payload"]["name"] == "tiny-llama-attn-drop"
    card = _assert_published(fake_hub.files(), checkpoint_dir)
    assert "| arc_easy | 0.5000 |" in card
    [commit] = fake_hub.commits
    assert commit["kinds"]["model.safetensors"] == "lfsFile" and commit["kinds"]["config.json"] == "file"
    assert ("PUT", f"/__lfs/upload/{hashlib.sha256(before['model.safetensors']).hexdigest()}") in fake_hub.requests
    assert _snapshot(checkpoint_dir) == before  # the user's directory is untouched (no README written into it)


def test_push_directory_default_pipeline(monkeypatch, restore_client, checkpoint_dir):
    """The upload path huggingface_hub picks by default (Xet pipeline when hf_xet is installed).

    Xet storage is hf_xet's own Rust HTTP client, out of reach of the transport fake, so here the fake marks
    every file "regular" (inline in the NDJSON commit): this covers that pipeline's preupload and commit steps,
    not Xet chunk uploads.
    """
    hub = FakeHub(lfs_patterns=())
    _install(monkeypatch, hub, xet=True)
    push_to_hub(checkpoint_dir, REPO, token=TOKEN)
    _assert_published(hub.files(), checkpoint_dir)
    assert set(hub.commits[0]["kinds"].values()) == {"file"} and not hub.unexpected


@pytest.mark.parametrize("verify", [True, False], ids=["caught-by-verify", "caught-by-commit"])
def test_fake_hub_refuses_lost_lfs_objects(monkeypatch, restore_client, checkpoint_dir, verify):
    """The fake must be able to fail: storage that keeps nothing makes the push fail, not pass silently."""
    hub = FakeHub(lose_lfs_bodies=True, verify=verify)
    _install(monkeypatch, hub, xet=False)
    with pytest.raises(Exception) as info:
        push_to_hub(checkpoint_dir, REPO, token=TOKEN)
    chain, exc = [], info.value
    while exc is not None:
        chain.append(str(exc))
        exc = exc.__cause__
    expected = "not found" if verify else "missing"
    assert any(expected in message for message in chain), chain
    assert not hub.commits and hub.files() == {}


def test_push_to_branch_and_pr_and_existing_repo(fake_hub, checkpoint_dir):
    push_to_hub(checkpoint_dir, REPO, token=TOKEN, revision="pruned", commit_message="first")
    assert fake_hub.files(rev="main") == {} and "model.safetensors" in fake_hub.files(rev="pruned")
    push_to_hub(checkpoint_dir, REPO, token=TOKEN, create_pr=True)  # repo exists now: create_repo gets 409, ok
    assert set(fake_hub.files(rev="refs/pr/1")) == set(fake_hub.files(rev="pruned"))
    assert [c["summary"] for c in fake_hub.commits][0] == "first"
    assert "blocks [3], attention [1] removed" in fake_hub.commits[1]["summary"]


def test_push_model_object_loads_back(fake_hub, tmp_path):
    """Model -> checkpoint.save_pretrained -> Hub; the published files load with plain transformers."""
    pytest.importorskip("layerdrop_patch.checkpoint")
    from transformers import AutoModelForCausalLM

    from layerdrop_patch.patch import apply_drop
    from layerdrop_patch.scoring import ImportanceScores
    from tests.conftest import tiny_model

    model = apply_drop(tiny_model("llama", 4), copy.deepcopy(DROP))
    scores = ImportanceScores({"cosine": {k: [0.3, 0.1, 0.2, 0.05] for k in ("attn", "mlp", "block")}})
    push_to_hub(model, REPO, token=TOKEN, scores=scores, eval_results={"piqa": {"acc": 0.6, "acc_norm": 0.61}})
    files = fake_hub.files()
    assert {"config.json", "model.safetensors", "modeling_layerdrop.py", "README.md", "layerdrop_scores.png",
            "generation_config.json"} <= set(files)
    assert files["layerdrop_scores.png"].startswith(b"\x89PNG")
    card = files["README.md"].decode()
    assert "![per-layer importance scores](layerdrop_scores.png)" in card and "| piqa | 0.6000 | 0.6100 |" in card
    uploaded = load_safetensors(files["model.safetensors"])
    assert not any(k.startswith("model.layers.1.self_attn") for k in uploaded)
    state = model.state_dict()
    assert set(uploaded) == set(state) and all(torch.equal(uploaded[k], state[k]) for k in uploaded)

    out = tmp_path / "downloaded"
    out.mkdir()
    for name, data in files.items():
        (out / name).write_bytes(data)
    ids = torch.tensor([[1, 5, 9, 3, 7]])
    loaded = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


# ------------------------------------------------------------------------------------------- errors
def test_missing_token_says_how_to_log_in(fake_hub, checkpoint_dir, monkeypatch):
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(PermissionError, match="hf auth login"):
        push_to_hub(checkpoint_dir, REPO)
    assert fake_hub.requests == []


def test_wrong_token_is_the_hubs_error(fake_hub, checkpoint_dir):
    with pytest.raises(huggingface_hub.errors.HfHubHTTPError):
        push_to_hub(checkpoint_dir, REPO, token="hf_wrong")


@pytest.mark.parametrize("breakage, match", [
    ("no_drop_config", "no drop_config"),
    ("no_modeling", "modeling_layerdrop.py"),
    ("no_configuration", "configuration_layerdrop.py"),
    ("no_weights", "no \\*.safetensors"),
    ("bad_index", "out of range"),
    ("no_config", "no config.json"),
])
def test_not_a_layerdrop_checkpoint(fake_hub, checkpoint_dir, breakage, match):
    config_path = checkpoint_dir / "config.json"
    config = json.loads(config_path.read_text())
    if breakage == "no_drop_config":
        del config["drop_config"]
    elif breakage == "bad_index":
        config["drop_config"]["attn"] = [7]
    config_path.write_text(json.dumps(config))
    {"no_modeling": checkpoint_dir / "modeling_layerdrop.py", "no_weights": checkpoint_dir / "model.safetensors",
     "no_configuration": checkpoint_dir / "configuration_layerdrop.py",
     "no_config": config_path}.get(breakage, Path("/nonexistent")).unlink(missing_ok=True)
    with pytest.raises(NotALayerdropCheckpointError, match=match):
        push_to_hub(checkpoint_dir, REPO, token=TOKEN)
    assert fake_hub.requests == []


def test_other_argument_errors(fake_hub, checkpoint_dir, tmp_path):
    from tests.conftest import tiny_model

    with pytest.raises(FileNotFoundError):
        push_to_hub(tmp_path / "missing", REPO, token=TOKEN)
    with pytest.raises(NotALayerdropCheckpointError, match="apply_drop"):
        push_to_hub(tiny_model("llama", 2), REPO, token=TOKEN)
    with pytest.raises(ValueError, match="create_pr"):
        push_to_hub(checkpoint_dir, REPO, token=TOKEN, revision="dev", create_pr=True)
    assert fake_hub.requests == []


def test_hand_written_card_is_kept(fake_hub, checkpoint_dir):
    (checkpoint_dir / "README.md").write_text("---\nlicense: apache-2.0\n---\n# My own card\n")
    push_to_hub(checkpoint_dir, REPO, token=TOKEN)
    assert fake_hub.files()["README.md"] == b"---\nlicense: apache-2.0\n---\n# My own card\n"


# ------------------------------------------------------------------------------------------- model card
def _front_matter(card: str) -> dict:
    match = re.match(r"^---\n(.*?)\n---\n", card, re.S)
    assert match, "card has no YAML front matter"
    return yaml.safe_load(match.group(1))


def test_card_without_eval_results(checkpoint_dir):
    card = render_model_card(checkpoint_dir)
    meta = _front_matter(card)
    assert meta["library_name"] == "transformers" and meta["base_model"] == "HuggingFaceTB/SmolLM2-135M"
    assert {"layerdrop-patch", "pruned", "attention-drop", "mlp-drop", "llama"} <= set(meta["tags"])
    assert GENERATED_MARKER in card and "## Evaluation" not in card and "## Importance scores" not in card
    for line in ("- selection method: `joint-drop`", "- importance metric: `cosine`",
                 "- calibration data: C4, 8 x 128 tokens", f"- layerdrop-patch version: {DROP.library_version}",
                 "| attention layers (= KV-cache layers) | 4 | 2 | −50.0% |", "| MLP layers | 4 | 3 | −25.0% |",
                 # 2 (K,V) x layers x 2 kv heads x 16 dims x 4 bytes
                 "| KV cache per token and sequence | 1.00 KiB | 512 B | −50.0% |"):
        assert line in card, line
    # kept tensors + 2 attention (4096+2048+2048+4096+64) + 1 MLP (3*64*96+64): exact, from the headers
    kept = sum(t.numel() for t in _tiny_state_dict(DROP).values())
    total = kept + 2 * 12352 + 18496
    assert f"| parameters | {total / 1000:.2f} K | {kept / 1000:.2f} K |" in card
    assert 'from_pretrained("path/to/checkpoint", trust_remote_code=True)' in card  # no repo id: a placeholder
    assert "are the only remote code" in card and "import\nonly `torch` and `transformers`" in card


def test_card_with_eval_results_and_plot(checkpoint_dir, tmp_path):
    from layerdrop_patch.evaluation.results import EvalResult, TaskScore

    result = EvalResult({"boolq": TaskScore("boolq", "acc", 0.625, 0.01, 0, "boolq")})
    card = render_model_card(checkpoint_dir, eval_results=result, scores_plot="layerdrop_scores.png",
                             repo_id="bob/x")
    assert "| task | metric | value | stderr |" in card and "| boolq | acc | 0.6250 | 0.0100 |" in card
    assert "![per-layer importance scores](layerdrop_scores.png)" in card and '"bob/x"' in card
    mixed = render_model_card(checkpoint_dir, eval_results={"a|b": 1, "mmlu": {"acc": float("nan")}})
    assert "| a\\|b | 1 |  |" in mixed and "| mmlu |  | n/a |" in mixed


def test_card_metadata_skips_local_base_model_and_config_input(checkpoint_dir, tmp_path):
    config = json.loads((checkpoint_dir / "config.json").read_text())
    config["drop_config"]["base_model"] = str(tmp_path)
    card = render_model_card(config)  # a dict: no directory, so no byte counts
    assert "base_model" not in _front_matter(card) and "| parameters |" not in card
    with pytest.raises(ValueError, match="no drop_config"):
        render_model_card({"model_type": "llama", "num_hidden_layers": 2})


def test_write_model_card_is_atomic_and_copies_plot(checkpoint_dir, tmp_path):
    png = tmp_path / "plot.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 32)
    path = write_model_card(checkpoint_dir, eval_results={"rte": 0.7}, scores_plot=png)
    assert path == checkpoint_dir / "README.md"
    assert (checkpoint_dir / "layerdrop_scores.png").read_bytes() == png.read_bytes()
    assert "| rte | 0.7000 |" in path.read_text()
    assert not [p for p in checkpoint_dir.iterdir() if p.name.startswith(".")]  # no temp files left behind
    assert "layerdrop_scores.png" in write_model_card(checkpoint_dir).read_text()  # a plot already there is kept
    (tmp_path / "not.png").write_text("hello")
    with pytest.raises(ValueError, match="not a PNG"):
        write_model_card(checkpoint_dir, scores_plot=tmp_path / "not.png")


def test_stock_model_push_to_hub_publishes_a_portable_checkpoint(fake_hub, tmp_path):
    """transformers' own `model.push_to_hub` after apply_drop: the shipped classes make it portable."""
    from transformers import AutoModelForCausalLM

    from layerdrop_patch.patch import apply_drop
    from tests.conftest import tiny_model

    model = apply_drop(tiny_model("llama", 4), copy.deepcopy(DROP))
    model.push_to_hub(REPO, token=TOKEN)
    files = fake_hub.files()
    config = json.loads(files["config.json"])
    assert config["model_type"] == "layerdrop_llama" and config["drop_config"]["attn"] == [1, 3]
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_layerdrop.LayerDropLlamaForCausalLM"
    assert files["modeling_layerdrop.py"] == MODELING_FILE.read_bytes()
    assert not any(k.startswith("model.layers.1.self_attn") for k in load_safetensors(files["model.safetensors"]))
    out = tmp_path / "downloaded"
    out.mkdir()
    for name, data in files.items():
        (out / name).write_bytes(data)
    ids = torch.tensor([[1, 5, 9, 3, 7]])
    with torch.no_grad():
        loaded = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
        assert torch.equal(loaded(ids).logits, model(ids).logits)
