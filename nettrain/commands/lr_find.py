"""`nettrain lr-find`: the learning-rate range test (training.range_test) on a train config; writes its curve
and prints the suggested lr with the train command that uses it."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig

from nettrain.commands.hydra_app import hydra_context, run_hydra_app
from nettrain.config.registry import describe
from nettrain.config.rules import validate
from nettrain.errors import UserError, invalid
from nettrain.records import rundir

if TYPE_CHECKING:
    from nettrain.training.range_test import Curve

log = logging.getLogger("nettrain")

def write_outputs(curve: Curve, run_dir: Path, title: str) -> Path:
    """The curve as lr_find.png and in TensorBoard (scalars by step, and the figure); returns the PNG."""
    from torch.utils.tensorboard import SummaryWriter  # torch and matplotlib: the range test has run

    from nettrain.records.figures import range_test_figure  # matplotlib: likewise

    figure = range_test_figure(curve.lrs, curve.losses, curve.smoothed, curve.best_index, curve.suggested_lr, title)
    png = run_dir / "lr_find.png"
    figure.savefig(png, dpi=120)
    with SummaryWriter(str(run_dir)) as writer:
        for step, (lr, loss, smoothed) in enumerate(zip(curve.lrs, curve.losses, curve.smoothed)):
            writer.add_scalar("lr_find/lr", lr, step)
            writer.add_scalar("lr_find/loss", loss, step)
            writer.add_scalar("lr_find/smoothed_loss", smoothed, step)
        writer.add_figure("lr_find/curve", figure)
        writer.add_text("lr_find/suggested_lr", f"{curve.suggested_lr:.3g} ({curve.stop})")
    return png


def check_range(lf: DictConfig) -> None:
    if lf.max_lr <= lf.min_lr:
        raise invalid("lr_find.max_lr", lf.max_lr, f"must be greater than lr_find.min_lr={lf.min_lr}")


def lr_find_task(cfg: DictConfig) -> None:
    """The Hydra task of `nettrain lr-find` (configs/lr_find.yaml: configs/train.yaml plus `lr_find`)."""
    run_dir, _, overrides = hydra_context()
    try:
        validate(cfg)
        check_range(cfg.lr_find)
        from nettrain.training.range_test import range_test  # torch: once the config is checked

        curve = range_test(cfg)
        if len(curve.lrs) < 2 or not any(map(math.isfinite, curve.smoothed)):
            raise UserError(f"the loss was not finite from the first steps ({curve.stop}); "
                            f"try a lower lr_find.min_lr={cfg.lr_find.min_lr:g}")
    except UserError as e:
        log.error("nettrain: %s", e)
        rundir.discard_new(run_dir)  # nothing was written: leave no empty run dir behind
        raise SystemExit(e.exit_code) from None
    if curve.best_index < len(curve.lrs) // 20:  # no lr lowered the loss: the range missed the useful lrs
        if curve.exploded:
            log.warning("the loss only rose: lr_find.min_lr=%g is probably already too high", cfg.lr_find.min_lr)
        else:
            log.warning("the loss did not fall up to lr_find.max_lr=%g: try a larger one", cfg.lr_find.max_lr)
    png = write_outputs(curve, run_dir, f"lr range test: model {describe(cfg.model)}, optimizer.lr sweep")
    train_overrides = [o for o in overrides if not o.startswith(("lr_find.", "optimizer.lr="))]
    log.info("%d steps, %s", len(curve.lrs), curve.stop)
    print(f"suggested lr: {curve.suggested_lr:.2e}  (a tenth of {curve.lrs[curve.best_index]:.2e}, "
          f"where the smoothed loss was lowest)")
    print(f"  train with   nettrain train {' '.join([*train_overrides, f'optimizer.lr={curve.suggested_lr:.2e}'])}")
    print(f"  curve        {png}")
    print(f"  tensorboard  tensorboard --logdir {run_dir}")


def main(argv: list[str]) -> int:
    return run_hydra_app(lr_find_task, argv, config_name="lr_find")
