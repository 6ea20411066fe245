"""Write docs/reference.md from configs/: every key, its default and its comment (python scripts/make_config_reference.py)."""

from pathlib import Path

from nettrain.commands.help import reference_markdown

if __name__ == "__main__":
    out = Path(__file__).resolve().parent.parent / "docs" / "reference.md"
    out.write_text(reference_markdown())
    print(out)
