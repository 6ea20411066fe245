"""A pretrained Hugging Face encoder for text (`model=hf model.encoder=distilbert-base-uncased`, or a
local folder), with `pip install 'nettrain[hf]'`. The data uses the encoder's own tokenizer (data.tokenizer
follows model.encoder), so the ids are the ones it was trained on.

Training loads the weights with `AutoModel.from_pretrained` and records the encoder's config in
`model.config`; a checkpoint's model is rebuilt from that config alone (`AutoModel.from_config`) and
its weights, so predict and export need neither the folder nor the network.
"""

from __future__ import annotations

import json
import os
from typing import Any

from omegaconf import DictConfig
from torch import Tensor, nn

from nettrain.config.paths import absolute
from nettrain.data.spec import DataSpec
from nettrain.errors import UserError, invalid
from nettrain.models.net import Net
from nettrain.models.text import masked_mean, text_shape


class HFEncoder(nn.Module):
    """A transformers AutoModel as a backbone: token ids in, one pooled vector per text out."""

    def __init__(self, model: nn.Module, pad_id: int, pooling: str) -> None:
        super().__init__()
        self.model, self.pad_id, self.pooling = model, pad_id, pooling

    def forward(self, ids: Tensor) -> Tensor:
        keep = ids != self.pad_id
        h = self.model(input_ids=ids, attention_mask=keep.long()).last_hidden_state
        return h[:, 0] if self.pooling == "first" else masked_mean(h, keep)


def _transformers() -> Any:
    try:  # transformers: an optional extra (nettrain[hf])
        import transformers  # an optional extra (nettrain[hf]): named when missing
    except ImportError:
        raise UserError("model=hf needs the transformers package: pip install 'nettrain[hf]'") from None
    transformers.logging.set_verbosity_error()  # "Some weights were not used..." is expected: the head is ours
    return transformers


def load_encoder(cfg: DictConfig) -> nn.Module:
    """The encoder: rebuilt from `model.config` (a checkpoint's), else loaded from `model.encoder`
    with its weights, recording its config in `model.config` for the checkpoint."""
    transformers = _transformers()
    if cfg.get("config"):
        settings = json.loads(cfg.config)
        config = transformers.AutoConfig.for_model(settings.pop("model_type"), **settings)
        return transformers.AutoModel.from_config(config)
    source = absolute(cfg.encoder) if _is_local(cfg.encoder) else cfg.encoder
    try:
        model = transformers.AutoModel.from_pretrained(source)
    except (OSError, ValueError) as e:
        raise invalid("model.encoder", cfg.encoder,
                      f"cannot load it ({str(e).strip().splitlines()[0][:160]}); offline, download it where there is a "
                      f"network (huggingface-cli download {cfg.encoder} --local-dir DIR, or save_pretrained(DIR)) and "
                      f"give model.encoder=DIR") from None
    cfg.config = model.config.to_json_string(use_diff=False)
    return model


def _is_local(name: str) -> bool:
    return os.path.exists(absolute(name))


def hf(cfg: DictConfig, spec: DataSpec) -> Net:
    _, _, pad_id = text_shape(spec)
    model = load_encoder(cfg)
    if spec.preprocessing["vocab_size"] > model.get_input_embeddings().num_embeddings:
        raise UserError(f"model.encoder={cfg.encoder} has {model.get_input_embeddings().num_embeddings} token embeddings, "
                        f"the data's tokenizer {spec.preprocessing['vocab_size']} ids: use the encoder's own tokenizer "
                        f"(leave data.tokenizer unset)")
    return Net(HFEncoder(model, pad_id, cfg.pooling), model.config.hidden_size, spec.num_classes, cfg.dropout,
               convolutional=False)
