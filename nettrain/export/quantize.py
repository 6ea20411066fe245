"""Smaller ONNX files from an fp32 export, made by onnxruntime's own tools.

int8 comes two ways, the model family's registry entry (`quantize=`) saying which:

- **static** (convolutional nets): weights and activations in int8, as QDQ pairs (QuantizeLinear ->
  DequantizeLinear around each quantized op) that onnxruntime fuses into integer kernels (on x86 its VNNI
  u8 x s8 convolutions). Activations get one uint8 scale each, fixed beforehand from the ranges seen on
  calibration batches of the run's own training data; weights one int8 scale per output channel, since the
  channels of a convolution differ in range by orders of magnitude (one scale for all would flatten the
  small ones to zero). Batch norm is folded into the convolutions first (`quant_pre_process`), so it is
  quantized with them instead of standing in float between two quantized ops.
- **dynamic** (MLPs, text models): weights in int8, activations quantized on the fly per batch from their
  own range, so no calibration is needed; matrix products (MatMul, Gemm) and embedding tables (Gather) are
  quantized, which is where these models' size and time are.

fp16 halves every float weight (onnxruntime's converter, inputs and outputs kept float32 so callers feed the
same arrays). The choices, and what they cost and gain on real data, are in docs/edge.md.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nettrain.errors import UserError, first_line

PRECISIONS = ("int8", "fp16")
METHODS = ("static", "dynamic")
# Calibration methods by name (onnxruntime's CalibrationMethod). Percentile is the default (export.options): it
# sets each activation's range to the 0.001-99.999 % of what calibration saw, so a rare outlier does not widen
# every step of the 256; measured in docs/edge.md, it kept every label of the ResNet-18 where MinMax and Entropy
# changed one, at about twice MinMax's calibration time.
CALIBRATIONS = {"percentile": "Percentile", "minmax": "MinMax", "entropy": "Entropy"}
ACTIVATIONS = ("uint8", "int8")
DYNAMIC_OPS = ("MatMul", "Gemm", "Gather")  # where an MLP's and a text model's weights are: layers, embeddings


class QuantizeError(UserError):
    """onnxruntime could not quantize this model; nothing was written."""

    exit_code = 1


def quantize_onnx(source: Path, target: Path, precision: str, method: str | None = None,
                  calibration: Iterable[torch.Tensor] | None = None, calibration_method: str = "percentile",
                  per_channel: bool = True, keep_float: tuple[str, ...] = (), activations: str = "uint8",
                  input_name: str = "input") -> dict[str, Any]:
    """Write `source` (an fp32 ONNX file) at `precision` to `target`; returns what was done, for the .json.
    int8 needs `method` (static | dynamic) and, when static, `calibration`: batches of model inputs. `per_channel`:
    one weight scale per output channel (else one per tensor); `keep_float`: operator types left in float;
    `activations`: the static activations' type (uint8, or int8 for accelerators that take only int8 x int8)."""
    work = target.with_name(target.name + ".pre.onnx")  # beside the target: same disk, removed after
    started = time.perf_counter()
    try:
        with _quiet():
            if precision == "fp16":
                done = _fp16(source, target)
            elif method == "dynamic":
                done = _dynamic(source, target, per_channel, keep_float)
            elif calibration is None:
                raise UserError("static int8 quantization needs calibration batches")
            else:
                done = _static(source, work, target, calibration, calibration_method, per_channel, keep_float,
                               activations, input_name)
    except (UserError, OSError):
        raise
    except Exception as e:  # noqa: BLE001 - onnxruntime's quantizer raises anything from a graph it cannot handle
        raise QuantizeError(f"cannot quantize this model to {precision}"
                            f"{f' ({method})' if precision == 'int8' else ''}: {first_line(e, 200)}") from None
    finally:
        work.unlink(missing_ok=True)
    return done | {"seconds": round(time.perf_counter() - started, 2)}


def _static(source: Path, work: Path, target: Path, calibration: Iterable[torch.Tensor], how: str, per_channel: bool,
            keep_float: tuple[str, ...], activations: str, input_name: str) -> dict[str, Any]:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(source), str(work))  # folds batch norm into the convolutions, infers shapes
    reader = _Batches(calibration, input_name)
    # uint8 activations x int8 weights by default: the pair x86's VNNI instructions multiply (int8 x int8 runs
    # slower on this CPU, docs/edge.md).
    quantize_static(str(work), str(target), reader, quant_format=QuantFormat.QDQ, per_channel=per_channel,
                    activation_type=QuantType.QUInt8 if activations == "uint8" else QuantType.QInt8,
                    weight_type=QuantType.QInt8,
                    calibrate_method=getattr(CalibrationMethod, CALIBRATIONS[how]),
                    nodes_to_exclude=_nodes_of(work, keep_float))
    if reader.samples == 0:
        raise UserError("no calibration batches: the run's training split is empty")
    return {"method": "static", "format": "QDQ", "weights": f"int8, {_scales(per_channel)}",
            "activations": f"{activations}, one scale per tensor from calibration", "kept_float": list(keep_float),
            "calibration": {"method": how, "batches": reader.batches, "samples": reader.samples}}


def _dynamic(source: Path, target: Path, per_channel: bool, keep_float: tuple[str, ...]) -> dict[str, Any]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    _nodes_of(source, keep_float)  # names an operator the model has, or says which it has
    ops = [op for op in DYNAMIC_OPS if op not in keep_float]
    # Only products whose second operand is a weight (MatMulConstBOnly): attention's activation x activation
    # products would be quantized per batch on both sides, for little gain and some accuracy.
    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, op_types_to_quantize=ops,
                     per_channel=per_channel, extra_options={"MatMulConstBOnly": True})
    return {"method": "dynamic", "weights": f"int8, {_scales(per_channel)} ({', '.join(ops)})",
            "activations": "uint8, quantized per batch from their own range", "kept_float": list(keep_float)}


def _nodes_of(path: Path, op_types: tuple[str, ...]) -> list[str]:
    """The names of the nodes of these operator types in the model at `path`; an op type it lacks is one line."""
    if not op_types:
        return []
    import onnx

    nodes = onnx.load(str(path), load_external_data=False).graph.node
    present = sorted({n.op_type for n in nodes})
    missing = [op for op in op_types if op not in present]
    if missing:
        raise UserError(f"invalid export.keep_float={list(op_types)}: this model has no {', '.join(missing)} "
                        f"operator; its operators: {', '.join(present)}")
    return [n.name for n in nodes if n.op_type in op_types]


def _scales(per_channel: bool) -> str:
    return "one scale per output channel" if per_channel else "one scale per tensor"


def _fp16(source: Path, target: Path) -> dict[str, Any]:
    # onnxruntime's own converter: onnxconverter-common 1.16's leaves a Cast to float32 feeding float16 ops in the
    # graphs of the text models, which onnxruntime then refuses to load.
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    onnx.save(model, str(target))
    return {"method": "fp16", "weights": "float16", "inputs_outputs": "float32 (cast inside the graph)"}


class _Batches:
    """Calibration batches as onnxruntime's CalibrationDataReader asks for them: one {input: array} at a time."""

    def __init__(self, batches: Iterable[torch.Tensor], input_name: str) -> None:
        self.iterator: Iterator[torch.Tensor] = iter(batches)
        self.input_name = input_name
        self.batches = self.samples = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self.iterator, None)
        if x is None:
            return None
        self.batches += 1
        self.samples += len(x)
        return {self.input_name: np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """onnxruntime's quantizer prints its calibration's progress to stdout (which carries the command's result)
    and warns on the root logger of models it thinks are not pre-processed: both dropped (errors still raise)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)
