"""`nettrain check-data data=text_lm data.path=...`: a language model's text as training would read it.

The files read (in order, with their sizes, and any two with the same text), the characters and tokens of the
vocabulary training would build, the split in tokens and blocks of data.block_size, the most and least common
characters (each rare one with where it first occurs), control characters, and what the validation text
shares with the training text: characters the training part never shows (a character vocabulary holds them
but the model never learns them) and lines of LEAK_CHARS or more characters copied from it (leakage: the
validation loss would reward memorizing). data.test_path, when given, is checked against the training text
the same way.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections import Counter, defaultdict
from pathlib import Path

from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from nettrain.commands.report import show_list, show_summary
from nettrain.data.base import DataContext
from nettrain.data.text_lm import CharVocabulary, Text, build_vocabulary, describe_char, read_text, token_ids, training_tokens
from nettrain.inference.generate import decode

LEAK_CHARS = 30   # a line this long (stripped) found in the training text is a copy, not a common phrase
COMMON = 10       # characters shown as the most common
RARE = 3          # a character seen this many times or fewer is listed as rare


def report(cfg: DictConfig, out: Console) -> list[str]:
    data = cfg.data
    text = read_text(str(data.path), "data.path")
    vocab, origin = build_vocabulary(data, text.content, DataContext(seed=cfg.trainer.seed))
    ids = token_ids(vocab, text)
    split = training_tokens(len(ids), data.val_fraction)
    # Where the training text ends in characters: the split is made in tokens.
    cut = split if isinstance(vocab, CharVocabulary) else len(decode(vocab, ids[:split].tolist()))
    train, val = text.content[:cut], text.content[cut:]
    out.print(f"[bold]{text.given}[/]  {len(text.files)} file(s), {len(text.content):,} characters, {len(ids):,} tokens "
              f"(vocabulary {vocab.describe()}, {origin}; {len(ids) / len(text.content):.2f} tokens a character)")
    block = data.block_size
    out.print(f"split: train {split:,} tokens ({split // block:,} blocks of {block}), val {len(ids) - split:,} "
              f"tokens ({(len(ids) - split) // block:,} blocks)")
    problems = _files(text, out)
    _characters(text, out)
    problems += _against_training(train, val, f"val (the last {data.val_fraction:.0%})", out,
                                  isinstance(vocab, CharVocabulary))
    if data.get("test_path"):
        test = read_text(str(data.test_path), "data.test_path")
        out.print(f"[bold]test {test.given}[/]  {len(test.files)} file(s), {len(test.content):,} characters")
        problems += _against_training(train, test.content, "test", out, False)
    show_summary(out, problems)
    return problems


def _files(text: Text, out: Console) -> list[str]:
    if len(text.files) == 1:
        return []
    ends = [*text.starts[1:], len(text.content)]
    table = Table(title="files, in the order they are read")
    table.add_column("file")
    table.add_column("characters", justify="right")
    by_content: dict[bytes, list[Path]] = defaultdict(list)
    for file, start, end in zip(text.files, text.starts, ends):
        table.add_row(str(file), f"{end - start:,}")
        by_content[hashlib.sha256(text.content[start:end].encode()).digest()].append(file)
    out.print(table)
    same = [files for files in by_content.values() if len(files) > 1]
    copies = sum(len(files) - 1 for files in same)
    if not copies:
        return []
    show_list(out, f"files with the same text as another: {copies}", [" = ".join(map(str, files)) for files in same])
    return [f"{copies} file(s) repeat another's text"]


def _characters(text: Text, out: Console) -> None:
    counts = Counter(text.content)
    total = len(text.content)
    out.print(f"{len(counts)} distinct characters; most common: "
              + ", ".join(f"{c!r} {n / total:.1%}" for c, n in counts.most_common(COMMON)))
    rare = sorted((c for c, n in counts.items() if n <= RARE), key=lambda c: (counts[c], c))
    if rare:
        out.print(f"rare ({RARE} times or fewer): {len(rare)}" + (f", the {COMMON} rarest:" if len(rare) > COMMON else ""))
        for c in rare[:COMMON]:
            out.print(f"  {describe_char(c)} x{counts[c]}, first at {text.where(text.content.index(c))}", markup=False)
    control = [c for c in counts if unicodedata.category(c) == "Cc" and c not in "\n\t\r"]
    if control:
        out.print(f"[yellow]control characters: {', '.join(f'U+{ord(c):04X} x{counts[c]}' for c in control)} "
                  f"(binary data in the text?)[/]")


def _against_training(train: str, other: str, name: str, out: Console, char_vocabulary: bool) -> list[str]:
    problems = []
    unseen = sorted(set(other) - set(train))
    if unseen and char_vocabulary:
        problems.append(f"{len(unseen)} character(s) of {name} never in the training text")
        show_list(out, f"{name}: {len(unseen)} character(s) the training text never shows (the model cannot learn "
                       f"them)", [describe_char(c) for c in unseen])
    lines = {line.strip() for line in train.split("\n") if len(line.strip()) >= LEAK_CHARS}
    long = [line.strip() for line in other.split("\n") if len(line.strip()) >= LEAK_CHARS]
    copied = [line for line in long if line in lines]
    out.print(f"{name}: {len(copied)} of its {len(long):,} lines of {LEAK_CHARS}+ characters also in the training text")
    if copied:
        problems.append(f"{len(copied)} {name} line(s) copied from the training text (leakage)")
        show_list(out, f"leakage: {len(copied)} {name} line(s) also in the training text", copied)
    return problems
