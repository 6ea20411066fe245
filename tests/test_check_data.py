"""`nettrain check-data`: the report, leakage and unreadable files, strict=true, and that it writes nothing."""

from __future__ import annotations

import shutil

from conftest import run_in_process
from datagen import corrupt_jpeg, image_folder, machines_csv


def check(capsys, *args: str) -> tuple[int, str, str]:
    code = run_in_process("check-data", *args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_image_report_finds_leakage_and_unreadable_files(tmp_path, capsys):
    root = image_folder(tmp_path / "pets", per_class=9, modes=True)
    shutil.copy(root / "train" / "cat" / "cat1.jpg", root / "val" / "cat" / "copy.jpg")
    shutil.copy(root / "train" / "dog" / "dog1.jpg", root / "val" / "cat" / "mislabelled.jpg")
    corrupt_jpeg(root / "train" / "dog" / "broken.jpg")
    (root / "val" / "dog" / "notes.txt").write_text("stray")
    before = sorted(p.name for p in tmp_path.iterdir())

    code, out, err = check(capsys, "data=imagefolder", f"data.root={root}")
    assert code == 0
    for expected in ("images per class", "image modes and sizes", "RGBA", "CMYK", "I;16",
                     "unreadable files: 2", "broken.jpg", "notes.txt",
                     "leakage: 2 val/test image(s)", "copy.jpg", "labelled 'dog' vs 'cat'"):
        assert expected in out, expected
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no run dir, no log, no cache

    code, out, err = check(capsys, "data=imagefolder", f"data.root={root}", "strict=true")
    assert code == 1 and "strict=true: 2 unreadable file(s); 2 val/test image(s)" in err


def test_a_clean_single_folder_passes_strict_and_reports_the_training_split(tmp_path, capsys):
    root = image_folder(tmp_path / "flat", per_class=10, splits=(), classes=("cat", "dog", "fox"))
    code, out, _ = check(capsys, "data=imagefolder", f"data.root={root}", "data.val_fraction=0.3", "strict=true")
    assert code == 0 and "no problems found" in out
    assert "│ cat   │     7 │   3 │" in out


def test_a_duplicate_inside_a_single_folder_is_leakage_when_the_split_separates_it(tmp_path, capsys):
    root = image_folder(tmp_path / "flat", per_class=6, splits=())
    for i in range(6):  # every cat image twice: the split puts some pairs on both sides
        shutil.copy(root / "cat" / f"cat{i}.jpg", root / "cat" / f"again{i}.jpg")
    code, out, _ = check(capsys, "data=imagefolder", f"data.root={root}", "strict=true")
    assert code == 1 and "leakage:" in out


def test_csv_report_shows_types_missing_values_and_balance(tmp_path, capsys):
    path = machines_csv(tmp_path / "m.csv")
    code, out, _ = check(capsys, "data=csv", f"data.path={path}", "data.target=failure", "data.drop=[id,wear]",
                         "data.categorical=[model]", "strict=true")
    assert code == 0 and "no problems found" in out
    assert "categorical" in out and "24 (8%)" in out and "18 (6%)" in out and "target 'failure'" in out and "imbalance" in out

    code, out, err = check(capsys, "data=csv", f"data.path={path}", "data.target=failure", "strict=true")
    assert code == 1 and "problem: column 'model'" in out and "data.categorical=[model]" in err


def test_other_datasets_get_class_balance_and_duplicates(capsys):
    code, out, _ = check(capsys)  # the default: digits
    assert code == 0 and "samples per class" in out and "val: 0 sample(s) identical" in out


def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
    code, _, err = check(capsys, "data=imagefolder", f"data.root={tmp_path / 'nowhere'}")
    assert code == 2 and "invalid data.root" in err
    code, _, err = check(capsys, "data=csv", f"data.path={machines_csv(tmp_path / 'm.csv')}", "data.target=nope")
    assert code == 2 and "invalid data.target='nope'" in err and len(err.strip().splitlines()) == 1


def test_a_language_models_text_is_checked_for_what_validation_shares_with_training(tmp_path, capsys):
    # Files are read in order; the last one is the validation part (data.val_fraction is its share).
    book = tmp_path / "book"
    book.mkdir()
    (book / "a.txt").write_text("".join(f"the cat sat on mat number {i} and then it slept\n" for i in range(40)))
    (book / "b.txt").write_text("a note\n")
    (book / "b2.txt").write_text("a note\n")  # the same text twice
    (book / "c.txt").write_text("the cat sat on mat number 7 and then it slept\nZebra\x00 at the end of it all\n")
    sizes = [len((book / name).read_text()) for name in ("a.txt", "b.txt", "b2.txt", "c.txt")]
    share = f"data.val_fraction={sizes[-1] / sum(sizes):.4f}"
    code, out, err = check(capsys, "data=text_lm", f"data.path={book}", "data.block_size=16", share)
    assert code == 0, err
    for expected in (f"4 file(s), {sum(sizes):,} characters, {sum(sizes):,} tokens (vocabulary ",
                     "files with the same text as another: 1", f"{book / 'b.txt'} = {book / 'b2.txt'}",
                     f"'Z' (U+005A) x1, first at {book / 'c.txt'}:2:1", "control characters: U+0000 x1",
                     "the training text never shows (the model cannot learn them)",
                     "1 of its 1 lines of 30+ characters also in the training text",
                     "leakage: 1 val (the last 4%) line(s) also in the training text",
                     "the cat sat on mat number 7 and then it slept"):
        assert expected in out, expected
    code, out, err = check(capsys, "data=text_lm", f"data.path={book}", "data.block_size=16", share, "strict=true")
    assert code == 1 and "strict=true: 1 file(s) repeat another's text; 3 character(s) of val (the last 4%) never in " \
        "the training text; 1 val (the last 4%) line(s) copied from the training text (leakage)" in err, err

    clean = tmp_path / "clean.txt"
    clean.write_text("".join(f"line {i} of a text that never repeats itself\n" for i in range(100)))
    code, out, _ = check(capsys, "data=text_lm", f"data.path={clean}", "data.block_size=16", "data.tokenizer=bpe",
                         "data.vocab_size=300", "strict=true")
    assert code == 0 and "no problems found" in out and "300 BPE tokens" in out
