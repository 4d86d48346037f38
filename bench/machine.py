"""The machine a benchmark ran on, for the line beside every number in docs/benchmarks.md."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def cpu() -> str:
    """lscpu's model name and the vector flags that decide CPU speed (avx*, amx*, fma)."""
    info = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = re.search(r"Model name:\s*(.+)", info)
    flags = re.search(r"Flags:\s*(.+)", info)
    wanted = [f for f in (flags.group(1).split() if flags else []) if f.startswith(("avx", "amx", "fma"))]
    return f"{model.group(1).strip() if model else 'unknown'}; flags: {' '.join(wanted)}"


def write_section(text: str) -> None:
    """Put a `## title` section into docs/benchmarks.md, replacing the one with the same title."""
    title = text.split("\n", 1)[0]
    old = BENCHMARKS.read_text()
    if title in old:
        head, _, rest = old.partition(title)
        old = head.rstrip() + "\n\n" + (rest[rest.find("\n## ") + 1:] if "\n## " in rest else "")
    BENCHMARKS.write_text(old.rstrip() + "\n\n" + text.rstrip() + "\n")
