"""Plain text for a language model (`data=text_lm`, with `model=gpt`): next-token prediction.

Source: `data.path`, one text file or a folder of .txt files (read in sorted order, hidden ones skipped,
each ending in a newline), UTF-8. `data.test_path` (optional) is another text measured whole by
`nettrain eval split=test`.

Vocabulary (`data.tokenizer`):
  char   the characters of the whole text, in code-point order (as nanoGPT's shakespeare_char builds it:
         a validation character the training text lacked would make the loss infinite), one id each
  bpe    a byte-level BPE of `data.vocab_size` tokens learned from the training part of the text with
         Hugging Face `tokenizers` (any text encodes: unknown characters fall back to their bytes)
or `data.vocabulary_from`: a nettrain language-model checkpoint or run dir whose vocabulary reads the text
(`model.init_from` sets it, so continued training reads new text with the ids the weights learned); eval
reads the text with the model's own (`DataContext.model_preprocessing`).
The vocabulary is the spec's preprocessing (kind "text_lm"): generate, eval and export need nothing but the
checkpoint. Text a character vocabulary cannot encode is one line naming the first such character.

The text is encoded once into token ids (2 bytes each, 4 past 32,767 tokens); the first (1 - val_fraction)
of the ids train, the rest validate, as the usual character-level benchmark splits tiny shakespeare. Both are
held on the training device (`data.device_resident`) and served as blocks by `loaders.BlockLoader`: random
ones for training, the consecutive non-overlapping ones of the validation ids, in order, for validation.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from nettrain.config.paths import absolute
from nettrain.data.base import Data, DataContext, files_fingerprint
from nettrain.data.loaders import BlockLoader
from nettrain.data.spec import DataSpec
from nettrain.errors import UserError, invalid
from nettrain.records.checkpoint import load_checkpoint

log = logging.getLogger("nettrain")

KIND = "text_lm"
VOCABULARIES = ("char", "bpe")
# Characters encoded at a time: bounds the memory a long text's encoding takes beside its ids (a BPE's
# encodings, with their offsets and strings, take ~100 bytes a token until they are turned into ids).
CHUNK = 1 << 22
BPE_PIECE, BPE_PIECES_AT_ONCE = 1 << 20, 8
SHOWN = 12       # characters of a vocabulary shown in messages


# --- reading --------------------------------------------------------------------------------------------

@dataclass
class Text:
    """A text read from a file or a folder of files, with where each file starts in it (for messages)."""

    content: str
    files: list[Path]
    starts: list[int]       # offset of each file's first character in `content`
    given: str              # the path as the user gave it

    def where(self, position: int) -> str:
        """FILE:LINE:COLUMN of a character of `content`."""
        i = bisect_right(self.starts, position) - 1
        start = self.starts[i]
        line_start = max(self.content.rfind("\n", start, position) + 1, start)
        return f"{self.files[i]}:{self.content.count(chr(10), start, position) + 1}:{position - line_start + 1}"


def read_text(given: str, key: str) -> Text:
    """The UTF-8 text of `given` (a file, or a folder of .txt files); undecodable bytes and a text with
    no characters are one line naming the file."""
    path = Path(absolute(given))
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        if not files:
            raise invalid(key, given, "this folder holds no .txt files (searched recursively)")
    elif path.is_file():
        files = [path]
    else:
        raise invalid(key, given, "no such file or directory (expected a text file or a folder of .txt files)")
    parts, starts, offset = [], [], 0
    for file in files:
        text = _decode(file)
        if len(files) > 1 and text and not text.endswith("\n"):
            text += "\n"  # files join at line ends: one file's last word never runs into the next's first
        parts.append(text)
        starts.append(offset)
        offset += len(text)
    content = "".join(parts)
    if not content:
        raise invalid(key, given, "the text is empty")
    return Text(content, files, starts, given)


def _decode(file: Path) -> str:
    try:
        raw = file.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {file}: {e.strerror or e}") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise UserError(f"{file}:{line}: not UTF-8 text (byte {e.start}: {raw[e.start:e.start + 1]!r}); a language "
                        f"model reads UTF-8 text files") from None


# --- vocabularies ----------------------------------------------------------------------------------------

def describe_char(c: str) -> str:
    """A character as a message shows it: 'é' (U+00E9), a control character by its code point alone."""
    shown = repr(c) if unicodedata.category(c)[0] != "C" or c in "\n\t" else "a control character"
    return f"{shown} (U+{ord(c):04X})"


class Vocabulary:
    """Text <-> token ids, as the spec's preprocessing records it."""

    size: int

    def encode(self, text: str, where: Any = None, dtype: Any = np.int64) -> np.ndarray:
        """The ids of `text`. `where(position)` names a character in a refusal."""
        raise NotImplementedError

    def decoder(self) -> Any:
        """A streaming decoder: `.step(id)` -> the text that id completes ('' while a character is partial)."""
        raise NotImplementedError

    def preprocessing(self) -> dict[str, Any]:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


