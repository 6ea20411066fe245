"""The Hydra apps (`train`, `lr-find`, `check-data`), all composed from configs/train.yaml: their `--help`, and
every way composing can fail, each reported in one line with its exit code.

Each app's task function raises SystemExit with its exit code when it fails; a sweep's exit code is decided
by its summary (commands.sweep_summary), from the job dirs, whatever launcher ran them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
import yaml
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, MissingConfigException
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from nettrain.commands.help import hydra_app_help, own_keys_help
from nettrain.config.overrides import quote_paths
from nettrain.config.resolvers import note_swept_keys, register_resolvers
from nettrain.config.suggest import explain, nearest
from nettrain.errors import os_error_line


def run_hydra_app(task: Callable[[DictConfig], Any], argv: list[str], config_name: str = "train") -> int:
    """Run `task` as a Hydra app on `argv` (overrides and Hydra flags) and return the exit code."""
    register_resolvers()
    if any(a in ("-h", "--help") for a in argv):
        return _print_help(config_name, argv)
    argv = quote_paths(argv)
    if "-m" in argv or "--multirun" in argv:
        note_swept_keys(argv)
    # Composition errors reach us as exceptions, so they can be reported in one line with exit 2.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    sys.argv = ["nettrain", *argv]
    GlobalHydra.instance().clear()  # a second app in one process (tests, lr-find then train) starts clean
    app = hydra.main(config_path="pkg://nettrain.configs", config_name=config_name, version_base="1.3")(task)
    try:
        app()
    except SystemExit as e:  # how a task (or a sweep's summary) ends with its exit code
        return int(e.code or 0)
    except ValueError as e:
        if not str(e).startswith("Only one of --run"):  # Hydra's check of its mode flags (-m with --cfg, ...)
            raise
        print(f"nettrain: {e}", file=sys.stderr)
        return 2
    except (HydraException, OmegaConfBaseException, yaml.YAMLError) as e:  # (Hydra's MissingConfig is an OSError too)
        print(f"nettrain: {composition_error(e)}", file=sys.stderr)
        return 2
    except OSError as e:  # Hydra could not make the run dir (read-only, a file in the way, full disk)
        print(f"nettrain: {os_error_line(e)}", file=sys.stderr)
        return 1
    return 0


def hydra_context() -> tuple[Path, bool, list[str]]:
    """(the job's dir, whether it is a sweep's job, its overrides), inside a Hydra task."""
    hc = HydraConfig.get()
    return Path(hc.runtime.output_dir), hc.mode == RunMode.MULTIRUN, list(hc.overrides.task)


def _print_help(config_name: str, argv: list[str]) -> int:
    """`--help`: train's explains every key its overrides compose; lr-find's and check-data's their own keys."""
    if config_name != "train":
        print(own_keys_help(config_name), end="")
        return 0
    overrides = [a for a in argv if a not in ("-h", "--help") and "=" in a and not a.startswith("-")]
    try:
        print(hydra_app_help(config_name, quote_paths(overrides)), end="")
    except (HydraException, OmegaConfBaseException, yaml.YAMLError) as e:
        print(f"nettrain: {composition_error(e)}", file=sys.stderr)
        return 2
    return 0


def composition_error(e: BaseException) -> str:
    """One line for anything that stops Hydra composing a config: an unknown option or key (with the one
    meant), a plugin not installed, a config file that is not YAML."""
    if isinstance(e, MissingConfigException):
        return _missing_config_line(e)
    if isinstance(e, yaml.YAMLError):
        return yaml_error_line(e)
    return explain(e) or _two_lines(e)


def yaml_error_line(e: yaml.YAMLError) -> str:
    """'FILE, line L, column C: what' for a YAML file that does not parse (PyYAML says it in 4 to 6 lines)."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or _two_lines(e)
    if mark is None:
        return f"invalid YAML: {problem}"
    context, begun = getattr(e, "context", None), getattr(e, "context_mark", None)
    started = f" ({context}{f' begun on line {begun.line + 1}' if begun is not None else ''})" if context else ""
    return f"invalid YAML in {mark.name}, line {mark.line + 1}, column {mark.column + 1}: {problem}{started}"


def _two_lines(e: BaseException) -> str:
    """Hydra's message in one line: its first two lines say what and where."""
    text = " ".join(line.strip() for line in str(e).strip().splitlines()[:2] if line.strip())
    return text or type(e).__name__


# Configs that Hydra plugins provide -> (the plugin's package, the nettrain extra that installs it).
PLUGIN_CONFIGS = {
    "hydra/sweeper/optuna": ("hydra-optuna-sweeper", "sweep"),
    "hydra/launcher/joblib": ("hydra-joblib-launcher", "sweep"),
    "hydra/launcher/submitit_slurm": ("hydra-submitit-launcher", "slurm"),
    "hydra/launcher/submitit_local": ("hydra-submitit-launcher", "slurm"),
}


def _missing_config_line(e: MissingConfigException) -> str:
    """'model=foo' -> "unknown model=foo; did you mean ...? allowed: cnn, mlp, ..." (Hydra lists them on many lines)."""
    missing = getattr(e, "missing_cfg_file", "") or ""
    options = getattr(e, "options", None)
    if missing in PLUGIN_CONFIGS:
        package, extra = PLUGIN_CONFIGS[missing]
        group, name = missing.rsplit("/", 1)
        return (f"{group}={name} needs the Hydra plugin {package}, which is not installed: "
                f"pip install {package}  (or pip install 'nettrain[{extra}]')")
    if "/" in missing and options:
        group, name = missing.rsplit("/", 1)
        guess = nearest(name, sorted(options))
        return f"unknown {group}={name};{f' did you mean {guess}?' if guess else ''} allowed: {', '.join(sorted(options))}"
    return explain(e) or _two_lines(e)
