"""A checkpoint as an ONNX or TorchScript file for serving and edge devices, in float32 or (ONNX) int8 or fp16.

The model is exported with a dynamic batch size, then run on sample inputs of other batch sizes next to the
PyTorch model; only when the outputs agree (max abs diff <= TOLERANCE, relative to the outputs' scale where
they exceed 1) does it go on: quantized when asked (export.quantize), measured (export.measure: size, val
accuracy next to PyTorch's, CPU latency and throughput), then moved into place, or left aside when it loses more
accuracy than allowed (export.options), with what a program needs to use it in a JSON file beside it.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from nettrain.config.paths import absolute
from nettrain.config.registry import describe as describe_model
from nettrain.errors import UserError, first_line, invalid, one_of
from nettrain.export.measure import THROUGHPUT_BATCH, measure
from nettrain.export.options import ExportOptions, int8_method, measurement_data, refusal, refused_path
from nettrain.export.quantize import quantize_onnx
from nettrain.files import atomic_write_text
from nettrain.inference.decision import Decision
from nettrain.inference.exported import OnnxModule, info_path, is_exported
from nettrain.inference.load import Loaded, load_model
from nettrain.runtime import available_cores

log = logging.getLogger("nettrain")

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
TOLERANCE = 1e-4
CHECK_BATCH_SIZES = (1, 3)  # differ from the export's batch of 2: proves the batch size is dynamic
INPUT_NAME, OUTPUT_NAME = "input", "output"


class ExportCheckError(UserError):
    """The exported model does not compute what the PyTorch model does; nothing was written."""

    exit_code = 1


def export_checkpoint(ckpt: str | Path, fmt: str = "onnx", output: str | Path | None = None,
                      confirmed: dict[str, Any] | None = None,
                      options: ExportOptions | None = None) -> tuple[Path, dict[str, Any]]:
    """Export, check, quantize (`options.quantize`), measure and write the model and its JSON; returns the model's
    path and what the JSON holds. An export losing more than `options.max_drop` is left aside under a name saying so
    and raises ExportRefused. `confirmed`: the `_target_`s the user names (see `load_model`)."""
    one_of("format", fmt, tuple(FORMATS))
    options = (options or ExportOptions()).check(fmt)
    if is_exported(ckpt):
        raise invalid("ckpt", str(ckpt), "this is an exported file already: export a checkpoint (.pt) or a run dir")
    loaded = load_model(ckpt, "cpu", confirmed)
    precision = options.precision
    method = int8_method(loaded, options) if precision == "int8" else None
    target = _output_path(loaded, fmt, output, precision)
    data, unavailable = measurement_data(loaded, options, confirmed)
    try:
        _require_data(precision, method, unavailable, options)
        target.parent.mkdir(parents=True, exist_ok=True)
        work = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        shutil.rmtree(work, ignore_errors=True)  # a killed export of this pid's
        work.mkdir()
        try:
            fp32 = work / ("model" + FORMATS[fmt])
            diff, tolerance = _export_checked(loaded, fmt, fp32)
            files = {f"fp32 {fmt}": fp32}
            quantization = None
            if precision is not None:
                files[f"{precision} onnx"] = work / f"model.{precision}.onnx"
                quantization = _quantize(fp32, files[f"{precision} onnx"], precision, method, data, options)
            runners = {name: (path, _runner(path, fmt, options.threads or available_cores())) for name, path in files.items()}
            measured = measure(loaded, runners, data, unavailable, options.threads or available_cores(),
                               sample_input(loaded.spec, THROUGHPUT_BATCH, 0, torch.Generator().manual_seed(0)))
            name = list(files)[-1]
            refused = refusal(measured, name, options)
            destination = refused_path(target) if refused else target
            os.replace(files[name], destination)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    finally:
        if data is not None:
            data.close()
    info = describe(loaded, fmt, destination, diff, tolerance) | {
        "quantize": precision, "quantization": quantization,
        "measured": measured | {"file": name, "max_drop": options.max_drop, "forced": options.force, "refused": bool(refused)}}
    _write_info(loaded, destination, info)
    if refused:
        raise ExportRefused(f"{refused}; left aside as {destination} (export.force=true keeps it)", destination, info)
    for stale in (refused_path(target), info_path(refused_path(target))):  # a refused try before this one
        stale.unlink(missing_ok=True)
    return target, info


class ExportRefused(ExportCheckError):
    """The export loses more accuracy than allowed: it is left aside (`path`), with its figures (`info`)."""

    def __init__(self, message: str, path: Path, info: dict[str, Any]) -> None:
        super().__init__(message)
        self.path, self.info = path, info


def _require_data(precision: str | None, method: str | None, unavailable: str | None, options: ExportOptions) -> None:
    """Static int8 cannot calibrate without the run's data, and a quantized file unmeasured is refused unless forced."""
    if unavailable is None or precision is None:
        if unavailable is not None:
            log.warning("the export's accuracy is not measured: %s", unavailable)
        return
    how = "give data.KEY=VALUE where the data is now (e.g. data.root=DIR or data.path=FILE)"
    if method == "static":
        raise UserError(f"cannot calibrate the int8 export on the run's training data: {unavailable}; {how}")
    if not options.force:
        raise UserError(f"cannot measure the {precision} export's accuracy: {unavailable}; {how}, or "
                        f"export.force=true to export it unmeasured")
    log.warning("the %s export's accuracy is not measured (export.force=true): %s", precision, unavailable)