class CharVocabulary(Vocabulary):
    """One id per character, in code-point order."""

    def __init__(self, chars: str) -> None:
        self.chars = chars
        self.size = len(chars)
        self.codes = np.array([ord(c) for c in chars], dtype=np.uint32)

    @classmethod
    def of(cls, text: str) -> CharVocabulary:
        return cls("".join(sorted(set(text))))

    def encode(self, text: str, where: Any = None, dtype: Any = np.int64) -> np.ndarray:
        ids, lacking, first = self.encode_known(text, dtype)
        if lacking:
            raise UserError(self.unknown(text[first], where(first) if where is not None else f"position {first + 1}"))
        return ids

    def encode_known(self, text: str, dtype: Any = np.int64) -> tuple[np.ndarray, Counter[str], int]:
        """The ids of the characters it holds, those it lacks left out: (ids, the lacking ones counted, the position
        of the first of them, -1 when none)."""
        out = np.empty(len(text), dtype=dtype)
        kept, lacking, first = 0, Counter[str](), -1
        for start in range(0, len(text), CHUNK):
            codes = np.frombuffer(text[start:start + CHUNK].encode("utf-32-le"), dtype=np.uint32)
            ids = np.minimum(np.searchsorted(self.codes, codes), self.size - 1)
            unknown = self.codes[ids] != codes
            if unknown.any():
                first = start + int(unknown.argmax()) if first < 0 else first
                lacking.update({chr(c): int(n) for c, n in zip(*np.unique(codes[unknown], return_counts=True))})
                ids = ids[~unknown]
            out[kept:kept + len(ids)] = ids
            kept += len(ids)
        return out[:kept], lacking, first

    def unknown(self, c: str, place: str) -> str:
        """The refusal of a character it lacks, at `place`."""
        return (f"{place}: character {describe_char(c)} is not in the model's vocabulary of {self.size} characters "
                f"({self.sample()}); a character vocabulary encodes only the characters it was built from")

    def sample(self) -> str:
        shown = "".join(c for c in self.chars if c.isprintable() and not c.isspace())
        return repr(shown[:SHOWN] + ("..." if len(shown) > SHOWN else ""))

    def decoder(self) -> Any:
        return _CharDecoder(self.chars)

    def preprocessing(self) -> dict[str, Any]:
        return {"kind": KIND, "vocabulary": "char", "chars": self.chars, "vocab_size": self.size}

    def describe(self) -> str:
        return f"{self.size} characters"


class _CharDecoder:
    def __init__(self, chars: str) -> None:
        self.chars = chars

    def step(self, token: int) -> str:
        return self.chars[token]


