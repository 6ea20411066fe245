"""`nettrain generate`: text from a language model's checkpoint (inference.generate), streamed to stdout as it is
written."""

from __future__ import annotations

import logging
import sys
from typing import Any

from nettrain.commands.args import parse_args, run_command
from nettrain.errors import invalid

log = logging.getLogger("nettrain")

USAGE = """
usage: nettrain generate [ckpt=]PATH [prompt="..."] [max_new_tokens=500]
                         [temperature=0.8] [top_k=200] [seed=0] [samples=1]
                         [device=auto|cpu|cuda] [model._target_=PATH]

Write text with a language model (model=gpt trained on data=text_lm): the
prompt, then max_new_tokens tokens, each drawn from the model's next-token
probabilities, streamed to stdout as they come. ckpt is a .pt file, or a run
dir for its checkpoints/best.pt. The same checkpoint, prompt, settings and seed
write the same text on the same device.

  prompt=TEXT       what the text starts with (default: a new line); with a
                    character vocabulary, every character must be one the
                    model was trained on
  max_new_tokens=N  tokens to write after the prompt (characters, for a
                    character vocabulary)
  temperature=T     > 1 more surprising, < 1 safer, 0 always the most likely
  top_k=K           draw among the K most likely tokens only; null = all
  seed=N            the draws' seed
  samples=N         N texts one after the other, separated by a line of dashes
Only the text goes to stdout; logs and errors go to stderr.

examples:
  nettrain generate outputs/2025-01-31/12-00-00_shakespeare_char_cpu
  nettrain generate RUN prompt="ROMEO:" max_new_tokens=500 temperature=0.8
  nettrain generate RUN prompt="To be" temperature=0 max_new_tokens=100
"""

DEFAULTS: dict[str, Any] = {"ckpt": None, "prompt": "", "max_new_tokens": 500, "temperature": 0.8, "top_k": 200,
                            "seed": 0, "samples": 1, "device": "auto"}
SEPARATOR = "-" * 40


def _generate(argv: list[str]) -> int:
    args = parse_args(argv, DEFAULTS, required=("ckpt",), paths=("ckpt", "prompt"), prefixes=("model.",),
                      positional="ckpt")
    samples = args["samples"]
    if not (isinstance(samples, int) and not isinstance(samples, bool) and samples >= 1):
        raise invalid("samples", samples, "must be an integer >= 1")
    # torch: once the arguments are parsed, so --help and argument errors answer at once
    import torch

    from nettrain.inference.generate import check_settings, load_language_model, threads_for

    check_settings(args["max_new_tokens"], args["temperature"], args["top_k"], args["seed"])
    lm = load_language_model(args["ckpt"], args["device"], {"model": args.get("model")})
    if lm.loaded.device.type == "cpu":
        torch.set_num_threads(threads_for(lm)[0])
    lm.encode_prompt(args["prompt"])  # a prompt the vocabulary cannot encode is refused before any text
    try:
        _write(lm, args, samples)
    except KeyboardInterrupt:  # Ctrl-C ends the text where it is, as a shell tool stops
        sys.stdout.write("\n")
        return 130
    return 0


def _write(lm: Any, args: dict[str, Any], samples: int) -> None:
    for i in range(samples):
        if i:
            sys.stdout.write(f"\n{SEPARATOR}\n")
        for piece in lm.stream(args["prompt"], max_new_tokens=args["max_new_tokens"], temperature=args["temperature"],
                               top_k=args["top_k"], seed=args["seed"] + i):
            sys.stdout.write(piece)
            sys.stdout.flush()  # streamed: each piece as soon as it is written
        sys.stdout.write("\n")


def main(argv: list[str]) -> int:
    return run_command(_generate, argv, USAGE)
