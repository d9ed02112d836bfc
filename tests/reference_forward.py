"""An independent, hand-written forward pass for the supported decoder families that skips given sublayers.

It shares nothing with layerdrop_patch: embeddings (with Gemma's sqrt(hidden) scaling), rotary frequencies
(one base per layer kind for Gemma-3, partial rotation for Phi-3), attention (separate or fused q/k/v
projections, grouped KV heads, causal and sliding masks per layer kind, Gemma's query_pre_attn_scalar and
logit soft-capping, softmax), the residual branches (Gemma's post-norms) and the final soft-capping are
written out here from the weights of an UNPATCHED model, reading only its config. Only RMSNorms (including
Qwen-3/Gemma-3 per-head q/k norms) and MLPs are called as black boxes. Tests compare the patched model
against it. Dropouts are identities because the model must be in eval mode.
"""

from __future__ import annotations

import torch

_GEMMA = ("gemma2", "gemma3_text")


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rope_params(cfg, layer_type):
    params = dict(getattr(cfg, "rope_parameters", None) or {})
    if layer_type in params:  # Gemma-3: one parameter set per layer kind (local 10k, global 1M base)
        params = dict(params[layer_type])
    if params.get("rope_type", "default") != "default":
        raise NotImplementedError(f"reference forward: only default RoPE is written out, not {params['rope_type']}")
    return params.get("rope_theta", 10000.0), params.get("partial_rotary_factor", 1.0)


def _cos_sin(cfg, head_dim, layer_type, positions):
    theta, partial = _rope_params(cfg, layer_type)
    dim = int(head_dim * partial)
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))
    freqs = positions.float()[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def _apply_rope(x, cos, sin):
    rot = cos.shape[-1]  # Phi-3 with partial_rotary_factor < 1 rotates only the first `rot` dims
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    return torch.cat((x_rot * cos + _rotate_half(x_rot) * sin, x_pass), dim=-1)


def _qkv(attn, x, num_heads, num_kv_heads, head_dim):
    if hasattr(attn, "qkv_proj"):  # Phi-3: one fused projection, laid out [q | k | v]
        qkv = attn.qkv_proj(x)
        q_size, kv_size = num_heads * head_dim, num_kv_heads * head_dim
        return qkv[..., :q_size], qkv[..., q_size:q_size + kv_size], qkv[..., q_size + kv_size:]
    return attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)


def _attention(attn, x, cfg, layer_type, window):
    batch, seq, _ = x.shape
    heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    q, k, v = _qkv(attn, x, heads, kv_heads, head_dim)
    q = q.view(batch, seq, heads, head_dim).transpose(1, 2)
    k = k.view(batch, seq, kv_heads, head_dim).transpose(1, 2)
    v = v.view(batch, seq, kv_heads, head_dim).transpose(1, 2)
    if hasattr(attn, "q_norm"):  # Qwen-3 / Gemma-3: RMSNorm over each head's vector, before RoPE
        q, k = attn.q_norm(q), attn.k_norm(k)
    cos, sin = _cos_sin(cfg, head_dim, layer_type, torch.arange(seq))
    q, k = _apply_rope(q, cos, sin), _apply_rope(k, cos, sin)
    groups = heads // kv_heads
    k = k.repeat_interleave(groups, dim=1)
    v = v.repeat_interleave(groups, dim=1)
    scalar = getattr(cfg, "query_pre_attn_scalar", None) or head_dim  # Gemma scales by its own scalar
    scores = (q @ k.transpose(-1, -2)) * scalar**-0.5
    cap = getattr(cfg, "attn_logit_softcapping", None)
    if cap is not None:  # Gemma-2: tanh soft-capping of the attention logits, before masking
        scores = torch.tanh(scores / cap) * cap
    i = torch.arange(seq).view(-1, 1)
    j = torch.arange(seq).view(1, -1)
    allowed = j <= i
    if window is not None:
        allowed = allowed & (i - j < window)
    scores = scores.masked_fill(~allowed, float("-inf"))
    out = torch.softmax(scores.float(), dim=-1).to(v.dtype) @ v
    out = out.transpose(1, 2).reshape(batch, seq, heads * head_dim)
    return attn.o_proj(out)


def _layer_kind(cfg, index):
    """(rope/mask kind, sliding window or None) of decoder layer `index`."""
    layer_types = getattr(cfg, "layer_types", None)
    window = getattr(cfg, "sliding_window", None)
    if layer_types is None:  # Mistral / Phi-3: one window (or none) for every layer
        return None, window
    kind = layer_types[index]
    return kind, window if kind == "sliding_attention" else None


def _embed(model, input_ids):
    cfg = model.config
    weight = model.model.embed_tokens.weight
    h = torch.nn.functional.embedding(input_ids, weight)
    if cfg.model_type in _GEMMA:  # Gemma multiplies embeddings by sqrt(hidden_size), in the weight dtype
        h = h * torch.tensor(cfg.hidden_size**0.5, dtype=weight.dtype)
    return h


@torch.no_grad()
def reference_logits(model, input_ids, attn_dropped=(), mlp_dropped=(), trace=None):
    """Logits of `model` (unpatched) with the given sublayers skipped, computed from scratch (no padding).

    If `trace` is a list, one (layer input, after attention, layer output) triple of residual-stream tensors
    per decoder layer is appended to it: the X and Y that importance scores are defined on.
    """
    assert not model.training, "the reference ignores dropout: put the model in eval mode"
    cfg = model.config
    base = model.model
    h = _embed(model, input_ids)
    for index, layer in enumerate(base.layers):
        post_norms = hasattr(layer, "pre_feedforward_layernorm")  # Gemma: pre- and post-norm per branch
        x = h
        if index not in attn_dropped:
            kind, window = _layer_kind(cfg, index)
            out = _attention(layer.self_attn, layer.input_layernorm(h), cfg, kind, window)
            h = h + (layer.post_attention_layernorm(out) if post_norms else out)
        after_attn = h
        if index not in mlp_dropped:
            if post_norms:
                h = h + layer.post_feedforward_layernorm(layer.mlp(layer.pre_feedforward_layernorm(h)))
            else:
                h = h + layer.mlp(layer.post_attention_layernorm(h))
        if trace is not None:
            trace.append((x, after_attn, h))
    logits = model.lm_head(base.norm(h))
    cap = getattr(cfg, "final_logit_softcapping", None)
    if cap is not None:  # Gemma-2: tanh soft-capping of the output logits
        logits = torch.tanh(logits / cap) * cap
    return logits


@torch.no_grad()
def reference_greedy(model, input_ids, new_tokens, attn_dropped=(), mlp_dropped=()):
    """Greedy continuation by full recomputation at every step (no cache at all)."""
    ids = input_ids
    for _ in range(new_tokens):
        logits = reference_logits(model, ids, attn_dropped, mlp_dropped)
        ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids
