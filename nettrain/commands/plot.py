"""`nettrain plot RUN_DIR`: a run's train vs val curves from its metrics.json, as a PNG."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from nettrain.commands.args import parse_args, run_command
from nettrain.config.paths import absolute
from nettrain.errors import UserError

log = logging.getLogger("nettrain")

USAGE = """
usage: nettrain plot [run=]RUN_DIR [output=FILE.png] [log_loss=true|false]

Draw the run's train and val loss, accuracy (regression: RMSE) and learning
rate per epoch from RUN_DIR/metrics.json, with the best epoch marked, titled
with the run's name and overrides. Writes RUN_DIR/curves.png unless output= is
given. log_loss=true draws the loss on a log scale. Works on a finished run and
on one still training, and on a sweep's job dir (names with `=`).

examples:
  nettrain plot outputs/2025-01-31/12-00-00-123456_mlp
  nettrain plot outputs/multirun/2025-01-31/12-00-00-123456/0_optimizer.lr=0.01
"""

DEFAULTS: dict[str, Any] = {"run": None, "output": None, "log_loss": False}


def _plot(argv: list[str]) -> int:
    args = parse_args(argv, DEFAULTS, required=("run",), paths=("run", "output"), positional="run")
    if not isinstance(args["log_loss"], bool):
        raise UserError(f"invalid log_loss={args['log_loss']!r}: allowed: true, false")
    run_dir = Path(absolute(args["run"]))
    output = Path(absolute(args["output"])) if args["output"] else run_dir / "curves.png"
    from nettrain.records.figures import write_curves  # matplotlib: once the arguments are parsed

    log.info("wrote %s", write_curves(run_dir, output, args["log_loss"]))
    return 0


def main(argv: list[str]) -> int:
    return run_command(_plot, argv, USAGE)
