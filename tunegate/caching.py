"""Prefect cache keys for the pipeline stages: content, not paths.

Cached results hold paths under the outputs folder. A token stored in that folder joins every key,
so deleting the folder invalidates the cache instead of returning paths to files that are gone.
"""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path


def outputs_generation(output_root: Path) -> str:
    marker = output_root / ".tunegate-generation"
    if not marker.exists():
        output_root.mkdir(parents=True, exist_ok=True)
        marker.write_text(uuid.uuid4().hex)
    return marker.read_text().strip()


def content_key(output_root: Path, *parts: str | bytes) -> str:
    digest = hashlib.sha256(outputs_generation(output_root).encode())
    for part in parts:
        digest.update(part if isinstance(part, bytes) else part.encode())
        digest.update(b"\x1f")
    return digest.hexdigest()
