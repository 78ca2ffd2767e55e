"""Replace one ``## `` section of docs/benchmarks.md with a benchmark's new text, keeping the others."""

from __future__ import annotations

import os
import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def replace_section(section: str, text: str, docs: Path = DOCS) -> None:
    """Replace (or append) the section headed ``section`` (e.g. ``## Codec reader``), atomically."""
    docs.parent.mkdir(parents=True, exist_ok=True)
    old = docs.read_text() if docs.is_file() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(section)}\n.*?(?=^## |\Z)", re.DOTALL | re.MULTILINE)
    block = f"{section}\n\n{text.strip()}\n\n"
    new = pattern.sub(lambda _: block, old) if pattern.search(old) else old.rstrip() + "\n\n" + block
    tmp = docs.with_suffix(".md.tmp")
    tmp.write_text(new.rstrip() + "\n")
    os.replace(tmp, docs)
