"""`nettrain check-data data=text ...`: the texts as training would see them.

Texts per class and split (the split training makes), class imbalance, text lengths in tokens of
the tokenizer training would use (percentiles, and how many data.max_length cuts), bad rows (empty
texts, missing labels, bytes that are not UTF-8), duplicate texts within the training split (and
those with different labels), and texts of val/test identical to a training text: leakage.
Texts count as identical after trimming white space and, with data.lowercase, case.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from nettrain.commands.report import per_class_table, show_list, show_summary, weights_hint
from nettrain.data.text import BadRows, Texts, encode, labelled_splits, tokenizer_for

PERCENTILES = (50, 90, 95, 99, 100)


def report(cfg: DictConfig, out: Console) -> list[str]:
    data = cfg.data
    bad = BadRows("skip")
    train, val, test, source, classes = labelled_splits(data, cfg.trainer.seed, bad)
    splits = {"train": train, "val": val, **({"test": test} if test is not None else {})}
    out.print(f"[bold]{source}[/]  {sum(len(s.texts) for s in splits.values())} texts, {len(classes)} classes, "
              f"splits: {', '.join(f'{name} {len(s.texts)}' for name, s in splits.items())}")

    counts = {name: Counter(s.labels) for name, s in splits.items()}
    out.print(per_class_table("texts per class", [(cls, cls) for cls in classes], counts))
    imbalance = max(counts["train"].values()) / max(min(counts["train"][c] for c in classes), 1)
    out.print(f"imbalance (largest / smallest training class): {imbalance:.1f}x"
              + weights_hint(cfg, imbalance))

    tokenizer, preprocessing, origin = tokenizer_for(data, train)
    table = Table(title=f"length in tokens (tokenizer {origin}, vocabulary {preprocessing['vocab_size']})")
    table.add_column("split")
    for p in PERCENTILES:
        table.add_column("max" if p == 100 else f"p{p}", justify="right")
    table.add_column(f"cut to max_length={preprocessing['max_length']}", justify="right")
    tokenizer.no_truncation()
    for name, split in splits.items():
        lengths = sorted(encode(tokenizer, split.texts)[1].tolist())
        cut = sum(n > preprocessing["max_length"] for n in lengths)
        table.add_row(name, *(str(lengths[min(len(lengths) - 1, len(lengths) * p // 100)]) for p in PERCENTILES),
                      f"{cut} ({cut / len(lengths):.0%})")
    out.print(table)

    problems = []
    if bad.rows:
        reasons = Counter(why.split(" (")[0] for _, why in bad.rows)
        problems.append(f"{len(bad.rows)} bad row(s)")
        action = ("training leaves them out (data.on_bad_row=skip)" if data.get("on_bad_row") == "skip"
                  else "training stops on them; data.on_bad_row=skip leaves them out")
        show_list(out, f"bad rows: {len(bad.rows)} ({', '.join(f'{n} {why}' for why, n in reasons.most_common())}); "
                   f"{action}", [f"{where}: {why}" for where, why in bad.rows])

    key = (lambda t: t.strip().lower()) if data.lowercase else (lambda t: t.strip())
    seen: dict[str, list[int]] = defaultdict(list)
    for i, text in enumerate(train.texts):
        seen[key(text)].append(i)
    repeated = [rows for rows in seen.values() if len(rows) > 1]
    conflicting = [rows for rows in repeated if len({train.labels[i] for i in rows}) > 1]
    out.print(f"duplicate texts in train: {sum(len(r) - 1 for r in repeated)} ({len(conflicting)} with different labels)")
    if conflicting:
        show_list(out, f"the same text with different labels: {len(conflicting)}",
              [" = ".join(f"{train.where[i]} ({train.labels[i]})" for i in rows) for rows in conflicting])
    for name, split in splits.items():
        if name == "train":
            continue
        leaks = _leaks(split, train, seen, key)
        out.print(f"{name}: {len(leaks)} text(s) identical to a training text")
        if leaks:
            problems.append(f"{len(leaks)} {name} text(s) identical to training texts (leakage)")
            show_list(out, f"leakage: {len(leaks)} {name} text(s) also in train", leaks)
    show_summary(out, problems)
    return problems


def _leaks(split: Texts, train: Texts, seen: dict[str, list[int]], key) -> list[str]:
    leaks = []
    for where, text, label in zip(split.where, split.texts, split.labels):
        twins = seen.get(key(text))
        if twins:
            twin = twins[0]
            labels = "" if train.labels[twin] == label else f" (labelled {train.labels[twin]!r} vs {label!r})"
            leaks.append(f"{where} = {train.where[twin]}{labels}")
    return leaks
