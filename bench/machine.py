"""The machine a benchmark ran on, for the line beside every number in docs/benchmarks.md."""

from __future__ import annotations

import re
import subprocess


def cpu() -> str:
    """lscpu's model name and the vector flags that decide CPU speed (avx*, amx*, fma)."""
    info = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = re.search(r"Model name:\s*(.+)", info)
    flags = re.search(r"Flags:\s*(.+)", info)
    wanted = [f for f in (flags.group(1).split() if flags else []) if f.startswith(("avx", "amx", "fma"))]
    return f"{model.group(1).strip() if model else 'unknown'}; flags: {' '.join(wanted)}"
