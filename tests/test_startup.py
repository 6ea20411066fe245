"""`nettrain --help` and config errors answer at once: torch is imported only when there is work."""

from __future__ import annotations

import gc
import subprocess
import sys

import pytest

from nettrain.cli import COMMANDS, main

HEAVY = ("torch", "torchvision", "sklearn", "tensorboard", "matplotlib")

# Runs ARGS as `nettrain ARGS` would, then prints which heavy modules were imported.
PROBE = """
import sys
from nettrain.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as e:
    code = e.code
print(code, *[m for m in {heavy!r} if m in sys.modules], file=sys.stderr)
"""


@pytest.mark.parametrize("args", [
    ["--help"],
    ["train", "--help"],
    ["train", "optimizer.lr=-1"],
    ["train", "model=nope"],
    ["train", "trainer.devices=0"],
    *[[name, "--help"] for name in COMMANDS if name != "train"],
], ids=" ".join)
def test_help_and_config_errors_do_not_import_torch(tmp_path, args):
    proc = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    code, *imported = proc.stderr.strip().splitlines()[-1].split()
    assert code in ("0", "2", "None"), proc.stderr
    assert imported == [], f"nettrain {' '.join(args)} imported {imported}"


def test_the_console_script_skips_the_exit_collection_and_main_leaves_the_collector_alone(digits_run):
    # The console script freezes what exists once its command is done (a 1.2 s exit becomes 0.3 s); main, which
    # tests and scripts call many times in one process, must not: frozen objects are never collected.
    assert main(["eval", str(digits_run)]) == 0 and gc.get_freeze_count() == 0
    probe = ("import atexit, gc, sys\nfrom nettrain.cli import entrypoint\n"
             "atexit.register(lambda: print('frozen', gc.get_freeze_count() > 0, file=sys.stderr))\n"
             "sys.argv = ['nettrain', 'runs', '--help']\nentrypoint()\n")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr.strip().splitlines()[-1] == "frozen True", proc.stderr