class BpeVocabulary(Vocabulary):
    """A byte-level BPE (GPT-2's pre-tokenizer and byte alphabet): every text encodes, decoding restores it."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.size = tokenizer.get_vocab_size()

    @classmethod
    def train(cls, text: str, vocab_size: int) -> BpeVocabulary:
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        # BpeTrainer learns the same merges from the same text on every run: resume and eval rebuild it exactly.
        tokenizer.train_from_iterator(_pieces(text, BPE_PIECE), trainers.BpeTrainer(
            vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
        return cls(tokenizer)

    def encode(self, text: str, where: Any = None, dtype: Any = np.int64) -> np.ndarray:
        pieces, ids = list(_pieces(text, BPE_PIECE)), []
        for i in range(0, len(pieces), BPE_PIECES_AT_ONCE):
            ids += [np.array(e.ids, dtype=dtype) for e in self.tokenizer.encode_batch(pieces[i:i + BPE_PIECES_AT_ONCE])]
        return np.concatenate(ids) if ids else np.zeros(0, dtype=dtype)

    def decoder(self) -> Any:
        return _BpeDecoder(self.tokenizer)

    def preprocessing(self) -> dict[str, Any]:
        return {"kind": KIND, "vocabulary": "bpe", "tokenizer": self.tokenizer.to_str(), "vocab_size": self.size}

    def describe(self) -> str:
        return f"{self.size} BPE tokens"


class _BpeDecoder:
    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer, self.stream = tokenizer, decoders.DecodeStream(skip_special_tokens=False)

    def step(self, token: int) -> str:
        return self.stream.step(self.tokenizer, token) or ""


# A place where the byte-level pre-tokenizer splits anyway (a line end before a word): pieces cut there
# encode to exactly the ids of the whole text, with bounded memory.
_SPLIT = re.compile(r"\n(?=\S)")


def _pieces(text: str, size: int) -> Iterator[str]:
    """`text` in pieces of about `size` characters, each cut where the pre-tokenizer splits."""
    start = 0
    while start < len(text):
        cut = _SPLIT.search(text, start + size) if len(text) - start > size else None
        end = cut.end() if cut else len(text)
        yield text[start:end]
        start = end


def vocabulary_of(preprocessing: dict[str, Any]) -> Vocabulary:
    """The vocabulary a language model's spec records."""
    if preprocessing.get("vocabulary") == "char":
        return CharVocabulary(preprocessing["chars"])
    return BpeVocabulary(Tokenizer.from_str(preprocessing["tokenizer"]))


def checkpoint_vocabulary(source: str, key: str = "data.vocabulary_from") -> Vocabulary:
    """The vocabulary of a nettrain language-model checkpoint or run dir."""
    preprocessing = load_checkpoint(absolute(source), mmap=True)["spec"].get("preprocessing", {})
    if preprocessing.get("kind") != KIND:
        raise invalid(key, source, "this checkpoint is not a language model's (data=text_lm): it has no vocabulary "
                                   "to read text with")
    return vocabulary_of(preprocessing)


def build_vocabulary(cfg: DictConfig, text: str, ctx: DataContext) -> tuple[Vocabulary, str]:
    """(the vocabulary, where it came from): the model's own (eval), a checkpoint's, or one built from `text`."""
    own = ctx.model_preprocessing
    if own is not None:
        if own.get("kind") != KIND:
            raise UserError(f"the model was trained on {own.get('kind')} data, not plain text for a language model "
                            f"(data=text_lm)")
        return vocabulary_of(own), "the model's"
    if cfg.get("vocabulary_from"):
        return checkpoint_vocabulary(str(cfg.vocabulary_from)), f"from {cfg.vocabulary_from}"
    if cfg.tokenizer == "char":
        return CharVocabulary.of(text), "the text's characters"
    return BpeVocabulary.train(text[: int(len(text) * (1 - cfg.val_fraction))], cfg.vocab_size), \
        "byte-level BPE learned from the training text"


# --- the builder ----------------------------------------------------------------------------------------

