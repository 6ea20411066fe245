"""What a config group can choose by name: the models, data sources and losses, one registry each.

Each entry says what it is: the function that builds it (a "module:function" string, imported only when
chosen, so checking a config never imports torch), the rules of its own config keys, the inputs it takes,
the weights it can start from, a step before any data is read, and how it exports. Every command reads
these entries instead of asking `if name == ...`.

To add a model: write its builder `(cfg, spec) -> nn.Module` in nettrain/models/, add configs/model/NAME.yaml,
and register it below with its keys' rules. A data source: `build(cfg, ctx) -> Data` in nettrain/data/,
configs/data/NAME.yaml, an entry in DATA. A loss: `(cfg, spec, weight) -> nn.Module` in
nettrain/models/losses.py, configs/loss/NAME.yaml, an entry in LOSSES.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from nettrain.config.checks import BOOLEAN, FRACTION, Rule, int_list, integer, name, names, number, numbers, one_of, optional
from nettrain.config.paths import absolute
from nettrain.errors import invalid

# The largest data.image_size: 8x the 224-299 px that ImageNet models are built for; a batch of 32 such images
# is 1.6 GB of floats already.
MAX_IMAGE_SIZE = 2048


@dataclass(frozen=True)
class Entry:
    """One model, data source or loss a config can name."""

    name: str
    builder: str                          # "package.module:function", imported only when chosen
    rules: tuple[Rule, ...] = ()          # checks of its own keys, each named within its group ("hidden")
    inputs: tuple[str, ...] = ()          # data kinds it takes (models) or gives (data): image, tabular, text
    weights: str | None = None            # what model.pretrained starts it from: imagenet, timm
    prepare: str | None = None            # "module:function" of the config, run before any data is read
    label: str | None = None              # the key whose value names it in messages: timm's arch -> timm:convnext_nano
    export: tuple[str, ...] = ("onnx", "torchscript")
    quantize: str | None = None           # how an int8 export quantizes it: static (convolutions), dynamic (matmuls)
    names_or_paths: tuple[str, ...] = ()  # keys taking a local path or a name (a Hugging Face model's): an existing
                                          # path is recorded absolute; a name (a keyword) never is

    def load(self) -> Callable[..., Any]:
        return _load(self.builder)

    def load_prepare(self) -> Callable[..., Any] | None:
        return _load(self.prepare) if self.prepare else None


def _load(path: str) -> Callable[..., Any]:
    module, function = path.split(":")
    return getattr(importlib.import_module(module), function)


class Registry:
    """The entries of one config group, by name. `common` rules apply to every entry (an entry's own rule for
    the same key replaces it); a config with a `_target_` (the user's own code) gets only the common rules of
    `user_keys`, the keys nettrain reads there: its other keys are the callable's arguments, passed as they are."""

    def __init__(self, group: str, common: tuple[Rule, ...] = (), user_keys: tuple[str, ...] = ()) -> None:
        self.group, self.common, self.user_keys = group, common, user_keys
        self.entries: dict[str, Entry] = {}

    def register(self, name: str, builder: str, **about: Any) -> Entry:
        self.entries[name] = entry = Entry(name, builder, **about)
        return entry

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def names(self) -> list[str]:
        return list(self.entries)

    def get(self, name: Any) -> Entry:
        if name not in self.entries:
            raise invalid(f"{self.group}.name", name, f"allowed: {', '.join(self.entries)}, or a _target_ (your own code)")
        return self.entries[name]

    def rules_for(self, node: Mapping[str, Any]) -> list[Rule]:
        """The rules of a config of this group (its `name`'s entry, or the user's own `_target_`)."""
        if "_target_" in node:
            return [rule for rule in self.common if rule[0] in self.user_keys]
        own = self.get(node.get("name")).rules
        replaced = {key for key, _, _ in own}
        return [rule for rule in self.common if rule[0] not in replaced] + list(own)


def names_or_paths(cfg: Mapping[str, Any]) -> list[str]:
    """The keys of the chosen model and data source that take a local path or a name ("data.tokenizer" of
    data=text: a tokenizer.json or a Hugging Face model); a user's own code (`_target_`) has none."""
    keys = []
    for registry in (MODELS, DATA):
        node = cfg.get(registry.group) or {}
        entry = registry.entries.get(node.get("name")) if "_target_" not in node else None
        keys += [f"{registry.group}.{key}" for key in (entry.names_or_paths if entry else ())]
    return keys


def describe(model: Mapping[str, Any]) -> str:
    """The model a config builds, for messages and records: `cnn`, `timm:convnext_nano`, `mypkg.nets.TinyNet`."""
    if "_target_" in model:
        return str(model["_target_"])
    entry = MODELS.entries.get(model.get("name"))
    return f"{entry.name}:{model.get(entry.label)}" if entry is not None and entry.label else str(model.get("name"))


def _state_dict_file(v: Any) -> bool:
    return v in (None, "imagenet") or (isinstance(v, str) and os.path.isfile(absolute(v)))


POSITIVE = (integer(at_least=1), "must be an integer >= 1")

MODELS = Registry("model", common=(
    ("dropout", *FRACTION),
    ("freeze", one_of(None, "backbone"), "allowed: null, backbone"),
    ("pretrained", _state_dict_file, "allowed: null, imagenet, or the path of a state-dict file"),
), user_keys=("name", "dropout", "init_from", "pretrained", "freeze"))

MODELS.register("mlp", "nettrain.models.net:mlp", inputs=("image", "tabular"), quantize="dynamic", rules=(
    ("hidden", int_list, "must be a non-empty list of integers >= 1, e.g. [256,128]"),
    ("activation", one_of("relu", "gelu", "tanh", "sigmoid", "silu"), "allowed: relu, gelu, tanh, sigmoid, silu"),
    ("memory", *BOOLEAN),
))
MODELS.register("cnn", "nettrain.models.vision:cnn", inputs=("image",), quantize="static", rules=(
    ("channels", int_list, "must be a non-empty list of integers >= 1, e.g. [32,64]"),
    ("convs_per_stage", *POSITIVE),
    ("kernel_size", lambda v: integer(at_least=1)(v) and v % 2 == 1, "must be an odd integer >= 1"),
    ("pool", one_of("max", "avg"), "allowed: max, avg"),
))
for depth in (18, 34, 50):
    MODELS.register(f"resnet{depth}", f"nettrain.models.vision:resnet{depth}", inputs=("image",), weights="imagenet",
                    prepare="nettrain.models.weights:fetch_pretrained", quantize="static")
MODELS.register("resnet9", "nettrain.models.vision:resnet9", inputs=("image",), quantize="static", rules=(
    ("channels", lambda v: int_list(v) and len(v) == 4, "must be 4 integers >= 1: the stem's and the three stages' widths"),
    ("scale", number(above=0), "must be a number > 0"),
))
for inception in ("inception_v3", "googlenet"):
    MODELS.register(inception, f"nettrain.models.vision:{inception}", inputs=("image",), quantize="static")
MODELS.register("timm", "nettrain.models.timm_models:timm_model", inputs=("image",), weights="timm",
                prepare="nettrain.models.timm_models:before_data", label="arch", quantize="static", rules=(
    ("arch", name, "must be a timm architecture, e.g. convnext_nano"),
    ("pretrained", one_of(None, True, False), "allowed with model=timm: true (timm's weights), false"),
))
_ATTENTION = (
    ("dim", *POSITIVE), ("layers", *POSITIVE), ("heads", *POSITIVE), ("ff_dim", *POSITIVE),
    ("pooling", one_of("mean", "first"), "allowed: mean, first"),
    ("attention_dropout", *FRACTION),
)
MODELS.register("transformer", "nettrain.models.text:transformer", inputs=("text",), quantize="dynamic", rules=_ATTENTION)
MODELS.register("bag", "nettrain.models.text:bag", inputs=("text",), quantize="dynamic", rules=(
    ("dim", *POSITIVE),
    ("ngrams", integer(at_least=1), "must be an integer >= 1 (1 = words only)"),
    ("buckets", *POSITIVE),
))
MODELS.register("gpt", "nettrain.models.gpt:gpt", inputs=("text_lm",), quantize="dynamic",
                prepare="nettrain.models.gpt:before_data", rules=(
    ("n_layer", *POSITIVE), ("n_head", *POSITIVE), ("n_embd", *POSITIVE),
    ("bias", *BOOLEAN),
    ("samples", integer(at_least=0), "must be an integer >= 0 (texts generated at each validation)"),
    ("sample_tokens", *POSITIVE),
))
MODELS.register("hf", "nettrain.models.hf:hf", inputs=("text",), quantize="dynamic", names_or_paths=("encoder",), rules=(
    ("encoder", name, "must be a Hugging Face model name or folder"),
    ("pooling", one_of("mean", "first"), "allowed: mean, first"),
))

_LABELLED = (("class_weights", one_of(None, "balanced"), "allowed: null, balanced"),)
_DOWNLOADS = (("download", *BOOLEAN),)
_AUGMENTS = ("auto", "standard", "crop", "shift", "flip", "none")
_AUGMENT = (("augment", one_of(*_AUGMENTS), "allowed: " + ", ".join(_AUGMENTS)),)

DATA = Registry("data", common=(
    ("batch_size", *POSITIVE),
    ("num_workers", integer(at_least=0), "must be an integer >= 0"),
    ("val_fraction", number(above=0, below=1), "must be a number in (0, 1)"),
    ("device_resident", one_of("auto", True, False), "allowed: auto, true, false"),
), user_keys=("name", "batch_size", "num_workers", "val_fraction", "class_names", "task", "preprocessing",
              "device_resident"))

DATA.register("digits", "nettrain.data.digits:build", inputs=("image",))
for standard in ("mnist", "fashion_mnist", "cifar10"):
    DATA.register(standard, "nettrain.data.standard:build", inputs=("image",), rules=_DOWNLOADS + _AUGMENT + _LABELLED)
DATA.register("imagefolder", "nettrain.data.imagefolder:build", inputs=("image",), rules=_DOWNLOADS + _AUGMENT + _LABELLED + (
    ("source", one_of("folder", "oxford_pets"), "allowed: folder, oxford_pets"),
    ("image_size", lambda v: v == "auto" or integer(at_least=4, at_most=MAX_IMAGE_SIZE)(v),
     f"must be auto or an integer in [4, {MAX_IMAGE_SIZE}] (pixels)"),
    ("channels", one_of("auto", 1, 3), "allowed: auto, 1, 3"),
    ("on_bad_file", one_of("skip", "error"), "allowed: skip, error"),
    ("cache", *BOOLEAN),
    ("cache_dir", optional(name), "must be null or a directory"),
    ("mean", lambda v: v == "auto" or (numbers(v) and all(0 <= m <= 1 for m in v)),
     "must be auto or a list of numbers in [0, 1], one per channel"),
    ("std", lambda v: v == "auto" or (numbers(v) and all(s > 0 for s in v)),
     "must be auto or a list of numbers > 0, one per channel"),
))
DATA.register("csv", "nettrain.data.tabular:build", inputs=("tabular",), rules=_LABELLED + (
    ("path", optional(name), "must be the path of a file"),
    ("target", name, "must be the name of a column of data.path"),
    ("features", optional(names), "must be null (every column but the target) or a list of column names"),
    ("drop", names, "must be a list of column names, e.g. [id,date]"),
    ("categorical", names, "must be a list of column names, e.g. [city,model]"),
    ("task", one_of("auto", "classification", "regression"), "allowed: auto, classification, regression"),
))
DATA.register("text", "nettrain.data.text:build", inputs=("text",), names_or_paths=("tokenizer",), rules=_LABELLED + (
    ("path", optional(name), "must be the path of a file"),
    ("target", name, "must be the name of the label column"),
    ("text", name, "must be the name of the text column"),
    ("val_path", optional(name), "must be null or the path of a file"),
    ("test_path", optional(name), "must be null or the path of a file"),
    ("on_bad_row", one_of("skip", "error"), "allowed: skip, error"),
    ("tokenizer", optional(name), "must be null, a tokenizer.json, a nettrain checkpoint or a Hugging Face model"),
    ("algorithm", one_of("wordpiece", "bpe"), "allowed: wordpiece, bpe"),
    ("vocab_size", integer(at_least=10), "must be an integer >= 10"),
    ("min_frequency", *POSITIVE),
    ("lowercase", *BOOLEAN),
    ("max_length", integer(at_least=2), "must be an integer >= 2 (tokens)"),
))

DATA.register("text_lm", "nettrain.data.text_lm:build", inputs=("text_lm",), rules=(
    ("path", optional(name), "must be the path of a text file or a folder of .txt files"),
    ("test_path", optional(name), "must be null or the path of a text file or a folder of .txt files"),
    ("tokenizer", one_of("char", "bpe"), "allowed: char, bpe"),
    ("unknown_chars", one_of("refuse", "skip"), "allowed: refuse, skip"),
    ("vocabulary_from", lambda v: v is None or (name(v) and os.path.exists(absolute(v))),
     "must be null or a language model's nettrain checkpoint or run dir (no such file or directory)"),
    ("vocab_size", integer(at_least=257), "must be an integer >= 257 (the 256 bytes and at least one merge)"),
    ("block_size", *POSITIVE),
    ("batches_per_epoch", optional(integer(at_least=1)), "must be null (one pass over the training tokens) or an "
                                                         "integer >= 1"),
))

LOSSES = Registry("loss", user_keys=("name",))
LOSSES.register("cross_entropy", "nettrain.models.losses:cross_entropy", rules=(("label_smoothing", *FRACTION),))
LOSSES.register("mse", "nettrain.models.losses:mse")
LOSSES.register("bce", "nettrain.models.losses:bce")

REGISTRIES = (MODELS, DATA, LOSSES)
