"""An independent, hand-written forward pass for Llama/Mistral-style decoders that skips given sublayers.

It shares nothing with layerdrop_patch: attention (projections, RoPE, grouped KV heads, causal and sliding
masks, softmax) is written out here from the weights of an UNPATCHED model; only the RMSNorm, MLP and
rotary-frequency modules are called as black boxes. Tests compare the patched model against it.
"""

from __future__ import annotations

import torch


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _attention(attn, x, cos, sin, num_heads, num_kv_heads, head_dim, sliding_window):
    batch, seq, _ = x.shape
    q = attn.q_proj(x).view(batch, seq, num_heads, head_dim).transpose(1, 2)
    k = attn.k_proj(x).view(batch, seq, num_kv_heads, head_dim).transpose(1, 2)
    v = attn.v_proj(x).view(batch, seq, num_kv_heads, head_dim).transpose(1, 2)
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    q = q * cos + _rotate_half(q) * sin
    k = k * cos + _rotate_half(k) * sin
    groups = num_heads // num_kv_heads
    k = k.repeat_interleave(groups, dim=1)
    v = v.repeat_interleave(groups, dim=1)
    scores = (q @ k.transpose(-1, -2)) / head_dim**0.5
    i = torch.arange(seq).view(-1, 1)
    j = torch.arange(seq).view(1, -1)
    allowed = j <= i
    if sliding_window is not None:
        allowed = allowed & (i - j < sliding_window)
    scores = scores.masked_fill(~allowed, float("-inf"))
    out = torch.softmax(scores.float(), dim=-1).to(v.dtype) @ v
    out = out.transpose(1, 2).reshape(batch, seq, num_heads * head_dim)
    return attn.o_proj(out)


@torch.no_grad()
def reference_logits(model, input_ids, attn_dropped=(), mlp_dropped=()):
    """Logits of `model` (unpatched) with the given sublayers skipped, computed from scratch (no padding)."""
    cfg = model.config
    base = model.model
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    sliding = getattr(cfg, "sliding_window", None)
    positions = torch.arange(input_ids.shape[1]).unsqueeze(0)
    h = base.embed_tokens(input_ids)
    cos, sin = base.rotary_emb(h, positions)
    for index, layer in enumerate(base.layers):
        if index not in attn_dropped:
            h = h + _attention(
                layer.self_attn,
                layer.input_layernorm(h),
                cos,
                sin,
                cfg.num_attention_heads,
                cfg.num_key_value_heads,
                head_dim,
                sliding,
            )
        if index not in mlp_dropped:
            h = h + layer.mlp(layer.post_attention_layernorm(h))
    return model.lm_head(base.norm(h))


@torch.no_grad()
def reference_greedy(model, input_ids, new_tokens, attn_dropped=(), mlp_dropped=()):
    """Greedy continuation by full recomputation at every step (no cache at all)."""
    ids = input_ids
    for _ in range(new_tokens):
        logits = reference_logits(model, ids, attn_dropped, mlp_dropped)
        ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids
