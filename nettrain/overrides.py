"""Paths in Hydra overrides taken as the user typed them.

A sweep job's dir is named by its overrides (`3_model=cnn,optimizer.lr=0.01`): given unquoted to
`resume=` or `hydra.run.dir=`, Hydra would read its `=` as a syntax error and its `,` as a sweep.
Values of the keys below are paths, never sweeps, so they are quoted for Hydra.
"""

from __future__ import annotations

PATH_KEYS = ("resume", "hydra.run.dir", "hydra.sweep.dir", "data.root", "data.path", "data.cache_dir",
             "model.init_from", "model.pretrained")
_SPECIAL = set("=,[]{}()'\"\\ :$")


def quote_paths(argv: list[str]) -> list[str]:
    """`resume=out/3_lr=0.1,x=1` -> `resume='out/3_lr=0.1,x=1'` (already quoted values are left alone)."""
    quoted = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key.lstrip("+~") in PATH_KEYS and value[:1] not in ("'", '"') and _SPECIAL & set(value) \
                and "${" not in value:
            arg = f"{key}='" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
        quoted.append(arg)
    return quoted
