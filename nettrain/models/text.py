"""Models for token ids (`data=text`): a Transformer encoder and a fastText-style bag of n-grams.

Both take a batch of token ids [batch, length] padded with the spec's pad id, and derive the
padding mask from it themselves, so the training loop feeds them like any other model. The
vocabulary size and the longest sequence come from the DataSpec (the tokenizer), never the config.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from nettrain.data.spec import DataSpec
from nettrain.errors import invalid
from nettrain.models.net import Net


def text_shape(spec: DataSpec) -> tuple[int, int, int]:
    """(vocabulary size, longest sequence, pad id) of text data (models.build has checked that it is text)."""
    pre = spec.preprocessing
    return pre["vocab_size"], spec.input_shape[0], pre["pad_id"]


def masked_mean(h: Tensor, keep: Tensor) -> Tensor:
    """The mean of h [B, L, D] over the positions where keep [B, L] is true."""
    keep = keep.unsqueeze(-1).to(h.dtype)
    return (h * keep).sum(1) / keep.sum(1).clamp(min=1)


class TransformerEncoder(nn.Module):
    """Token + learned position embeddings, pre-norm encoder layers, a final norm, pooled to one
    vector per text: the mean over its tokens, or its first token ([CLS] for a trained tokenizer)."""

    def __init__(self, vocab_size: int, max_length: int, pad_id: int, *, dim: int, layers: int, heads: int,
                 ff_dim: int, dropout: float, pooling: str) -> None:
        super().__init__()
        self.pad_id, self.pooling = pad_id, pooling
        self.tokens = nn.Embedding(vocab_size, dim, padding_idx=pad_id)
        self.positions = nn.Embedding(max_length, dim)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(dim, heads, ff_dim, dropout, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.layers = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, ids: Tensor) -> Tensor:
        pad = ids == self.pad_id
        h = self.dropout(self.tokens(ids) + self.positions.weight[: ids.shape[1]])
        h = self.norm(self.layers(h, src_key_padding_mask=pad))
        return h[:, 0] if self.pooling == "first" else masked_mean(h, ~pad)


class BagOfNgrams(nn.Module):
    """fastText: the mean of the embeddings of a text's words and its word n-grams (2..ngrams),
    each n-gram hashed into one of `buckets` rows. Fast, and on small data sets often the one to beat."""

    PRIME = 1_000_003

    def __init__(self, vocab_size: int, pad_id: int, *, dim: int, ngrams: int, buckets: int) -> None:
        super().__init__()
        self.vocab_size, self.pad_id, self.ngrams, self.buckets = vocab_size, pad_id, ngrams, buckets
        self.embedding = nn.Embedding(vocab_size + (buckets if ngrams > 1 else 0), dim)

    def forward(self, ids: Tensor) -> Tensor:
        keep = ids != self.pad_id
        pieces, kept = [ids], [keep]
        h, whole = ids, keep
        for n in range(2, self.ngrams + 1):
            # the n-grams ending at each position from n-1 on, hashed step by step (no int64 overflow)
            h = (h[:, :-1] * self.PRIME + ids[:, n - 1:]) % self.buckets
            whole = whole[:, :-1] & keep[:, n - 1:]
            pieces.append(h + self.vocab_size)
            kept.append(whole)
        return masked_mean(self.embedding(torch.cat(pieces, 1)), torch.cat(kept, 1))


def transformer(cfg: DictConfig, spec: DataSpec) -> Net:
    vocab_size, max_length, pad_id = text_shape(spec)
    if cfg.dim % cfg.heads:
        raise invalid("model.heads", cfg.heads, f"must divide model.dim={cfg.dim}")
    backbone = TransformerEncoder(vocab_size, max_length, pad_id, dim=cfg.dim, layers=cfg.layers, heads=cfg.heads,
                                  ff_dim=cfg.ff_dim, dropout=cfg.attention_dropout, pooling=cfg.pooling)
    return Net(backbone, cfg.dim, spec.num_classes, cfg.dropout, convolutional=False)


def bag(cfg: DictConfig, spec: DataSpec) -> Net:
    vocab_size, _, pad_id = text_shape(spec)
    return Net(BagOfNgrams(vocab_size, pad_id, dim=cfg.dim, ngrams=cfg.ngrams, buckets=cfg.buckets),
               cfg.dim, spec.num_classes, cfg.dropout, convolutional=False)
