"""Feedback on a model's predictions, stored durably under its run: RUN/feedback/*.jsonl.

One JSON object a line, appended and fsynced before the server answers, so a kill -9 of the server loses no
acknowledged feedback. Each server process writes a file of its own (`<start time>-<pid>.jsonl`): two servers
on one run never interleave. The run's own files are never touched. A record:

    {"id": "3f2a...", "time": "2026-12-06T21:50:00+00:00", "kind": "image" | "tabular" | "text",
     "input": <the raw input as the client sent it: a base64 string, a row {column: value}, a text>,
     "label": "dog",                       # the class (or the number) it should have been
     "prediction": "cat" | null,           # what the model answered (null: a case it never predicted)
     "correct": false | null}              # prediction == label (null when there was no prediction)

`nettrain update` reads every record of a run with `read_feedback` and learns from the inputs and labels.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from nettrain.errors import UserError

FOLDER = "feedback"


@dataclass
class Feedback:
    id: str
    kind: str                      # image | tabular | text: the run's preprocessing kind
    input: Any                     # as the client sent it (base64 image, row dict, text)
    label: Any
    prediction: Any = None
    correct: bool | None = None
    time: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))


class FeedbackStore:
    """This process's feedback file under `run_dir`: one record a line, fsynced before `add` returns."""

    def __init__(self, run_dir: Path) -> None:
        self.folder = run_dir / FOLDER
        self.path = self.folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.jsonl"
        self._fd: int | None = None

    def add(self, record: Feedback) -> None:
        """Append `record`; when this returns it is on disk (data and the file's directory entry)."""
        line = (json.dumps(asdict(record), ensure_ascii=False) + "\n").encode()
        if self._fd is None:
            self.folder.mkdir(exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            _fsync_dir(self.folder)  # the new file's name survives a crash too
        start = os.lseek(self._fd, 0, os.SEEK_END)
        try:
            written = os.write(self._fd, line)  # one write of a whole line: O_APPEND never interleaves it
            while written < len(line):  # a short write (a disk filling up): the rest, or the error below
                written += os.write(self._fd, line[written:])
            os.fsync(self._fd)
        except OSError:
            os.ftruncate(self._fd, start)  # never a torn line in the middle of the file: every later record stays readable
            raise

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_feedback(run_dir: Path) -> list[Feedback]:
    """Every feedback record of a run, oldest file first. A torn last line (a kill mid-write, before the
    server answered) is not feedback anyone was told was kept: it is skipped; any other bad line is an error."""
    return list(_records(run_dir / FOLDER))


def _records(folder: Path) -> Iterator[Feedback]:
    for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
        lines = path.read_bytes().split(b"\n")
        for number, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            try:
                yield Feedback(**json.loads(raw))
            except (ValueError, TypeError) as e:
                if number == len(lines):  # the last, unterminated line: never acknowledged
                    continue
                raise UserError(f"{path}:{number}: not a feedback record ({e})") from None