def _export_checked(loaded: Loaded, fmt: str, path: Path) -> tuple[float, float]:
    """Write the fp32 file to `path` and check it against the PyTorch model at other batch sizes (and lengths);
    (max abs diff, tolerance), or ExportCheckError."""
    generator = torch.Generator().manual_seed(0)
    example = sample_input(loaded.spec, 2, 0, generator)
    (_onnx if fmt == "onnx" else _torchscript)(loaded.model, example, path, _is_text(loaded.spec))
    diff, scale = export_error(loaded.model, _runner(path, fmt), [sample_input(loaded.spec, n, i + 1, generator)
                                                                 for i, n in enumerate(CHECK_BATCH_SIZES)])
    # float32 keeps ~7 significant digits: outputs of 1e3 agree to 1e-4 relative, not absolute.
    tolerance = TOLERANCE * max(1.0, scale)
    if not diff <= tolerance:
        raise ExportCheckError(f"the {fmt} export does not match the PyTorch model: max abs diff {diff:.3g} > "
                               f"{tolerance:.3g} on sample inputs; nothing written")
    return diff, tolerance


def _quantize(fp32: Path, target: Path, precision: str, method: str | None, data: Any,
              options: ExportOptions) -> dict[str, Any]:
    batches = None
    if method == "static":
        log.info("calibrating the int8 export on %d batch(es) of the training split (%s)", options.calibration,
                 options.calibration_method)
        batches = (x for x, _ in itertools.islice(data.train.batches(0), options.calibration))
    return quantize_onnx(fp32, target, precision, method, batches, options.calibration_method, options.per_channel,
                         options.keep_float, options.activations, INPUT_NAME)


def _runner(path: Path, fmt: str, threads: int | None = None) -> torch.nn.Module:
    """The exported file as a module to call like the PyTorch model: onnxruntime for ONNX, TorchScript's loader."""
    if fmt == "onnx":
        return OnnxModule(path, threads, INPUT_NAME, OUTPUT_NAME)
    with _jit_deprecation_silenced():
        return torch.jit.load(str(path), map_location="cpu")


def _write_info(loaded: Loaded, model_file: Path, info: dict[str, Any]) -> None:
    """The .json beside the model (and a text model's tokenizer, ready for tokenizers.Tokenizer.from_file)."""
    if "tokenizer" in loaded.spec.preprocessing:
        atomic_write_text(model_file.parent / info["preprocessing"]["tokenizer_file"], loaded.spec.preprocessing["tokenizer"])
    atomic_write_text(info_path(model_file), json.dumps(info, indent=2) + "\n")


def _output_path(loaded: Loaded, fmt: str, output: str | Path | None, precision: str | None = None) -> Path:
    name = loaded.path.stem + (f".{precision}" if precision else "") + FORMATS[fmt]
    if output is None:
        return loaded.run_dir / "export" / name
    path = Path(absolute(str(output)))
    # A folder unless it names a file of the format (model.onnx, model.pt): `output=shipped` is made as one.
    return path / name if path.is_dir() or path.suffix.lower() != "." + FORMATS[fmt].rsplit(".", 1)[-1] else path


def _is_text(spec: Any) -> bool:
    """Inputs of token ids, of any length up to the longest the model takes: a text classifier's or a language model's."""
    return spec.preprocessing.get("kind") in ("text", "text_lm")


