"""`nettrain export`: a checkpoint as an ONNX or TorchScript file (export.formats), checked against PyTorch."""

from __future__ import annotations

import logging
from typing import Any

from nettrain.commands.args import parse_args, run_command

log = logging.getLogger("nettrain")

USAGE = """
usage: nettrain export [ckpt=]PATH [format=onnx|torchscript] [output=FILE|DIR]
                       [model._target_=PATH]

Export a checkpoint (a .pt file, or a run dir for its checkpoints/best.pt) with
a dynamic batch size. The export is checked against the PyTorch model on sample
inputs (max abs diff reported, at most 1e-4, or 1e-4 x the largest output where
outputs exceed 1) before anything is written. Beside the model, a .json file of
the same name holds what a program needs to use it: input shape, preprocessing
(image size, channels, mean, std, or the tabular statistics), class names, the
input/output names, and for a binary classifier its decision (the threshold on
its rare class's probability, or argmax).

Default output: RUN_DIR/export/CKPT_NAME.onnx (or .torchscript.pt). A checkpoint
of your own model (model._target_) is rebuilt only when you name the same
model._target_ here: code named by a checkpoint is never imported on its own.

examples:
  nettrain export outputs/2025-01-31/12-00-00 format=onnx
  nettrain export outputs/2025-01-31/12-00-00 format=torchscript output=model.pt
"""

DEFAULTS: dict[str, Any] = {"ckpt": None, "format": "onnx", "output": None}


def _export(argv: list[str]) -> int:
    args = parse_args(argv, DEFAULTS, required=("ckpt",), paths=("ckpt", "output"), prefixes=("model.",), positional="ckpt")
    from nettrain.export.formats import CHECK_BATCH_SIZES, export_checkpoint  # torch: once the arguments are parsed

    target, info = export_checkpoint(args["ckpt"], args["format"], args["output"], {"model": args.get("model")})
    log.info("checked against PyTorch at batch sizes %s: max abs diff %.3g (tolerance %g)",
             ", ".join(map(str, CHECK_BATCH_SIZES)), info["max_abs_diff"], info["tolerance"])
    log.info("preprocessing and class names: %s", target.with_suffix(".json"))
    print(target)  # stdout: the file, for scripts
    return 0


def main(argv: list[str]) -> int:
    return run_command(_export, argv, USAGE)
