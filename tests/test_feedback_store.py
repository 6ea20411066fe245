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
