"""`nettrain update RUN`: the model of RUN learns from new labelled examples (the feedback `nettrain serve` kept,
new data) into a new run, without forgetting what it knew; a gate compares the two before promotion.

The work is `nettrain.training.update`; this module parses the arguments (the update.* keys and their comments
are configs/update.yaml's), reads RUN's feedback, and prints the gate's figures.
"""

from __future__ import annotations

import json
import sys
import textwrap
from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf
from rich.table import Table

from nettrain.commands.args import parse_args, result_console, run_command
from nettrain.commands.help import _show, comments
from nettrain.config.checks import check
from nettrain.config.rules import RULES
from nettrain.config.suggest import configs_dir, did_you_mean
from nettrain.errors import UserError

if TYPE_CHECKING:
    from nettrain.training.update import Outcome

USAGE = """
usage: nettrain update [run=]RUN [output=DIR] [update.KEY=VALUE ...]
                       [data.KEY=VALUE ...] [trainer.KEY=VALUE ...]
                       [optimizer.KEY=VALUE ...] [--json]

Teach the model of RUN (a run dir or checkpoint) new labelled examples, into
a new run (output=DIR, default outputs/DATE/TIME_update); RUN is only read.

The examples: the feedback nettrain serve kept under RUN/feedback (unless
update.feedback=false), and new data given with the usual data keys on top of
RUN's data config (data.path=new.csv, data.root=new_photos/). They are encoded
with RUN's own preprocessing (tokenizer, statistics, normalization); a label
RUN never saw becomes a new class, after its own (their weights are kept).

Without forgetting: a sample of RUN's own training data is replayed beside
them (update.replay per new example), and RUN's outputs can be a second
target (update.distill). The new run is a normal run (eval, predict, export,
serve take it) whose metrics.json records its lineage and the gate's figures.

A language model learns new text (data.path=new.txt, or a folder of .txt
files), read with its own vocabulary; its last update.holdout is held out.
An epoch is a pass over the new text, RUN's text replayed beside it
(update.replay blocks per new block); it trains as many epochs as RUN made
passes over its own text, unless trainer.max_epochs or trainer.max_steps is
given.

The gate: accuracy (RMSE for regression, the loss per token for a language
model) on RUN's validation set and on the held-out new examples, before and
after. An update that loses more than update.max_forgetting points on RUN's
validation set (for an RMSE or a loss: rises by more than that many percent)
is rejected (exit 3, the run kept and marked rejected), unless
update.force=true.

trainer., optimizer., scheduler., early_stopping. and loss. keys change how
it trains (default: as RUN trained). --json prints the record as JSON.

examples:
  nettrain update outputs/2026-01-31/12-00-00_mlp
  nettrain update RUN data.path=new_tickets.csv update.replay=2
  nettrain update RUN update.distill=1 trainer.max_epochs=5 output=runs/v2
  nettrain update LM_RUN data.path=more_plays.txt trainer.max_epochs=2
"""

DEFAULTS: dict[str, Any] = {"run": None, "output": None, "json": False}
TRAINING_PREFIXES = ("trainer.", "optimizer.", "scheduler.", "early_stopping.", "loss.")
CONFIG = "update.yaml"


def settings_of(given: dict[str, Any] | None) -> Any:
    """The update.* settings: configs/update.yaml's defaults with the given ones, each checked (one line each)."""
    defaults = OmegaConf.load(configs_dir() / CONFIG)["update"]
    for key in given or {}:
        if key not in defaults:
            raise UserError(f"unknown argument update.{key}=...;{did_you_mean(key, list(defaults))} allowed: "
                            f"{', '.join('update.' + k for k in defaults)}")
    settings = OmegaConf.merge(defaults, given or {})
    check(OmegaConf.create({"update": settings}), RULES)
    return settings


