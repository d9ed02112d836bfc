"""A tiny random Llama and a byte-level tokenizer that need no download.

Why: tests, CI and `--tiny` smoke runs of the benchmark scripts must exercise the real code paths (lm-eval,
`generate()` with a KV cache, perplexity) on a machine with no hub access, in seconds. Scores from these
models are meaningless; the plumbing is what is being checked.
"""

from __future__ import annotations

import torch

SPECIAL_TOKENS = ("<|endoftext|>", "<|pad|>")


def byte_tokenizer():
    """A `PreTrainedTokenizerFast` over the 256 byte symbols (GPT-2 style byte-level, no merges) + 2 specials.

    Every string round-trips exactly, so lm-eval's context/continuation splitting works as with a real BPE
    tokenizer. Vocabulary size 258; id 256 = ``<|endoftext|>`` (bos/eos), 257 = ``<|pad|>``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    for tok in SPECIAL_TOKENS:
        vocab[tok] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=SPECIAL_TOKENS[0], eos_token=SPECIAL_TOKENS[0],
        pad_token=SPECIAL_TOKENS[1], model_max_length=1 << 20,
    )


def tiny_llama(num_layers: int = 2, hidden_size: int = 64, vocab_size: int = 258, max_position_embeddings: int = 512,
               num_heads: int = 4, num_kv_heads: int = 2, seed: int = 0, dtype: torch.dtype = torch.float32):
    """A randomly initialised `LlamaForCausalLM` (eval mode, fp32 by default, eager attention)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings, bos_token_id=256, eos_token_id=256, pad_token_id=257,
        tie_word_embeddings=False,
    )
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(dtype)
    return model.eval()
