"""`nettrain check-data data=...`: what is in a dataset and what is wrong with it, before training.

Image folders: images per class and split, class imbalance, image modes and sizes, unreadable
files (every image is fully decoded), and exact duplicates (same bytes) between train and val or
test, i.e. leakage. CSV files: each column's type, missing values and range, the target's balance,
the columns training would refuse, and data.table_checks' findings (row-id columns, columns that give
the target away, val rows copied from training rows). A language model's text (data=text_lm): its
files, characters and tokens, and what validation shares with training. Other datasets: class balance and duplicate
samples across splits. The train/val split is the one training makes (same data.val_fraction and
trainer.seed).

`strict=true` exits 1 when there is leakage, an unreadable file or a column training would refuse
(or that table_checks flags). It is a Hydra app on configs/check_data.yaml (configs/train.yaml plus
`strict`) that writes nothing; each kind's report is its own module (check_images, check_table, check_text, check_text_lm).
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig
from rich.console import Console

from nettrain.commands.hydra_app import run_hydra_app
from nettrain.config.rules import validate
from nettrain.errors import UserError

log = logging.getLogger("nettrain")


def check_data_task(cfg: DictConfig) -> None:
    """Print the report for `cfg.data`; exit 1 under strict=true when it found problems."""
    try:
        validate(cfg)
        problems = _report(cfg, Console(soft_wrap=True))
    except UserError as e:
        log.error("nettrain: %s", e)
        raise SystemExit(e.exit_code) from None
    if problems and cfg.strict:
        log.error("nettrain: strict=true: %s", "; ".join(problems))
        raise SystemExit(1)


def _report(cfg: DictConfig, out: Console) -> list[str]:
    # The reports (torch, pandas) only once there is data to check: --help and config errors answer at once.
    from nettrain.commands import check_images, check_table, check_text, check_text_lm

    reports = {"imagefolder": check_images.report, "csv": check_table.report, "text": check_text.report,
               "text_lm": check_text_lm.report}
    return reports.get(cfg.data.get("name"), check_images.tensors_report)(cfg, out)


def main(argv: list[str]) -> int:
    return run_hydra_app(check_data_task, argv, config_name="check_data")
