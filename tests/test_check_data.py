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
