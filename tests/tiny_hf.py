"""Factories returning raw Hugging Face models built from tiny configs (random weights), for
`tests/tiny_hf.py:gpt2`-style specs."""
from __future__ import annotations

import torch
import transformers as T


def gpt2():
    torch.manual_seed(0)
    cfg = T.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=2, n_positions=64, bos_token_id=0, eos_token_id=0)
    return T.GPT2LMHeadModel(cfg).eval()


def bert():
    torch.manual_seed(0)
    return T.BertModel(T.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                    intermediate_size=64, max_position_embeddings=64)).eval()
