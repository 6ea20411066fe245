"""Labelled texts (`data=text`): intents, support tickets, reviews.

Sources:
  data.path=FILE     a .csv, .tsv or .jsonl file with a text column (`data.text`) and a label column
                     (`data.target`); `data.val_path` / `data.test_path` optional
  data.root=DIR      folders of .txt files, one per text: root/{train,val,test}/<class>/*.txt, or
                     root/<class>/*.txt
Without a validation set, a seeded, stratified `data.val_fraction` of the training texts is held out.

Bad rows (`data.on_bad_row`): an empty text, a missing label and bytes that are not UTF-8 are
counted and named in the log and left out (`skip`), or stop the run naming the first (`error`).

Tokenizer: trained on the training split only with Hugging Face `tokenizers` (WordPiece or BPE,
`data.vocab_size`, `data.lowercase`), or loaded (`data.tokenizer`: a tokenizer.json, a nettrain
checkpoint or run dir whose tokenizer to reuse, or a Hugging Face model folder or name). Its JSON,
with truncation to `data.max_length` and padding set, is the spec's preprocessing (kind "text"), so
predict and export need nothing but the checkpoint. Texts are tokenized once into an id matrix;
`TextLoader` serves it from memory, each batch cut to its longest text.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
from torch import Tensor

from nettrain.config.rules import absolute
from nettrain.data.base import Data, DataContext
from nettrain.data.labels import balanced_weights, keep_order, split_indices
from nettrain.data.loaders import TextLoader
from nettrain.data.spec import DataSpec
from nettrain.errors import UserError, invalid
from nettrain.records.checkpoint import load_checkpoint

log = logging.getLogger("nettrain")

SUFFIXES = {".csv": ",", ".tsv": "\t", ".jsonl": None}
SPECIALS = ["[PAD]", "[UNK]", "[CLS]"]  # ids 0, 1, 2 of a trained tokenizer: [PAD] is 0
SHOW_BAD_ROWS = 10
_UNDECODABLE = re.compile("[\udc80-\udcff]")  # bytes that are not UTF-8, kept by surrogateescape


@dataclass
class Texts:
    """Labelled texts of one split, each with where it came from (FILE:LINE or a file)."""

    texts: list[str]
    labels: list[str]
    where: list[str]

    def take(self, indices: list[int]) -> Texts:
        return Texts([self.texts[i] for i in indices], [self.labels[i] for i in indices], [self.where[i] for i in indices])


class BadRows:
    """Rows left out, by reason; `data.on_bad_row=error` stops at the first."""

    def __init__(self, policy: str) -> None:
        self.policy, self.rows = policy, []

    def add(self, where: str, why: str) -> None:
        if self.policy == "error":
            raise UserError(f"{where}: {why} (data.on_bad_row=error; data.on_bad_row=skip leaves such rows out)")
        self.rows.append((where, why))

    def report(self) -> None:
        if not self.rows:
            return
        reasons = Counter(why.split(" (")[0] for _, why in self.rows)
        log.warning("%d bad row(s) left out: %s", len(self.rows), ", ".join(f"{n} {why}" for why, n in reasons.most_common()))
        for where, why in self.rows[:SHOW_BAD_ROWS]:
            log.warning("  %s: %s", where, why)
        if len(self.rows) > SHOW_BAD_ROWS:
            log.warning("  ... and %d more", len(self.rows) - SHOW_BAD_ROWS)


def _check(text: Any, label: Any, where: str, bad: BadRows, out: Texts) -> None:
    """Append a row to `out`, or record why it is bad."""
    if label is None or str(label).strip() == "":
        return bad.add(where, "missing label")
    if not isinstance(text, str):
        return bad.add(where, "missing text" if text is None else f"text is not a string ({type(text).__name__})")
    if _UNDECODABLE.search(text) or _UNDECODABLE.search(str(label)):
        return bad.add(where, "undecodable bytes (not UTF-8)")
    if not text.strip():
        return bad.add(where, "empty text")
    out.texts.append(text)
    out.labels.append(str(label).strip())
    out.where.append(where)


def read_file(path: str | Path, text: str, target: str | None, bad: BadRows) -> Texts:
    """The rows of a .csv/.tsv/.jsonl file as Texts (labels '' when `target` is None: predict).
    Rows are named FILE:LINE, the header being line 1."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise invalid("data.path", str(path), f"allowed: a {', '.join(SUFFIXES)} file (or data.root=DIR of .txt files)")
    try:
        content = path.read_bytes().decode("utf-8-sig", errors="surrogateescape")
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    out = Texts([], [], [])
    if suffix == ".jsonl":
        found = set()
        for number, line in enumerate(content.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                bad.add(f"{path}:{number}", "not a JSON object")
                continue
            if not isinstance(row, dict):
                bad.add(f"{path}:{number}", "not a JSON object")
                continue
            found |= row.keys()
            _check(row.get(text), row.get(target) if target else "-", f"{path}:{number}", bad, out)
        _require_columns(path, sorted(found), text, target, bool(out.texts or bad.rows))
    else:
        csv.field_size_limit(2**31 - 1)  # a text may be a whole document (the default limit is 128 KB)
        reader = csv.reader(io.StringIO(content, newline=""), delimiter=SUFFIXES[suffix])
        header = next(reader, None)
        if header is None:
            raise UserError(f"{path} is empty: it needs a header line and rows")
        header = [h.strip() for h in header]
        _require_columns(path, header, text, target, True)
        t, y = header.index(text), header.index(target) if target else None
        line = reader.line_num + 1
        try:
            for row in reader:
                if any(cell.strip() for cell in row):
                    _check(row[t] if t < len(row) else None,
                           ("-" if y is None else row[y] if y < len(row) else None), f"{path}:{line}", bad, out)
                line = reader.line_num + 1
        except csv.Error as e:  # e.g. a quote never closed: nothing after it can be read reliably
            raise UserError(f"{path}:{line}: cannot read as {suffix[1:].upper()} ({e})") from None
    if target is None:
        out.labels = [""] * len(out.texts)
    return out


def _require_columns(path: Path, columns: list[str], text: str, target: str | None, any_rows: bool) -> None:
    for key, name in (("data.text", text), ("data.target", target)):
        if name is not None and name not in columns and any_rows:
            raise invalid(key, name, f"no such column in {path}; its columns: {', '.join(columns) or '(none)'}")


def read_folder(directory: Path, bad: BadRows) -> Texts:
    """directory/<class>/**/*.txt, one text per file (hidden files and folders skipped)."""
    out = Texts([], [], [])
    for sub in sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for file in sorted(p for p in sub.rglob("*.txt") if p.is_file()
                           and not any(part.startswith(".") for part in p.relative_to(sub).parts)):
            try:
                content = file.read_bytes().decode("utf-8-sig", errors="surrogateescape")
            except OSError as e:
                bad.add(str(file), f"unreadable ({e.strerror or e})")
                continue
            _check(content, sub.name, str(file), bad, out)
    return out


def read_splits(cfg: DictConfig, bad: BadRows) -> tuple[Texts, Texts | None, Texts | None, str]:
    """(train, val or None, test or None, a name for the source) from data.path or data.root."""
    if bool(cfg.get("path")) == bool(cfg.get("root")):
        raise UserError("data=text needs one of data.path=FILE (.csv, .tsv, .jsonl) or data.root=DIR (folders of "
                        ".txt files per class)" + (", not both" if cfg.get("path") else ""))
    if cfg.get("path"):
        read = lambda key: read_file(absolute(cfg[key]), cfg.text, cfg.target, bad) if cfg.get(key) else None  # noqa: E731
        return read("path"), read("val_path"), read("test_path"), absolute(cfg.path)
    root = Path(absolute(cfg.root))
    if not root.is_dir():
        raise invalid("data.root", cfg.root, "no such directory")
    if (root / "train").is_dir():
        split = {name: read_folder(root / name, bad) if (root / name).is_dir() else None for name in ("train", "val", "test")}
        return split["train"], split["val"], split["test"], str(root)
    return read_folder(root, bad), None, None, str(root)


def class_order(labels: list[str]) -> list[str]:
    """Distinct labels, sorted: numerically when they are all integers (2 before 10)."""
    names = set(labels)
    if all(re.fullmatch(r"-?\d+", n) for n in names):
        return sorted(names, key=int)
    return sorted(names)


def _known(split: Texts, classes: list[str], name: str, bad: BadRows) -> Texts:
    """The split without rows whose label training never saw (bad rows)."""
    keep = []
    for i, label in enumerate(split.labels):
        if label in classes:
            keep.append(i)
        else:
            bad.add(split.where[i], f"label {label!r} is not a class of the training texts ({name} split)")
    return split.take(keep)


# --- tokenizer --------------------------------------------------------------------------------------

def train_tokenizer(texts: list[str], cfg: DictConfig) -> Any:
    """A WordPiece or BPE tokenizer learned from `texts` (the training split): BERT's normalizer
    (unicode clean-up, optional lower-casing and accent stripping) and pre-tokenizer (words and
    punctuation), [CLS] prepended to every text (the first-token pooling reads it)."""
    # Only BpeTrainer learns the same pieces from the same texts on every run (tokenizers' WordPiece
    # trainer does not), and resume and eval must rebuild the very tokenizer training used. So
    # WordPiece here uses the BPE pieces of half the vocabulary, each also as a word-inner "##piece",
    # matched longest first.
    wordpiece = cfg.algorithm == "wordpiece"
    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=cfg.lowercase)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=cfg.vocab_size // 2 if wordpiece else cfg.vocab_size, min_frequency=cfg.min_frequency,
        special_tokens=SPECIALS, show_progress=False))
    if wordpiece:
        pieces = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
        vocab = {token: i for i, (token, _) in enumerate(pieces)}
        for token, _ in pieces[len(SPECIALS):]:
            vocab["##" + token] = len(vocab)
        tokenizer.model = models.WordPiece(vocab, unk_token="[UNK]")
    tokenizer.post_processor = processors.TemplateProcessing(single="[CLS] $A", special_tokens=[("[CLS]", 2)])
    return tokenizer


