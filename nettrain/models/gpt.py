"""A decoder-only Transformer language model (`model=gpt`, for `data=text_lm`), as nanoGPT draws GPT-2.

    ids [B, T] -> token embedding + position embedding -> dropout
               -> n_layer x Block: x + attention(norm(x)), then x + mlp(norm(x))
               -> final norm -> output layer (the token embedding, tied) -> logits [B, T, vocab]

The attention is causal (a position sees itself and the ones before it) through
`torch.nn.functional.scaled_dot_product_attention`, which runs flash attention on a GPU. The logits at
position t score the token at t + 1: the loss is cross-entropy against the block shifted by one
(`data.loaders.BlockLoader`). The vocabulary and the context (T at most `data.block_size`) come from the
data's spec, never the config.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from nettrain.data.spec import DataSpec
from nettrain.errors import invalid

INIT_STD = 0.02  # GPT-2's initialization


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float, bias: bool) -> None:
        super().__init__()
        self.n_head, self.dropout = n_head, dropout
        self.qkv = nn.Linear(n_embd, 3 * n_embd, bias=bias)  # queries, keys and values of every head at once
        self.proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.residual_dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        batch, length, width = x.shape
        # [B, T, 3C] -> three [B, heads, T, C / heads]
        q, k, v = (t.view(batch, length, self.n_head, width // self.n_head).transpose(1, 2)
                   for t in self.qkv(x).split(width, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        y = y.transpose(1, 2).reshape(batch, length, width)  # the heads side by side again
        return self.residual_dropout(self.proj(y))


class MLP(nn.Module):
    def __init__(self, n_embd: int, dropout: float, bias: bool) -> None:
        super().__init__()
        self.up = nn.Linear(n_embd, 4 * n_embd, bias=bias)
        self.gelu = nn.GELU()
        self.proj = nn.Linear(4 * n_embd, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.proj(self.gelu(self.up(x))))


class Block(nn.Module):
    """Pre-norm: each sublayer reads a normalized copy and adds its output to the residual stream."""

    def __init__(self, n_embd: int, n_head: int, dropout: float, bias: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(n_embd, bias=bias)
        self.attention = CausalSelfAttention(n_embd, n_head, dropout, bias)
        self.norm2 = nn.LayerNorm(n_embd, bias=bias)
        self.mlp = MLP(n_embd, dropout, bias)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    """ids [batch, length <= block_size] -> next-token logits [batch, length, vocab_size]."""

    def __init__(self, vocab_size: int, block_size: int, *, n_layer: int, n_head: int, n_embd: int,
                 dropout: float, bias: bool) -> None:
        super().__init__()
        self.block_size = block_size
        self.token_embedding = nn.Embedding(vocab_size, n_embd)
        self.position_embedding = nn.Embedding(block_size, n_embd)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(n_embd, n_head, dropout, bias) for _ in range(n_layer))
        self.norm = nn.LayerNorm(n_embd, bias=bias)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        # Tied: the output layer scores each token by its own embedding (fewer parameters, and better).
        self.lm_head.weight = self.token_embedding.weight
        self.apply(_init)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):  # the layers that write to the residual stream: GPT-2's scaled init
                nn.init.normal_(p, mean=0.0, std=INIT_STD / math.sqrt(2 * n_layer))

    def forward(self, ids: Tensor) -> Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)
        h = self.dropout(self.token_embedding(ids) + self.position_embedding(positions))
        for block in self.blocks:
            h = block(h)
        return self.lm_head(self.norm(h))


def _init(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


def before_data(cfg: DictConfig) -> None:
    """The model's step before any data is read (config.registry): its shape's own rule fails at once."""
    check_heads(cfg.model)


def check_heads(cfg: DictConfig) -> None:
    if cfg.n_embd % cfg.n_head:
        raise invalid("model.n_head", cfg.n_head, f"must divide model.n_embd={cfg.n_embd}")


def gpt(cfg: DictConfig, spec: DataSpec) -> GPT:
    check_heads(cfg)
    return GPT(spec.num_classes, spec.input_shape[0], n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd,
               dropout=cfg.dropout, bias=cfg.get("bias", False))
