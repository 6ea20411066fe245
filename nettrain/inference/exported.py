"""An exported ONNX file used like a checkpoint: onnxruntime runs it behind an `nn.Module` (tensors in, tensors
out), and the .json that `nettrain export` writes beside it carries what a checkpoint would (the DataSpec with its
preprocessing and class names, the run's resolved config, the binary decision). So eval, predict and serve need
the file and its .json, not the run dir or the model's code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nettrain.errors import UserError, first_line

SUFFIX = ".onnx"
INFO_KEYS = ("spec", "config", "input_name", "output_name")  # what loading needs from the .json


def is_exported(path: str | Path) -> bool:
    return str(path).lower().endswith(SUFFIX)


def info_path(model_file: Path) -> Path:
    """The .json beside an exported file: best.int8.onnx -> best.int8.json."""
    return model_file.with_suffix(".json")


def session(path: Path, threads: int | None = None) -> Any:
    """An onnxruntime CPU session of `path` (`threads`: intra-op threads; None: onnxruntime's default, every core);
    a file onnxruntime cannot load is one line."""
    try:  # an optional extra (nettrain[onnx]): named with the line that installs it when missing
        import onnxruntime
    except ImportError:
        raise UserError("running an .onnx file needs onnxruntime: pip install 'nettrain[onnx]'") from None
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: its warnings are about graph rewrites it does by itself
    if threads is not None:
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own kinds (InvalidProtobuf, Fail, ...)
        raise UserError(f"cannot load {path}: not a complete ONNX file onnxruntime can run: {first_line(e, 200)}") from None


class OnnxModule(nn.Module):
    """An ONNX file run by onnxruntime on the CPU, called as the PyTorch model it came from: a batch tensor in
    (float images or rows, int64 token ids), the float32 outputs out."""

    def __init__(self, path: Path, threads: int | None = None, input_name: str = "input", output_name: str = "output") -> None:
        super().__init__()
        self.path, self.input_name, self.output_name = path, input_name, output_name
        self.session = session(path, threads)
        declared = {i.name: i.type for i in self.session.get_inputs()}
        if input_name not in declared:
            raise UserError(f"cannot use {path}: it has no input named {input_name!r} (its inputs: {', '.join(declared)})")
        self.dtype = np.int64 if declared[input_name] == "tensor(int64)" else np.float32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Contiguous and of the file's own dtype: a channels_last batch or a float64 row would be refused.
        array = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=self.dtype)
        (out,) = self.session.run([self.output_name], {self.input_name: array})
        return torch.from_numpy(out).float()


def read_info(model_file: Path) -> dict[str, Any]:
    """The .json beside `model_file`, with the tokenizer of a text model read back into its preprocessing;
    a missing or foreign one is one line."""
    path = info_path(model_file)
    if not path.is_file():
        raise UserError(f"cannot use {model_file}: no {path.name} beside it (nettrain export writes the model's "
                        f"preprocessing and class names there; copy it with the file)")
    try:
        info = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path}: not valid JSON ({first_line(e, 120)})") from None
    missing = [key for key in INFO_KEYS if not isinstance(info, dict) or key not in info]
    if missing:
        raise UserError(f"cannot use {model_file}: {path.name} lacks {', '.join(missing)} (written by an older nettrain "
                        f"export, or not by nettrain; export the checkpoint again)")
    pre = info["spec"].get("preprocessing", {})
    if "tokenizer_file" in pre:
        tokenizer = model_file.parent / pre.pop("tokenizer_file")
        if not tokenizer.is_file():
            raise UserError(f"cannot use {model_file}: its tokenizer {tokenizer.name} is not beside it (copy it with the file)")
        pre["tokenizer"] = tokenizer.read_text()
    return info


def decision_state(info: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint's decision (positive index, threshold) back from the .json's description of it."""
    decision, names = info.get("decision"), info["spec"].get("class_names", [])
    if not decision or decision.get("positive_class") not in names:
        return None
    return {"positive_index": names.index(decision["positive_class"]), "threshold": decision.get("threshold")}
