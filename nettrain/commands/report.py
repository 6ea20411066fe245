"""What every check-data report prints the same way: counts per class and split, the imbalance hint, problem
lists (the first SHOW named, the rest counted) and the closing verdict."""

from __future__ import annotations

from collections import Counter

from omegaconf import DictConfig
from rich.console import Console
from rich.markup import escape
from rich.table import Table

SHOW = 20  # files listed per problem; the rest are counted
IMBALANCE_WARNING = 3.0  # largest / smallest class


def weights_hint(cfg: DictConfig, imbalance: float) -> str:
    """"consider data.class_weights=balanced" after an imbalance that calls for it, unless it is set."""
    if imbalance < IMBALANCE_WARNING or cfg.data.get("class_weights") == "balanced":
        return ""
    return "  [yellow]consider data.class_weights=balanced[/]"


def per_class_table(title: str, classes: list[tuple[object, str]], counts: dict[str, Counter]) -> Table:
    """A row per class, a column per split: `classes` are (key in the counts, name) pairs."""
    table = Table(title=title)
    table.add_column("class")
    for split in counts:
        table.add_column(split, justify="right")
    for key, name in classes:
        table.add_row(name, *(str(counts[split][key]) for split in counts))
    return table


def show_list(out: Console, title: str, lines: list[str]) -> None:
    out.print(f"[red]{title}[/]")
    for line in lines[:SHOW]:
        out.print(f"  {line}", markup=False)
    if len(lines) > SHOW:
        out.print(f"  ... and {len(lines) - SHOW} more")


def show_summary(out: Console, problems: list[str], listed: bool = False) -> None:
    """The last line; `listed`: each problem was printed in full above, so it is counted, not repeated."""
    if problems and listed:
        out.print(f"[bold red]{len(problems)} problem(s)[/] (above)")
    elif problems:
        out.print(f"[bold red]problems:[/] {escape('; '.join(problems))}")
    else:
        out.print("[bold green]no problems found[/]")
