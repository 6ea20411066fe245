"""How an export is quantized, measured and judged: `nettrain export`'s quantize= and export.* keys, which int8
method a model takes (its registry entry), the data the measuring and calibration read, and when an export is
refused for what it loses."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from nettrain.config.registry import MODELS
from nettrain.config.registry import describe as describe_model
from nettrain.config.user_code import confirm
from nettrain.data.base import Data
from nettrain.errors import UserError, invalid, one_of
from nettrain.evaluation.checkpoint import check_data_keys, rebuild_data
from nettrain.export.quantize import ACTIVATIONS, CALIBRATIONS, METHODS, PRECISIONS
from nettrain.inference.load import CONFIRM_HOW, Loaded

log = logging.getLogger("nettrain")


@dataclass(frozen=True)
class ExportOptions:
    """What `nettrain export` was asked beyond the format (its quantize= and export.KEY=VALUE arguments)."""

    quantize: str | None = None          # None (fp32) | int8 | fp16: ONNX files only
    method: str | None = None            # int8: static | dynamic; None: the model family's registry entry
    calibration: int = 16                # static int8: batches of the run's training data it calibrates on
    calibration_method: str = "percentile"  # percentile | minmax | entropy (onnxruntime's calibrators)
    per_channel: bool = True             # int8 weights: one scale per output channel (false: one per tensor)
    keep_float: tuple[str, ...] = ()     # int8: operator types left in float (e.g. ("Gemm",): the head)
    activations: str = "uint8"           # static int8 activations: uint8 (x86 VNNI's), int8 (accelerators wanting s8s8)
    max_drop: float = 1.0                # refuse an export losing more: points of accuracy (regression: % of RMSE)
    force: bool = False                  # keep an export that loses more, or whose accuracy cannot be measured
    threads: int | None = None           # CPU threads the speed is measured on (None: the cores this process may use)
    data: dict[str, Any] | None = None   # data.KEY=VALUE: where the run's data is now, when it moved

    def check(self, fmt: str) -> ExportOptions:
        """These options, or the one-line error for the first bad one."""
        if self.quantize is not None:
            one_of("quantize", self.quantize, ("none", *PRECISIONS))
            if self.quantize != "none" and fmt != "onnx":
                raise invalid("quantize", self.quantize, f"quantized files are ONNX (onnxruntime's quantization); "
                                                         f"allowed with format={fmt}: none")
        if self.method is not None:
            one_of("export.method", self.method, METHODS)
        one_of("export.calibration_method", self.calibration_method, tuple(CALIBRATIONS))
        one_of("export.activations", self.activations, ACTIVATIONS)
        for key, value, at_least in (("export.calibration", self.calibration, 1), ("export.threads", self.threads, 1)):
            if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and value >= at_least):
                raise invalid(key, value, f"must be an integer >= {at_least}")
        if isinstance(self.max_drop, bool) or not isinstance(self.max_drop, (int, float)) or not self.max_drop >= 0:
            raise invalid("export.max_drop", self.max_drop, "must be a number >= 0 (points of accuracy; for regression, "
                                                            "percent of RMSE)")
        for key, value in (("export.force", self.force), ("export.per_channel", self.per_channel)):
            if not isinstance(value, bool):
                raise invalid(key, value, "allowed: true, false")
        if not (isinstance(self.keep_float, tuple) and all(isinstance(op, str) and op.isidentifier() for op in self.keep_float)):
            shown = list(self.keep_float) if isinstance(self.keep_float, tuple) else self.keep_float
            raise invalid("export.keep_float", shown, "must be a list of ONNX operator types, e.g. [Gemm,Add]")
        return self

    @property
    def precision(self) -> str | None:
        """int8 | fp16, or None for a float32 export."""
        return None if self.quantize in (None, "none") else self.quantize


def int8_method(loaded: Loaded, options: ExportOptions) -> str:
    """static or dynamic: export.method, else what the model family's registry entry says (`quantize=`)."""
    if options.method is not None:
        return options.method
    model = loaded.config.model
    entry = None if "_target_" in model else MODELS.entries.get(model.get("name"))
    if entry is None or entry.quantize is None:
        raise UserError(f"cannot quantize model {describe_model(model)} to int8: nettrain's registry says nothing of how "
                        f"(a model of your own); choose with export.method=static (convolutions) or dynamic "
                        f"(matmuls, embeddings), or export quantize=fp16")
    return entry.quantize


def measurement_data(loaded: Loaded, options: ExportOptions, confirmed: dict[str, Any] | None) -> tuple[Data | None, str | None]:
    """The run's data as training saw it, for calibration (its training split) and measuring (its val split):
    (the data, None), or (None, why it cannot be rebuilt: moved away, code not confirmed, ...). The training images
    are read without augmentation, so calibration sees them as they are."""
    overrides = dict(options.data or {})
    check_data_keys(loaded.config.data, overrides)  # a typo is the user's to fix, not a reason to export unmeasured
    if "augment" in loaded.config.data:
        overrides.setdefault("augment", "none")
    try:
        confirm(OmegaConf.to_container(loaded.config), {**(confirmed or {}), "data": options.data or {}},
                ("data", "loss"), str(loaded.path), CONFIRM_HOW)
        return rebuild_data(loaded, overrides), None
    except UserError as e:
        return None, str(e)


def refusal(measured: dict[str, Any], name: str, options: ExportOptions) -> str | None:
    """Why the file `name` of `measured` is refused (it loses more than export.max_drop), or None."""
    figures = measured["files"][name]
    lost = figures.get("drop")
    if options.force or lost is None or lost <= options.max_drop:
        return None
    metric, reference = measured["metric"], measured["pytorch"][measured["metric"]]
    if metric == "rmse":
        how = f"val RMSE {figures[metric]:.4g} is {lost:.2f} % above PyTorch's {reference:.4g}"
    else:
        how = f"val accuracy {figures[metric]:.4f} is {lost:.2f} points below PyTorch's {reference:.4f}"
    return f"the {name} export is refused: its {how} (export.max_drop={options.max_drop:g})"


def refused_path(target: Path) -> Path:
    """Where a refused export is left aside: best.int8.onnx -> best.int8.refused.onnx (its .json beside it)."""
    suffix = ".torchscript.pt" if target.name.endswith(".torchscript.pt") else target.suffix
    return target.with_name(target.name[: -len(suffix)] + ".refused" + suffix)
