"""Tiny transformers configs the offload tests share (callers import-or-skip transformers)."""

from __future__ import annotations

from typing import Any


def tiny_gpt2(vocab: int = 97, *, layers: int = 3, width: int = 32, heads: int = 2) -> Any:
    """GPT-2 shape: the head is tied to the token embedding."""
    import transformers

    return transformers.GPT2Config(n_layer=layers, n_embd=width, n_head=heads, vocab_size=vocab,
                                   n_positions=64)


def tiny_llama(vocab: int = 97, *, layers: int = 3, tied: bool = False, **extra: Any) -> Any:
    """Llama shape (grouped-query attention: 4 heads, 2 key/value heads)."""
    import transformers

    return transformers.LlamaConfig(
        num_hidden_layers=layers, hidden_size=32, intermediate_size=64, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=vocab, tie_word_embeddings=tied,
        max_position_embeddings=64, **extra)


def tiny_bert(vocab: int = 97) -> Any:
    import transformers

    return transformers.BertConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64,
                                   num_attention_heads=2, vocab_size=vocab,
                                   max_position_embeddings=64)