def load_tokenizer(source: str) -> tuple[Any, int | None]:
    """(tokenizer, the longest input its model takes or None) from a tokenizer.json, a nettrain
    checkpoint or run dir, or a Hugging Face model folder or name."""
    path = Path(absolute(source))
    if path.is_file() and path.suffix == ".json":
        try:
            return Tokenizer.from_file(str(path)), None
        except Exception as e:  # noqa: BLE001 - the Rust side raises plain Exceptions
            raise invalid("data.tokenizer", source, f"not a tokenizers JSON file ({str(e).splitlines()[0][:200]})") from None
    if path.is_file() and path.suffix == ".pt" or (path / "checkpoints").is_dir():
        preprocessing = load_checkpoint(str(path))["spec"].get("preprocessing", {})
        if preprocessing.get("kind") != "text":
            raise invalid("data.tokenizer", source, "this checkpoint was not trained on text")
        return Tokenizer.from_str(preprocessing["tokenizer"]), preprocessing["max_length"]
    return _hf_tokenizer(source)


def _hf_tokenizer(source: str) -> tuple[Any, int | None]:
    try:
        from transformers import AutoTokenizer  # an optional extra (nettrain[hf]): named when missing
    except ImportError:
        raise invalid("data.tokenizer", source, "no such file; a Hugging Face model's tokenizer needs transformers: "
                                                "pip install 'nettrain[hf]'") from None
    local = Path(absolute(source))
    try:
        hf = AutoTokenizer.from_pretrained(str(local) if local.is_dir() else source, use_fast=True)
    except (OSError, ValueError) as e:
        raise invalid("data.tokenizer", source, f"not a tokenizer.json, a nettrain checkpoint, nor a Hugging Face model that "
                                                f"loads here ({str(e).strip().splitlines()[0][:160]}); offline, download it where "
                                                f"there is a network (huggingface-cli download {source} --local-dir DIR) and "
                                                f"give the folder (model.encoder=DIR for model=hf)") from None
    if not hf.is_fast:
        raise invalid("data.tokenizer", source, "its Hugging Face tokenizer has no fast (tokenizers) version")
    tokenizer = hf.backend_tokenizer
    if hf.pad_token_id is not None:
        tokenizer.enable_padding(pad_id=hf.pad_token_id, pad_token=hf.pad_token)
    longest = hf.model_max_length if hf.model_max_length < 1_000_000 else None
    return tokenizer, longest


