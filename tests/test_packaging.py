"""Install and packaging: extras per feature, metadata, and the README's commands that CI runs."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent


def test_extras_metadata_and_license():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert {"onnx", "sweep", "slurm", "mlflow", "wandb", "timm", "hf", "dev"} <= set(extras)
    assert extras["dev"][0] == "nettrain[onnx,sweep,slurm,mlflow,wandb,timm,hf]"  # what the tests import
    assert project["license"] == "MIT" and "MIT License" in (ROOT / "LICENSE").read_text()
    assert project["authors"] and any("Python :: 3.10" in c for c in project["classifiers"])
    assert "## [Unreleased]" in (ROOT / "CHANGELOG.md").read_text()


def test_the_readme_shows_cpu_and_cuda_torch_and_ci_runs_its_first_commands():
    readme = (ROOT / "README.md").read_text()
    assert "pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu" in readme
    assert "--index-url https://download.pytorch.org/whl/cu" in readme
    first, second = re.findall(r"```bash\n(.*?)\n```", readme, re.S)[:2]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert first in ci and second in ci
