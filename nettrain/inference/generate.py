"""Text from a language model (`model=gpt` on `data=text_lm`): the prompt encoded with the checkpoint's
vocabulary, then one token at a time drawn from the model's next-token distribution (its logits divided by
the temperature, cut to the `top_k` most likely), each decoded as soon as it completes a character.

The draws come from a generator of their own seeded by `seed`: the same checkpoint, prompt, settings and
seed write the same text on the same device, and training's global random state is never touched (the
loop logs samples at each validation without changing what it replays on resume). The context is the last
`block_size` tokens (the model's positions), so a text may grow past it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from nettrain.data.spec import DataSpec
from nettrain.data.text_lm import KIND, Vocabulary, vocabulary_of
from nettrain.errors import UserError, invalid
from nettrain.inference.load import Loaded, load_model
from nettrain.runtime import Runtime, choose_threads, resolve_precision

PROMPT_TOKENS = 8          # the validation text's first tokens: the prompt of the samples training logs
START = "\n"               # what an empty prompt starts from: a new line, as a new paragraph would
SAMPLE_TEMPERATURE, SAMPLE_TOP_K = 0.8, 200


def choose(logits: Tensor, temperature: float, top_k: int | None, generator: torch.Generator) -> Tensor:
    """The next token of each row of `logits` [batch, vocab]: drawn from softmax(logits / temperature) over the
    `top_k` most likely tokens; temperature 0 takes the most likely one."""
    if temperature == 0:
        return logits.argmax(-1)
    # From the most likely one down, in float64 (temperature=1e-300 is 0 in float32): a tiny temperature sends the
    # others to -inf, never the top one to inf, which softmax would make NaN.
    logits = logits.double()
    logits = (logits - logits.amax(-1, keepdim=True)) / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(1)


@torch.inference_mode()
def next_tokens(model: nn.Module, ids: Tensor, *, block_size: int, max_new_tokens: int, temperature: float,
                top_k: int | None, generator: torch.Generator,
                autocast: Callable[[], Any] = nullcontext) -> Iterator[Tensor]:
    """Each step's new tokens [batch] after the prompts `ids` [batch, length], `max_new_tokens` steps."""
    for _ in range(max_new_tokens):
        with autocast():
            logits = model(ids[:, -block_size:])[:, -1, :]
        token = choose(logits.float(), temperature, top_k, generator)
        # The context only: the text's earlier tokens are yielded already, and a long text stays cheap to extend.
        ids = torch.cat((ids[:, max(ids.shape[1] - block_size + 1, 0):], token.unsqueeze(1)), 1)
        yield token


def threads_for(lm: LanguageModel) -> tuple[int, str]:
    """CPU threads to write with, by training's rule (runtime.choose_threads) for the arithmetic of one token: a
    forward pass over the context, about a third of a training step's per block. A small model's steps are too
    short to split: on a busy 2-core machine the CPU recipe's model wrote 200 characters in 2.6 s on one thread
    and 40 s on two."""
    return choose_threads(lm.loaded.model, max(lm.block_size // 3, 1))


def seeded(seed: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def sample_texts(model: nn.Module, spec: DataSpec, prompt: Tensor, count: int, max_new_tokens: int, *, seed: int,
                 autocast: Callable[[], Any] = nullcontext) -> list[str]:
    """`count` texts continuing the token ids `prompt` (all drawn at once, as one batch), each with its prompt,
    in eval mode (the model's mode is restored after)."""
    vocab = vocabulary_of(spec.preprocessing)
    device = next(model.parameters()).device
    ids = prompt.to(device).long().unsqueeze(0).expand(count, -1)
    was_training = model.training
    model.eval()
    try:
        steps = list(next_tokens(model, ids, block_size=spec.input_shape[0], max_new_tokens=max_new_tokens,
                                 temperature=SAMPLE_TEMPERATURE, top_k=SAMPLE_TOP_K, generator=seeded(seed, device),
                                 autocast=autocast))
    finally:
        model.train(was_training)
    tokens = torch.cat((ids, torch.stack(steps, 1)), 1).tolist() if steps else ids.tolist()
    return [decode(vocab, row) for row in tokens]


def decode(vocab: Vocabulary, ids: list[int]) -> str:
    decoder = vocab.decoder()
    return "".join(decoder.step(i) for i in ids)


@dataclass
class LanguageModel:
    """A language model's checkpoint, ready to write."""

    loaded: Loaded
    vocabulary: Vocabulary
    autocast: Callable[[], Any]

    @property
    def block_size(self) -> int:
        return self.loaded.spec.input_shape[0]

    def encode_prompt(self, prompt: str) -> Tensor:
        """The prompt's ids [1, length] on the model's device; an empty prompt starts from a new line (or from
        the vocabulary's first token, when it has no line break). A character a character vocabulary lacks is
        refused, named."""
        ids = self.vocabulary.encode(prompt, lambda i: f"prompt={prompt!r} (character {i + 1})") if prompt else []
        if not len(ids):
            try:
                ids = self.vocabulary.encode(START)
            except UserError:
                ids = [0]
        return torch.as_tensor(ids, dtype=torch.long, device=self.loaded.device).unsqueeze(0)

    def stream(self, prompt: str, *, max_new_tokens: int, temperature: float = 0.8, top_k: int | None = 200,
               seed: int = 0) -> Iterator[str]:
        """The prompt, then the generated text piece by piece as each token completes it."""
        ids = self.encode_prompt(prompt)
        yield prompt
        decoder = self.vocabulary.decoder()
        for token in next_tokens(self.loaded.model, ids, block_size=self.block_size, max_new_tokens=max_new_tokens,
                                 temperature=temperature, top_k=top_k, generator=seeded(seed, self.loaded.device),
                                 autocast=self.autocast):
            piece = decoder.step(int(token))
            if piece:
                yield piece


def check_settings(max_new_tokens: Any, temperature: Any, top_k: Any, seed: Any) -> None:
    """Each generation setting as one line naming it when it is not allowed."""
    def integer(v: Any, least: int) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= least

    if not integer(max_new_tokens, 1):
        raise invalid("max_new_tokens", max_new_tokens, "must be an integer >= 1")
    if not (isinstance(temperature, (int, float)) and not isinstance(temperature, bool)
            and math.isfinite(temperature) and temperature >= 0):
        raise invalid("temperature", temperature, "must be a number >= 0 (0 = always the most likely token)")
    if top_k is not None and not integer(top_k, 1):
        raise invalid("top_k", top_k, "must be null (every token) or an integer >= 1")
    if not integer(seed, 0):
        raise invalid("seed", seed, "must be an integer >= 0")


def load_language_model(ckpt: str | Path, device: str = "auto", confirmed: dict[str, Any] | None = None) -> LanguageModel:
    """A checkpoint of a language model, with its vocabulary and the precision it was validated in."""
    return language_model(load_model(ckpt, device, confirmed))


def language_model(loaded: Loaded) -> LanguageModel:
    """A loaded checkpoint as a language model (one line when it is not one)."""
    if loaded.spec.preprocessing.get("kind") != KIND:
        raise UserError(f"{loaded.path} is not a language model (it was trained for {loaded.spec.task} on "
                        f"data={loaded.config.data.get('name') or loaded.config.data.get('_target_')}): generate needs a "
                        f"checkpoint of model=gpt trained on data=text_lm")
    precision = resolve_precision(loaded.config.trainer.get("precision", "auto"), loaded.device)
    rt = Runtime(device=loaded.device, amp_dtype=precision, channels_last=False)
    return LanguageModel(loaded, vocabulary_of(loaded.spec.preprocessing), rt.autocast)