def pad_id(tokenizer: Any, source: str) -> int:
    if tokenizer.padding is not None:
        return tokenizer.padding["pad_id"]
    for token in ("[PAD]", "<pad>"):
        if tokenizer.token_to_id(token) is not None:
            return tokenizer.token_to_id(token)
    raise invalid("data.tokenizer", source, "it has no padding token ([PAD] or <pad>) to pad batches with")


def text_preprocessing(tokenizer: Any, max_length: int, pad: int, text_column: str) -> dict[str, Any]:
    """The spec's preprocessing: the tokenizer (truncating to max_length, padding to the longest
    text of a batch) as JSON, and what a model and predict need beside it."""
    tokenizer.enable_truncation(max_length)
    tokenizer.enable_padding(pad_id=pad, pad_token=tokenizer.id_to_token(pad) or "[PAD]")
    return {"kind": "text", "tokenizer": tokenizer.to_str(), "max_length": max_length, "pad_id": pad,
            "vocab_size": tokenizer.get_vocab_size(), "text_column": text_column}


def encode(tokenizer: Any, texts: list[str]) -> tuple[Tensor, Tensor, int]:
    """(ids [N, longest] int64 padded, lengths [N], how many texts were truncated)."""
    encodings = tokenizer.encode_batch(texts)
    ids = torch.tensor([e.ids for e in encodings], dtype=torch.long) if encodings else torch.zeros(0, 1, dtype=torch.long)
    lengths = torch.tensor([sum(e.attention_mask) for e in encodings], dtype=torch.long)
    return ids, lengths, sum(bool(e.overflowing) for e in encodings)