def keys_help() -> str:
    """The update.* keys with their defaults and comments, from configs/update.yaml."""
    path = configs_dir() / CONFIG
    described = comments(path)[1]
    defaults = OmegaConf.load(path)["update"]
    lines = ["its keys (configs/update.yaml):"]
    for key, value in defaults.items():
        lines.append(f"  update.{key}={_show(value)}")
        lines += textwrap.wrap(described.get(f"update.{key}", ""), 80, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return "\n".join(lines)


def flatten(node: dict[str, Any], prefix: str) -> dict[str, Any]:
    out = {}
    for key, value in node.items():
        if isinstance(value, dict) and value:
            out |= flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def print_outcome(outcome: Outcome) -> None:
    """The gate's figures as a table on stdout, and a line on what became of the update."""
    record, out = outcome.lineage, result_console()
    examples, classes = record["examples"], record["classes"]
    out.print(f"update of {record['parent']}")
    out.print(f"  new run      {outcome.run_dir}")
    if "tokens" in record:  # a language model: new text
        tokens = record["tokens"]
        out.print(f"  learned from {tokens['new_train']:,} tokens of new text ({tokens['new_holdout']:,} more held out), "
                  f"with {examples['replayed_per_epoch']:,} blocks of {tokens['block_size']} of RUN's "
                  f"{tokens['replay_pool']:,} training tokens replayed each epoch")
    else:
        out.print(f"  learned from {examples['new_train']} new example(s) ({examples['new_holdout']} more held out), "
                  f"{examples['replayed_per_epoch']} of RUN's {examples['replay_pool']} replayed each epoch"
                  + (f"; new classes: {', '.join(classes['new'])}" if classes["new"] else ""))
    gate = outcome.gate
    if gate is None:
        return
    metric = gate["metric"]
    table = Table(title=f"{metric}: before (RUN) and after (the new run)")
    for column in ("measured on", "before", "after", "change"):
        table.add_column(column, justify="left" if column == "measured on" else "right")
    held_out = "new text held out" if "tokens" in record else "new examples held out"
    rows = (("RUN's validation set", "old"), (held_out, "new"), ("  of new classes", "new_classes"))
    for label, key in rows:
        before, after = gate["before"][key], gate["after"][key]
        if before is None and after is None:
            continue
        table.add_row(label, _shown(metric, before), _shown(metric, after), _change(metric, before, after))
    out.print(table)
    verdict = gate["verdict"]
    limit = f"update.max_forgetting={gate['max_forgetting']:g} {gate['unit']}"
    if verdict == "accepted":
        out.print(f"accepted: it forgot {max(gate['forgot'], 0):.2f} {gate['unit']} on RUN's validation set (at most {limit})")
    elif verdict == "forced":
        out.print(f"forced (update.force=true): it forgot {gate['forgot']:.2f} {gate['unit']}, more than {limit}")
    else:
        print(f"nettrain: update rejected: it forgot {gate['forgot']:.2f} {gate['unit']} on RUN's validation set, more "
              f"than {limit}; {outcome.run_dir} is kept, marked rejected (update.force=true promotes it anyway)",
              file=sys.stderr)


def _shown(metric: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2%}" if metric == "accuracy" else f"{value:.4f}"


def _change(metric: str, before: float | None, after: float | None) -> str:
    if before is None or after is None:
        return ""
    return f"{100 * (after - before):+.2f} points" if metric == "accuracy" else f"{after - before:+.4f}"


def _update(argv: list[str]) -> int:
    prefixes = ("update.", "data.", "model.", *TRAINING_PREFIXES)
    args = parse_args(argv, DEFAULTS, required=("run",), paths=("run", "output"), prefixes=prefixes, positional="run")
    settings = settings_of(args.get("update"))
    model_args = args.get("model") or {}
    if set(model_args) - {"_target_"}:
        raise UserError(f"unknown argument model.{next(iter(set(model_args) - {'_target_'}))}=...: an update keeps RUN's "
                        f"model (model._target_=... only confirms the code RUN was trained with)")
    overrides = {k: v for p in TRAINING_PREFIXES for k, v in flatten(args.get(p[:-1]) or {}, p).items()}
    confirmed = {"model": model_args, "loss": args.get("loss") or {}, "data": args.get("data") or {}}
    # data._target_ only confirms RUN's own dataset code; the other data keys give new data.
    new_data = {k: v for k, v in (args.get("data") or {}).items() if k != "_target_"}
    # The library (torch) only once the arguments are parsed: --help and argument errors answer at once.
    from nettrain.inference.load import run_dir_of
    from nettrain.serving.feedback import FOLDER, read_feedback
    from nettrain.training.update import locate, prepare, run_dir_for, run_update

    checkpoint = locate(args["run"])
    parent = run_dir_of(checkpoint)
    records = read_feedback(parent) if settings.feedback else []
    files = sorted(p.name for p in (parent / FOLDER).glob("*.jsonl")) if records else []
    run_dir = run_dir_for(args["output"], parent)
    plan = prepare(checkpoint, records, files, settings, new_data, overrides, confirmed)
    try:
        outcome = run_update(plan, run_dir, [a for a in argv if not a.startswith("run=") and a != args["run"]])
    except KeyboardInterrupt:
        print(f"nettrain: update interrupted; {run_dir} is incomplete", file=sys.stderr)
        return 130
    if args["json"] is True:
        print(json.dumps({"run_dir": str(outcome.run_dir), "status": outcome.status, "lineage": outcome.lineage,
                          "gate": outcome.gate}, indent=2, default=str))
    else:
        print_outcome(outcome)
    return outcome.exit_code


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE.strip() + "\n\n" + keys_help())
        return 0
    return run_command(_update, argv, USAGE)
