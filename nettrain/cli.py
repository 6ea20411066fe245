"""`nettrain` entrypoint: dispatches subcommands, one module of nettrain.commands each. Imports nothing heavy, so
`--help` and config errors answer at once; each subcommand imports torch only when it has work to do."""

from __future__ import annotations

import gc
import importlib
import os
import sys

from nettrain import __version__

# name -> (module:function taking argv and returning an exit code, one-line summary)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("nettrain.commands.train:main", "train a model: key=value overrides, +experiment=NAME, -m sweeps"),
    "eval": ("nettrain.commands.eval:main", "a checkpoint's loss, accuracy, per-class metrics, confusion matrix"),
    "predict": ("nettrain.commands.predict:main", "predict classes with probabilities for images, folders or CSV rows"),
    "export": ("nettrain.commands.export:main", "a checkpoint as ONNX or TorchScript, checked against PyTorch"),
    "generate": ("nettrain.commands.generate:main", "write text with a language model, streamed as it comes"),
    "plot": ("nettrain.commands.plot:main", "draw a run's train vs val loss and accuracy curves as a PNG"),
    "lr-find": ("nettrain.commands.lr_find:main", "learning-rate range test: suggests an lr for a train config"),
    "runs": ("nettrain.commands.runs:main", "list the runs under outputs/ with their status and best metrics"),
    "check-data": ("nettrain.commands.check_data:main", "report on a dataset: class balance, bad files, train/val leakage"),
    "update": ("nettrain.commands.update:main", "teach a run new examples (feedback, new data) without forgetting"),
    "serve": ("nettrain.commands.serve:main", "a model answering HTTP clients: batched predictions, feedback"),
}

USAGE = f"""usage: nettrain COMMAND [ARGS...]

Train neural networks from Hydra config files (nettrain {__version__}).

commands:
""" + "\n".join(f"  {name:<11} {summary}" for name, (_, summary) in COMMANDS.items()) + """

`nettrain COMMAND --help` explains a command. Examples:
  nettrain train
  nettrain train model=cnn optimizer=adamw optimizer.lr=3e-3 data.batch_size=32
  nettrain train -m optimizer.lr=1e-3,1e-2
  nettrain predict ckpt=outputs/DATE/TIME/checkpoints/best.pt input=photo.jpg
"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-sc", "--shell-completion"):
        # Shell completion installed from `nettrain train -sc install=bash` queries `nettrain -sc ...`
        # with the whole line; completion is for train's overrides, so drop the subcommand word.
        line = os.environ.get("COMP_LINE", "").split(" ")
        if len(line) > 1 and line[1] in COMMANDS:
            os.environ["COMP_LINE"] = " ".join(line[:1] + line[2:])
        argv = ["train", *argv]
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0
    if argv[0] == "--version":
        print(f"nettrain {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"nettrain: unknown command {name!r}; allowed: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module, func = COMMANDS[name][0].split(":")
    try:
        code = int(getattr(importlib.import_module(module), func)(rest) or 0)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        # The reader went away (`nettrain runs | head`): stop quietly, as Unix tools do. Python would
        # flush stdout again at exit and fail once more, so point it at /dev/null first.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a tool killed by the closed pipe


def entrypoint() -> None:
    """The `nettrain` console script: `main`, then the process ends."""
    try:
        code = main()
    finally:
        # The work is done: the collection Python runs at exit would walk every object torch, sklearn and their
        # imports made (0.9 s of a 1.2 s exit). Frozen, they are skipped; nothing is left unflushed by it (files
        # are closed, atexit handlers still run). Not in `main`: a process calling it again would never free them.
        gc.freeze()
    raise SystemExit(code)