def encoder_for(preprocessing: dict[str, Any]) -> Callable[[list[str]], Tensor]:
    """texts -> a padded id batch, with a checkpoint's tokenizer (predict). An empty text is an error."""
    tokenizer = Tokenizer.from_str(preprocessing["tokenizer"])

    def run(texts: list[str | UserError]) -> Tensor:
        for text in texts:
            if isinstance(text, UserError):  # a row predict_inputs found unreadable
                raise text
            if not text.strip():
                raise UserError("empty text")
            if _UNDECODABLE.search(text):
                raise UserError("undecodable bytes (not UTF-8)")
        return encode(tokenizer, texts)[0]

    return run


def predict_inputs(path: Path, given: str, preprocessing: dict[str, Any]) -> list[tuple[str, str | UserError]]:
    """(FILE:LINE, text) for each text of `path`: a .csv/.tsv/.jsonl file with the training text
    column, or any other file with one text per line (blank lines skipped)."""
    if path.is_dir():
        raise invalid("input", given, "this model takes texts: give text=\"...\", a file of lines, or a CSV with a "
                                      f"{preprocessing['text_column']!r} column")
    if path.suffix.lower() in SUFFIXES:
        bad = BadRows("skip")
        rows = read_file(path, preprocessing["text_column"], None, bad)
        # bad rows (undecodable, empty) are named by predict with the other inputs it cannot read
        named = list(zip(rows.where, rows.texts)) + [(where, UserError(why)) for where, why in bad.rows]
        return [(given + name[len(str(path)):], text) for name, text in sorted(named, key=lambda r: _line(r[0]))]
    content = path.read_bytes().decode("utf-8-sig", errors="surrogateescape")
    return [(f"{given}:{i}", line) for i, line in enumerate(content.splitlines(), 1) if line.strip()]


def _line(where: str) -> int:
    return int(where.rsplit(":", 1)[1])


# --- the builder ------------------------------------------------------------------------------------

