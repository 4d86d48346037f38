"""Prefect cache keys for the pipeline stages: input files by content and path, never the run's own folder.

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


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks: weights files can be larger than memory allows twice."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _canonical(value):
    """Parameters as JSON-able values, every existing file by its path and the hash of its content.

    The path counts too: cached results name their input files (each row's source), and later checks select rows
    by file, e.g. the feedback window the contradiction check measures. A window with the same bytes as an earlier
    one must not come back under the earlier one's paths."""
    from pydantic import BaseModel

    if isinstance(value, BaseModel):  # typed stage results and config sections hold file paths too
        return _canonical(value.model_dump(mode="json"))
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, str) and 0 < len(value) < 4096 and Path(value).is_file():
        return {"file": value, "file_sha256": file_sha256(value)}
    return value


def stage_cache_key(context, parameters) -> str:
    """Prefect cache key for a data stage writing to <output_dir>/<run>/<stage>: its inputs, not its run folder,
    so a re-run (another run folder) reuses the finished stage."""
    import json

    out_dir = Path(parameters["out_dir"])
    inputs = {k: _canonical(v) for k, v in parameters.items() if k != "out_dir"}
    return content_key(out_dir.parent.parent, json.dumps(inputs, sort_keys=True, default=str))


def _stage_cache():
    from prefect.cache_policies import TASK_SOURCE, CacheKeyFnPolicy

    return TASK_SOURCE + CacheKeyFnPolicy(cache_key_fn=stage_cache_key)


STAGE_CACHE = _stage_cache()