def token_ids(vocab: Vocabulary, text: Text, unknown_chars: str = "refuse") -> torch.Tensor:
    """The text's ids, in the narrowest type that holds them (a long text's ids are most of its memory). Characters
    a character vocabulary lacks are refused, the first named, or with `unknown_chars="skip"` left out, counted."""
    dtype = np.int16 if vocab.size <= np.iinfo(np.int16).max else np.int32
    if not isinstance(vocab, CharVocabulary):
        return torch.from_numpy(vocab.encode(text.content, text.where, dtype))
    ids, lacking, first = vocab.encode_known(text.content, dtype)
    total = sum(lacking.values())
    if lacking and unknown_chars != "skip":
        raise UserError(f"{vocab.unknown(text.content[first], text.where(first))}: data.unknown_chars=skip leaves out "
                        f"the {total:,} character(s) of the text it lacks ({len(lacking)} distinct)")
    if lacking:
        shown = ", ".join(f"{describe_char(c)} x{n:,}" for c, n in lacking.most_common(SHOWN // 2))
        log.warning("%s: %s character(s) (%.2f%%, %d distinct) the vocabulary lacks are left out (data.unknown_chars="
                    "skip): %s%s", text.given, f"{total:,}", 100 * total / len(text.content), len(lacking), shown,
                    ", ..." if len(lacking) > SHOWN // 2 else "")
    return torch.from_numpy(ids)


def training_tokens(count: int, val_fraction: float) -> int:
    """How many of a text's `count` tokens train: the first (1 - val_fraction) of them."""
    return int(count * (1 - val_fraction))


def _enough(ids: torch.Tensor, block_size: int, what: str, given: str, fix: str) -> None:
    if len(ids) < block_size + 1:
        raise UserError(f"{given}: its {what} holds {len(ids):,} tokens, fewer than the data.block_size + 1 = "
                        f"{block_size + 1} that one block and its next token need; {fix}")


def build(cfg: DictConfig, ctx: DataContext) -> Data:
    if not cfg.get("path"):
        raise UserError("data=text_lm needs data.path=FILE (a UTF-8 text file) or a folder of .txt files")
    text = read_text(str(cfg.path), "data.path")
    vocab, origin = build_vocabulary(cfg, text.content, ctx)
    unknown_chars = cfg.get("unknown_chars", "refuse")
    ids = token_ids(vocab, text, unknown_chars)
    block = cfg.block_size
    split = training_tokens(len(ids), cfg.val_fraction)
    train_ids, val_ids = ids[:split], ids[split:]
    # A trained model's text (eval, update) is read in blocks of the model's own size.
    own = "give more text (the model reads blocks of its own size)"
    fix = f"{own}, or measure all of a short text with nettrain eval RUN split=test data.test_path=FILE" \
        if ctx.model_preprocessing is not None else "give more text or a smaller data.block_size"
    _enough(train_ids, block, f"first {1 - cfg.val_fraction:.0%} (training)", text.given, fix)
    _enough(val_ids, block, f"last {cfg.val_fraction:.0%} (validation)", text.given, fix)
    eval_batch = ctx.eval_batch_size or cfg.batch_size
    per_epoch = cfg.get("batches_per_epoch") or max(len(train_ids) // (block * cfg.batch_size * ctx.world_size), 1)

    def loader(split_ids: torch.Tensor, train: bool) -> BlockLoader:
        made = BlockLoader(split_ids, block, batch_size=cfg.batch_size if train else eval_batch, seed=ctx.seed,
                           per_epoch=per_epoch if train else None, rank=ctx.rank, world_size=ctx.world_size)
        return made.to(ctx.device) if ctx.resident else made

    test = None
    if cfg.get("test_path"):
        test_text = read_text(str(cfg.test_path), "data.test_path")
        test_ids = token_ids(vocab, test_text, unknown_chars)
        _enough(test_ids, block, "text", test_text.given, own if ctx.model_preprocessing is not None else fix)
        test = loader(test_ids, False)
    spec = DataSpec(input_shape=[block], num_classes=vocab.size, class_names=[], task="lm",
                    preprocessing=vocab.preprocessing())
    log.info("%s: %s characters, %s tokens (%s train / %s val%s), vocabulary %s (%s); %d batches of %d blocks of %d "
             "tokens an epoch", text.given, f"{len(text.content):,}", f"{len(ids):,}", f"{len(train_ids):,}",
             f"{len(val_ids):,}", f" / {len(test.ids):,} test" if test is not None else "", vocab.describe(), origin,
             per_epoch, cfg.batch_size, block)
    return Data(spec=spec, train=loader(train_ids, True), val=loader(val_ids, False), test=test,
                fingerprint=files_fingerprint(text.files, None if len(text.files) == 1 else Path(absolute(str(cfg.path)))))
