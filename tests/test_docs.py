"""The docs: a short README, a site that builds with no broken link, a config reference that says what the
configs say today."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_readme_is_a_guide_not_a_reference():
    assert len((ROOT / "README.md").read_text().splitlines()) < 250


def test_the_site_builds_strict_with_every_page_in_its_nav(tmp_path):
    pytest.importorskip("mkdocs")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    nav = (ROOT / "mkdocs.yml").read_text()
    assert [p.name for p in (ROOT / "docs").glob("*.md") if p.name not in nav] == []


def test_the_config_reference_is_current():
    from nettrain.commands.help import reference_markdown

    assert (ROOT / "docs" / "reference.md").read_text() == reference_markdown(), \
        "run python scripts/make_config_reference.py"
