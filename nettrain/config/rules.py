"""The checks of a run's config, before any work starts (and before torch is imported).

The general rules (trainer, optimizer, scheduler, early stopping, ...) are here; a model's, data source's
or loss's own keys are checked by the rules of its entry in config.registry. `validate` turns the first
failure into a one-line `UserError`. Keys that a chosen config does not have are skipped.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from nettrain.config.checks import BOOLEAN, Rule, check, device, integer, number, one_of, optional
from nettrain.config.paths import PATH_KEYS, absolute
from nettrain.config.registry import REGISTRIES
from nettrain.config.user_code import check_target_modules
from nettrain.errors import UserError, invalid

MONITORS = ("auto", "val_loss", "val_accuracy", "train_loss", "train_accuracy", "val_rmse", "val_mae", "val_f1", "val_precision",
            "val_recall", "val_perplexity", "val_bpc")
MAXIMIZED = ("accuracy", "f1", "precision", "recall")


def monitor_mode(monitor: str, mode: str = "auto") -> str:
    """`min` or `max` for early_stopping.monitor: `auto` maximizes accuracy, F1, precision and recall,
    minimizes losses and errors."""
    return mode if mode != "auto" else ("max" if any(m in str(monitor) for m in MAXIMIZED) else "min")


POSITIVE = (integer(at_least=1), "must be an integer >= 1")
OPTIONAL_POSITIVE = (optional(integer(at_least=1)), "must be null or an integer >= 1")

RULES: list[Rule] = [
    ("optimizer.lr", number(above=0), "must be a number > 0"),
    ("optimizer.weight_decay", number(at_least=0), "must be a number >= 0"),
    ("optimizer.momentum", number(at_least=0, below=1), "must be a number in [0, 1)"),
    ("optimizer.decay_norms_and_biases", *BOOLEAN),
    ("optimizer.backbone_lr_factor", number(above=0), "must be a number > 0 (backbone lr = optimizer.lr x this)"),
    ("scheduler.warmup_epochs", number(at_least=0), "must be a number >= 0"),
    ("scheduler.step_epochs", *POSITIVE),
    ("scheduler.gamma", number(above=0, at_most=1), "must be a number in (0, 1]"),
    ("scheduler.min_lr", number(at_least=0), "must be a number >= 0"),
    ("scheduler.max_lr_factor", number(at_least=1), "must be a number >= 1"),
    ("scheduler.pct_start", number(above=0, below=1), "must be a number in (0, 1)"),
    ("trainer.max_epochs", *POSITIVE),
    ("trainer.max_steps", *OPTIONAL_POSITIVE),
    ("trainer.device", device, "allowed: auto, cpu, cuda, cuda:N"),
    ("trainer.devices", *POSITIVE),
    ("trainer.seed", integer(at_least=0), "must be an integer >= 0"),
    ("trainer.precision", one_of("auto", 32, "32", "bf16", 16, "16"), "allowed: auto, 32, bf16, 16"),
    ("trainer.compile", one_of(False, True, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
     "allowed: false, true, reduce-overhead (CUDA graphs), max-autotune, max-autotune-no-cudagraphs"),
    ("trainer.channels_last", *BOOLEAN),
    ("trainer.threads", *OPTIONAL_POSITIVE),
    ("trainer.grad_clip", optional(number(above=0)), "must be null or a number > 0"),
    ("trainer.accumulate_grad_batches", *POSITIVE),
    ("trainer.tta", one_of(None, "flip"), "allowed: null, flip"),
    ("trainer.ema_decay", optional(number(above=0, below=1)), "must be null or a number in (0, 1)"),
    ("trainer.divergence_factor", optional(number(above=1)), "must be null or a number > 1"),
    ("trainer.log_every_n_steps", *POSITIVE),
    ("trainer.limit_train_batches", *OPTIONAL_POSITIVE),
    ("trainer.overfit_batches", *OPTIONAL_POSITIVE),
    ("trainer.limit_val_batches", *OPTIONAL_POSITIVE),
    ("trainer.eval_batch_size", *OPTIONAL_POSITIVE),
    ("trainer.checkpoint_every_n_steps", *OPTIONAL_POSITIVE),
    ("threshold", lambda v: v in ("auto", None) or number(above=0, below=1)(v),
     "allowed: auto, null (argmax) or a number in (0, 1) (a threshold on the rare class's probability)"),
    ("early_stopping.monitor", one_of(*MONITORS), "allowed: " + ", ".join(MONITORS)),
    ("early_stopping.mode", one_of("auto", "min", "max"), "allowed: auto, min, max"),
    ("early_stopping.patience", *OPTIONAL_POSITIVE),
    ("early_stopping.min_delta", number(at_least=0), "must be a number >= 0"),
    ("early_stopping.overfit_patience", *POSITIVE),
    ("checkpoint.save_top_k", integer(at_least=0), "must be an integer >= 0"),
    ("lr_find.min_lr", number(above=0), "must be a number > 0"),
    ("lr_find.max_lr", number(above=0), "must be a number > 0"),
    ("lr_find.steps", integer(at_least=10), "must be an integer >= 10"),
    ("lr_find.diverge_factor", number(above=1), "must be a number > 1"),
    ("update.feedback", *BOOLEAN),
    ("update.replay", number(at_least=0, at_most=1000), "must be a number in [0, 1000] (replayed per new example)"),
    ("update.correct_prior", *BOOLEAN),
    ("update.distill", lambda v: v == "auto" or number(at_least=0)(v),
     "must be auto or a number >= 0 (0 = no distillation)"),
    ("update.temperature", number(above=0), "must be a number > 0"),
    ("update.holdout", number(at_least=0, below=1), "must be a number in [0, 1)"),
    ("update.max_forgetting", number(at_least=0), "must be a number >= 0 (points of accuracy)"),
    ("update.force", *BOOLEAN),
    ("update.min_steps", integer(at_least=0), "must be an integer >= 0"),
    ("update.remember", *BOOLEAN),
    ("update.train", *BOOLEAN),
    ("update.on_bad_record", one_of("error", "skip"), "allowed: error, skip"),
]



def validate(cfg: DictConfig) -> None:
    """Check every value a run depends on; raise a one-line `UserError` on the first bad one."""
    check_target_modules(cfg)
    for key in sorted(OmegaConf.missing_keys(cfg)):
        group = key.split(".")[0]
        chosen = OmegaConf.select(cfg, f"{group}.name", default=None, throw_on_missing=False)
        needs = f"{group}={chosen} needs it" if chosen else "it has no default"
        raise UserError(f"missing {key}: {needs}; give it on the command line as {key}=...")
    check(cfg, RULES)
    for registry in REGISTRIES:
        node = cfg.get(registry.group)
        if OmegaConf.is_dict(node):
            check(node, registry.rules_for(node), prefix=f"{registry.group}.")
    user_data = "_target_" in (cfg.get("data") or {})  # the user's own dataset: its paths are its own arguments
    data = cfg.get("data")
    if data is not None and data.get("root") is not None and not user_data:
        if not data.get("download", False) and not Path(absolute(data.root)).exists():
            raise invalid("data.root", data.root, "no such directory (give an existing folder)")
    for key, what in PATH_KEYS.items():
        value = OmegaConf.select(cfg, key, default=None)
        if isinstance(value, str) and not (user_data and key.startswith("data.")) and not Path(absolute(value)).exists():
            raise invalid(key, value, f"no such file or directory (expected {what})")


def all_rule_keys() -> set[str]:
    """Every key some rule checks, in full (`model.hidden`): the keys nettrain reads."""
    keys = {key for key, _, _ in RULES}
    for registry in REGISTRIES:
        own = [rule for entry in registry.entries.values() for rule in entry.rules]
        keys |= {f"{registry.group}.{key}" for key, _, _ in [*registry.common, *own]}
    return keys