def labelled_splits(cfg: DictConfig, seed: int, bad: BadRows,
                    known: list[str] | None = None) -> tuple[Texts, Texts, Texts | None, str, list[str]]:
    """(train, val, test or None, the source's name, class names): the splits training uses, val
    held out from train (seeded, stratified) when there is none; bad rows recorded in `bad`. `known`: a
    trained model's classes, kept first in its order."""
    train, val, test, source = read_splits(cfg, bad)
    if not train.texts:
        raise UserError(f"{source}: no usable training text" + (f" ({len(bad.rows)} bad row(s))" if bad.rows else ""))
    classes = keep_order(class_order(train.labels), known)
    if len(classes) < 2:
        raise UserError(f"{source}: every training text has the label {classes[0]!r}; classification needs at least "
                        f"2 classes (check data.target={cfg.get('target')})" if cfg.get("path") else
                        f"{source}: one class folder ({classes[0]!r}); classification needs at least 2")
    if val is None:
        index = {c: i for i, c in enumerate(classes)}
        train_idx, val_idx = split_indices([index[c] for c in train.labels], cfg.val_fraction, seed,
                                           class_names=classes, what=source)
        train, val = train.take(train_idx), train.take(val_idx)
    val = _known(val, classes, "val", bad)
    test = _known(test, classes, "test", bad) if test is not None else None
    if not val.texts:
        raise UserError(f"{source}: no usable validation text (data.val_path or root/val/ holds none of the training classes)")
    return train, val, test, source, classes


def tokenizer_for(cfg: DictConfig, train: Texts, trained: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any], str]:
    """(tokenizer, the spec's preprocessing, where the tokenizer came from): a trained model's (`trained`,
    its preprocessing: its token ids are what its weights learned), data.tokenizer's, or one trained on the
    training texts."""
    if trained is not None:
        return Tokenizer.from_str(trained["tokenizer"]), dict(trained), "the model's own"
    if cfg.get("tokenizer"):
        tokenizer, longest = load_tokenizer(str(cfg.tokenizer))
        origin = f"loaded from {cfg.tokenizer}"
    else:
        tokenizer, longest = train_tokenizer(train.texts, cfg), None
        origin = f"{cfg.algorithm} trained on the training split"
    max_length = min(cfg.max_length, longest or cfg.max_length)
    return tokenizer, text_preprocessing(tokenizer, max_length, pad_id(tokenizer, str(cfg.get("tokenizer"))), cfg.text), origin


def text_loader(ids: Tensor, lengths: Tensor, y: Tensor, cfg: DictConfig, ctx: DataContext, *, train: bool) -> TextLoader:
    """Token ids as a split's loader: shuffled full batches for training, the eval batch size in order for
    evaluation, resident on the training device when the run asks for it."""
    made = TextLoader(ids, lengths, y, batch_size=cfg.batch_size if train else ctx.eval_batch_size or cfg.batch_size,
                      shuffle=train, drop_last=train, seed=ctx.seed, rank=ctx.rank, world_size=ctx.world_size)
    return made.to(ctx.device) if ctx.resident else made


def build(cfg: DictConfig, ctx: DataContext) -> Data:
    bad = BadRows(cfg.on_bad_row)
    try:
        train, val, test, source, classes = labelled_splits(cfg, ctx.seed, bad, ctx.classes)
    finally:
        bad.report()
    tokenizer, preprocessing, origin = tokenizer_for(cfg, train, ctx.preprocessing_for("text"))
    max_length = preprocessing["max_length"]
    spec = DataSpec(input_shape=[max_length], num_classes=len(classes), class_names=classes, preprocessing=preprocessing)
    index = {c: i for i, c in enumerate(classes)}

    def loader(split: Texts, train_split: bool) -> TextLoader:
        ids, lengths, truncated = encode(tokenizer, split.texts)
        if truncated:
            log.info("%d of %d texts cut to data.max_length=%d tokens", truncated, len(split.texts), max_length)
        y = torch.tensor([index[c] for c in split.labels], dtype=torch.long)
        return text_loader(ids, lengths, y, cfg, ctx, train=train_split)

    counts = Counter(train.labels)
    log.info("%s: %d train / %d val%s texts, %d classes (%s), vocabulary %d (%s), max_length %d", source,
             len(train.texts), len(val.texts), f" / {len(test.texts)} test" if test is not None else "", len(classes),
             ", ".join(f"{c} {counts[c]}" for c in classes[:10]) + (", ..." if len(classes) > 10 else ""),
             preprocessing["vocab_size"], origin, max_length)
    return Data(spec=spec, train=loader(train, True), val=loader(val, False),
                test=loader(test, False) if test is not None and test.texts else None,
                class_weights=balanced_weights([index[c] for c in train.labels], len(classes))
                if cfg.get("class_weights") == "balanced" else None)
