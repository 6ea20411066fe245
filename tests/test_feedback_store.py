"""Feedback kept under a run: appended, fsynced, read back in order; a torn last line is no acknowledged record."""

from __future__ import annotations

import pytest

from nettrain.errors import UserError
from nettrain.serving.feedback import Feedback, FeedbackStore, read_feedback


def test_feedback_is_appended_and_read_back_in_order(tmp_path):
    store = FeedbackStore(tmp_path)
    store.add(Feedback("a1", "text", "where is the bank?", "LOC", prediction="DESC", correct=False))
    store.add(Feedback("a2", "tabular", {"x": 1.5, "city": "rome"}, "high"))
    store.close()
    records = read_feedback(tmp_path)
    assert [(r.id, r.input, r.label, r.correct) for r in records] == [
        ("a1", "where is the bank?", "LOC", False), ("a2", {"x": 1.5, "city": "rome"}, "high", None)]
    assert [p.name for p in tmp_path.iterdir()] == ["feedback"]  # nothing else of the run is touched


def test_a_torn_last_line_is_skipped_and_a_bad_middle_line_is_an_error(tmp_path):
    store = FeedbackStore(tmp_path)
    store.add(Feedback("a1", "text", "hi", "x"))
    store.close()
    with open(store.path, "ab") as f:
        f.write(b'{"id": "a2", "kind": "te')  # a kill mid-write: the server never answered for it
    assert [r.id for r in read_feedback(tmp_path)] == ["a1"]
    store.path.write_text('{"nope": 1}\n' + store.path.read_text())
    with pytest.raises(UserError, match=r"\.jsonl:1: not a feedback record"):
        read_feedback(tmp_path)


def test_a_disk_that_fills_mid_record_leaves_no_torn_line(tmp_path, monkeypatch):
    import os

    store = FeedbackStore(tmp_path)
    store.add(Feedback("a1", "text", "hi", "x"))
    real = os.write

    def half_then_full(fd, data):
        if len(data) > 30:
            real(fd, data[:20])
            raise OSError(28, "No space left on device")
        return real(fd, data)

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(OSError):
        store.add(Feedback("a2", "text", "a longer text " * 5, "y"))
    monkeypatch.undo()
    store.add(Feedback("a3", "text", "later", "z"))
    store.close()
    assert [r.id for r in read_feedback(tmp_path)] == ["a1", "a3"]
