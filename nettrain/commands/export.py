"""`nettrain export`: a checkpoint as an ONNX or TorchScript file (export.formats), checked against PyTorch,
quantized to int8 or fp16 when asked (export.quantize) and measured (export.measure)."""

from __future__ import annotations

import logging
from typing import Any

from nettrain.commands.args import parse_args, run_command
from nettrain.config.suggest import did_you_mean
from nettrain.errors import UserError

log = logging.getLogger("nettrain")

USAGE = """
usage: nettrain export [ckpt=]PATH [format=onnx|torchscript]
                       [quantize=int8|fp16] [output=FILE|DIR]
                       [export.KEY=VALUE ...] [data.KEY=VALUE ...]
                       [model._target_=PATH]

Export a checkpoint (a .pt file, or a run dir for its checkpoints/best.pt) with
a dynamic batch size. The export is checked against the PyTorch model on sample
inputs (max abs diff reported, at most 1e-4, or 1e-4 x the largest output where
outputs exceed 1) before anything is written. Beside the model, a .json file of
the same name holds what a program needs to use it: input shape, preprocessing
(image size, channels, mean, std, or the tabular statistics), class names, the
input/output names, for a binary classifier its decision, and the run's config:
nettrain eval, predict and serve take FILE.onnx with its .json alone.

quantize=int8 (ONNX): static for convolutional nets (weights and activations,
calibrated on batches of the run's training data), dynamic for MLPs and text
models (weights; activations per batch), as the model's family says. fp16
halves the weights. Every export is measured, printed and recorded in its
.json: file size, accuracy (RMSE for regression) on the run's val split next
to PyTorch's, CPU latency (p50/p95 at batch 1) and throughput (batch 32) of
the fp32 file and of the quantized one. An export losing more than
export.max_drop is refused (exit 1), left aside as NAME.refused.onnx.

  export.calibration=16   static int8: batches of training data to calibrate on
  export.calibration_method=percentile   or minmax, entropy
  export.method=static|dynamic       int8 method (default: the model family's)
  export.per_channel=true            int8 weights: a scale per output channel
  export.keep_float=[Gemm,...]       int8: operator types left in float
  export.activations=uint8           static int8: or int8 (for accelerators)
  export.max_drop=1       points of accuracy (regression: percent of RMSE)
  export.force=false      true: keep an export that loses more, or one whose
                          data (to measure it) is gone
  export.threads=N        CPU threads for the timings (default: all usable)
  data.KEY=VALUE          where the run's data is now (e.g. data.root=DIR)

Default output: RUN_DIR/export/CKPT_NAME.onnx (best.int8.onnx, best.fp16.onnx,
or .torchscript.pt); output= a FILE.onnx (.pt), else a folder. A checkpoint of
your own model (model._target_) is rebuilt only when you name the same
model._target_ here: code named by a checkpoint is never imported on its own.

examples:
  nettrain export outputs/2025-01-31/12-00-00 format=onnx
  nettrain export outputs/2025-01-31/12-00-00 quantize=int8
  nettrain export outputs/2025-01-31/12-00-00 format=torchscript output=model.pt
"""

DEFAULTS: dict[str, Any] = {"ckpt": None, "format": "onnx", "quantize": None, "output": None}
# export.KEY: the ExportOptions field it sets.
EXPORT_KEYS = ("calibration", "calibration_method", "method", "per_channel", "keep_float", "activations", "max_drop",
               "force", "threads")


def _options(args: dict[str, Any]) -> dict[str, Any]:
    """ExportOptions' fields from the quantize= and export.KEY=VALUE arguments; an unknown key is one line."""
    given = args.get("export") or {}
    for key in given:
        if key not in EXPORT_KEYS:
            raise UserError(f"unknown argument export.{key}=...;{did_you_mean(key, list(EXPORT_KEYS))} allowed: "
                            f"{', '.join('export.' + k for k in EXPORT_KEYS)}")
    if "keep_float" in given:  # export.keep_float=Gemm or [Gemm,Add]
        ops = given["keep_float"]
        given["keep_float"] = tuple(ops) if isinstance(ops, list) else (ops,) if isinstance(ops, str) else ops
    quantize = args["quantize"]
    return {**given, "quantize": None if quantize is None else str(quantize), "data": args.get("data")}


def _export(argv: list[str]) -> int:
    args = parse_args(argv, DEFAULTS, required=("ckpt",), paths=("ckpt", "output"),
                      prefixes=("model.", "data.", "loss.", "export."), positional="ckpt")
    options = _options(args)
    # torch: once the arguments are parsed
    from nettrain.export.formats import CHECK_BATCH_SIZES, ExportRefused, export_checkpoint
    from nettrain.export.measure import table
    from nettrain.export.options import ExportOptions

    try:
        target, info = export_checkpoint(args["ckpt"], args["format"], args["output"],
                                         {"model": args.get("model"), "loss": args.get("loss")}, ExportOptions(**options))
    except ExportRefused as e:  # its figures first: they say what it would cost
        for line in table(e.info["measured"]):
            log.info("%s", line)
        raise
    log.info("checked against PyTorch at batch sizes %s: max abs diff %.3g (tolerance %g)%s",
             ", ".join(map(str, CHECK_BATCH_SIZES)), info["max_abs_diff"], info["tolerance"],
             " (the fp32 graph; the quantized file is judged on the val split below)" if info["quantize"] else "")
    for line in table(info["measured"]):
        log.info("%s", line)
    log.info("preprocessing, class names and figures: %s", target.with_suffix(".json"))
    print(target)  # stdout: the file, for scripts
    return 0


def main(argv: list[str]) -> int:
    return run_command(_export, argv, USAGE)
