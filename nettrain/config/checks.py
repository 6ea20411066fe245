"""The shape of a config rule and the tests rules are made of.

A rule is (key, test, what is allowed): `("optimizer.lr", number(above=0), "must be a number > 0")`. A rule
of a registered model, data source or loss names its key within its group (`"hidden"` for model.hidden).
Every failure becomes the same one line: `invalid KEY=VALUE: WHAT IS ALLOWED`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from typing import Any

from omegaconf import DictConfig, OmegaConf

from nettrain.errors import invalid

Test = Callable[[Any], bool]
Rule = tuple[str, Test, str]


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def number(above: float | None = None, at_least: float | None = None, below: float | None = None,
           at_most: float | None = None) -> Test:
    """A finite number within the bounds given."""
    return lambda v: (is_number(v) and (above is None or v > above) and (at_least is None or v >= at_least)
                      and (below is None or v < below) and (at_most is None or v <= at_most))


def integer(at_least: float | None = None, at_most: float | None = None) -> Test:
    return lambda v: is_int(v) and (at_least is None or v >= at_least) and (at_most is None or v <= at_most)


def optional(test: Test) -> Test:
    return lambda v: v is None or test(v)


def one_of(*choices: Any) -> Test:
    return lambda v: v in choices


def name(v: Any) -> bool:
    return isinstance(v, str) and v.strip() != ""


def names(v: Any) -> bool:
    return OmegaConf.is_list(v) and all(name(i) for i in v)


def int_list(v: Any) -> bool:
    return OmegaConf.is_list(v) and len(v) > 0 and all(is_int(i) and i >= 1 for i in v)


def numbers(v: Any) -> bool:
    return OmegaConf.is_list(v) and len(v) > 0 and all(is_number(i) for i in v)


def device(v: Any) -> bool:
    return isinstance(v, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", v) is not None


BOOLEAN: tuple[Test, str] = (one_of(True, False), "allowed: true, false")
FRACTION: tuple[Test, str] = (number(at_least=0, below=1), "must be a number in [0, 1)")

_ABSENT = object()


def check(cfg: DictConfig, rules: Iterable[Rule], prefix: str = "") -> None:
    """Raise the one-line error of the first rule a value of `cfg` breaks; keys `cfg` has not are skipped."""
    for key, test, allowed in rules:
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is not _ABSENT and not test(value):
            raise invalid(prefix + key, value, allowed)