def sample_input(spec: Any, batch: int, variant: int, generator: torch.Generator) -> torch.Tensor:
    """A batch like the model's inputs: random values, or for text random token ids of a length
    that differs per variant (proving the sequence axis dynamic), for a classifier the first row padded at the end."""
    if not _is_text(spec):
        return torch.randn(batch, *spec.input_shape, generator=generator)
    pre = spec.preprocessing
    length = min((8, 5, 13)[variant % 3], spec.input_shape[0])
    ids = torch.randint(0, pre["vocab_size"], (batch, length), generator=generator)
    if spec.task == "lm":  # no padding: every position is a token of the text
        return ids
    ids[ids == pre["pad_id"]] = (pre["pad_id"] + 1) % pre["vocab_size"]
    ids[0, length // 2 + 1:] = pre["pad_id"]
    return ids


def _onnx(model: torch.nn.Module, example: torch.Tensor, path: Path, text: bool = False) -> None:
    try:  # optional extras (nettrain[onnx]): named with the line that installs them when missing
        import onnx  # noqa: F401  (the exporter needs onnx and onnxscript; the check needs onnxruntime)
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise UserError(f"format=onnx needs the {e.name} package: pip install onnx onnxscript onnxruntime") from None
    for name in ("onnxscript", "onnx_ir"):  # their optimizer passes log every step at INFO
        logging.getLogger(name).setLevel(logging.WARNING)
    # A language model's positions end at its block size: the sequence axis is dynamic up to there.
    longest = getattr(model, "block_size", None)
    sequence = torch.export.Dim("sequence", max=longest) if longest else torch.export.Dim("sequence")
    try:
        torch.onnx.export(model, (example,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_shapes=({0: torch.export.Dim("batch"), **({1: sequence} if text else {})},),
                          dynamo=True, verbose=False,
                          external_data=False)  # one self-contained file (models up to protobuf's 2 GB)
    except Exception as e:  # noqa: BLE001 - the exporter raises many kinds; the first line names the op
        raise ExportCheckError(f"torch.onnx.export failed: {first_line(e)}") from None


def _torchscript(model: torch.nn.Module, example: torch.Tensor, path: Path, text: bool = False) -> None:
    with _jit_deprecation_silenced(), warnings.catch_warnings():
        # The tracer warns of every Python number read off a tensor's shape (a memory's row count, a mask's
        # size): constants of this model, and the export is checked against PyTorch on other batch sizes below.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # A Transformer's graph differs between its trace and jit's re-trace (the attention fast path);
        # the export is checked against PyTorch at other batch sizes and lengths below instead.
        traced = torch.jit.trace(model, example, check_trace=not text)
    traced.save(str(path))


@contextmanager
def _jit_deprecation_silenced() -> Iterator[None]:
    """TorchScript is deprecated in favour of torch.export, but it is still what LibTorch (C++) and
    PyTorch Mobile load, so exporting it is deliberate: its warnings would only confuse."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.\w+` is deprecated")
        yield


def export_error(model: torch.nn.Module, run: Any, inputs: list[torch.Tensor]) -> tuple[float, float]:
    """(the largest |exported - PyTorch|, the largest |PyTorch output|) over the outputs for `inputs`."""
    diff = scale = 0.0
    with torch.inference_mode():
        for x in inputs:
            expected = model(x)
            diff = max(diff, float((run(x) - expected).abs().max()))
            scale = max(scale, float(expected.abs().max()))
    return diff, scale


def describe(loaded: Loaded, fmt: str, target: Path, diff: float, tolerance: float) -> dict[str, Any]:
    """The JSON beside the model: everything needed to feed it and read its outputs."""
    spec = loaded.spec
    text = _is_text(spec)
    preprocessing = spec.preprocessing
    if "tokenizer" in preprocessing:  # the tokenizer goes to its own file: a JSON string inside this JSON would be unreadable
        preprocessing = {k: v for k, v in preprocessing.items() if k != "tokenizer"} | {
            "tokenizer_file": target.name.split(".")[0] + ".tokenizer.json"}
    return {
        "format": fmt, "model_file": target.name, "checkpoint": str(loaded.path), "model": describe_model(loaded.config.model),
        "input_name": INPUT_NAME, "output_name": OUTPUT_NAME,
        "input_shape": ["batch", "sequence"] if text else ["batch", *spec.input_shape],
        "dtype": "int64" if text else "float32", "task": spec.task, "class_names": spec.class_names,
        "outputs": _outputs(spec),
        **({"max_sequence": spec.input_shape[0]} if spec.task == "lm" else {}),
        # trainer.tta=flip: the exported model averages each image's logits with its mirror's, as eval and predict do.
        "tta": loaded.config.get("trainer", {}).get("tta"),
        "preprocessing": preprocessing, "max_abs_diff": diff, "tolerance": tolerance,
        # What `nettrain eval/predict/serve FILE.onnx` rebuild the model's inputs and data from (inference.exported).
        "spec": {**spec.to_dict(), "preprocessing": preprocessing}, "config": OmegaConf.to_container(loaded.config),
        **({"decision": _decision(loaded)} if spec.task == "classification" and spec.num_classes == 2 else {}),
    }


def _outputs(spec: Any) -> str:
    if spec.task == "regression":
        return "one value per sample"
    if spec.task == "lm":
        return ("next-token logits [batch, sequence, vocab_size]: at each position, a score per token id for the token "
                "after it (ids: preprocessing.chars in order, or the tokenizer file); softmax gives probabilities")
    return "logits, one per class in class_names order; softmax gives probabilities"


def _decision(loaded: Loaded) -> dict[str, Any]:
    """How the trained binary classifier decides between its two classes, for the exported model's users."""
    d = Decision.from_checkpoint(loaded.decision, loaded.spec)
    other = d.class_names[1 - d.positive]
    return {"positive_class": d.positive_class, "threshold": d.fixed,
            "rule": f"{d.positive_class} when softmax(output)[{d.positive}] >= threshold, else {other}"
            if d.fixed is not None else "argmax of the outputs (no threshold)"}
