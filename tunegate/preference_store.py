"""The preference store: every human preference, one versioned MLflow dataset that only grows.

    python -m tunegate.preference_store sqlite:///mlruns/mlflow.db tunegate   # print the newest version's counts

Each version is a run in the experiment `<experiment>-preferences` (as the production regression set,
tasks/feedback.py): the whole store as the artifact `preferences.jsonl`, logged with mlflow.log_input
as the dataset `<experiment>-preferences`, metrics `version`, `rows`, `added`. A row is a canonical
preference record (prompt messages, chosen, rejected) plus `provenance` (kind: curated | feedback |
reviewer; where: file:line or trace ids; users; time) and the version that added it. Rows are
keyed by their content (prompt, chosen, rejected): a later version only appends rows with a new key,
so rows already in the store never change.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from tunegate.caching import file_sha256
from tunegate.config import TrackingConfig
from tunegate.registry import artifact_source, connect

SUFFIX = "-preferences"
STORE_FILE = "preferences.jsonl"


def store_experiment(tracking: TrackingConfig):
    """(client, experiment_id) of the store's experiment."""
    return connect(tracking, tracking.experiment + SUFFIX)


def row_key(row: dict) -> str:
    """A preference's identity: its prompt and both answers, case and whitespace folded."""
    parts = [[m["role"], fold(m["content"])] for m in row["prompt"]] + [fold(row["chosen"]["content"]),
                                                                        fold(row["rejected"]["content"])]
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode()).hexdigest()


def fold(text: str) -> str:
    return " ".join(text.lower().split())


def read_rows(path: str | None) -> list[dict]:
    return [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()] if path else []


def load_store(tracking: TrackingConfig, out_file: Path) -> dict:
    """The newest version, written to out_file: {version, rows, file, run_id, sha256}; version 0 when none."""
    client, experiment_id = store_experiment(tracking)
    runs = client.search_runs([experiment_id], order_by=["metrics.version DESC"], max_results=1)
    if not runs:
        return {"version": 0, "rows": 0, "file": None, "run_id": None, "sha256": None}
    run = runs[0]
    out_file.parent.mkdir(parents=True, exist_ok=True)
    local = client.download_artifacts(run.info.run_id, STORE_FILE, str(out_file.parent))
    Path(local).replace(out_file)
    return {"version": int(run.data.metrics["version"]), "rows": len(read_rows(str(out_file))), "file": str(out_file),
            "run_id": run.info.run_id, "sha256": file_sha256(out_file)}


def store_dataset(tracking: TrackingConfig, path: str, run_id: str):
    """A store version as an MLflow dataset (its digest, schema and where its file is), for log_input."""
    import mlflow
    import pandas as pd

    rows = read_rows(path)
    frame = pd.DataFrame({"prompt": [json.dumps(r["prompt"], ensure_ascii=False) for r in rows],
                          "chosen": [r["chosen"]["content"] for r in rows],
                          "rejected": [r["rejected"]["content"] for r in rows],
                          "kind": [r["provenance"]["kind"] for r in rows]})
    source = artifact_source(tracking.tracking_uri, run_id, STORE_FILE)
    return mlflow.data.from_pandas(frame, source=source, name=tracking.experiment + SUFFIX)


def extend_store(tracking: TrackingConfig, current: dict, new_rows: list[dict], out_file: Path, tags: dict) -> dict:
    """Append new_rows (keys not in the store) as the next version; the store unchanged when there are none."""
    import mlflow

    old = read_rows(current["file"])
    known = {row_key(r) for r in old}
    fresh = {}
    for row in new_rows:
        fresh.setdefault(row_key(row), row)  # within a batch the first occurrence stands
    added = [{**r, "added_in": current["version"] + 1} for k, r in fresh.items() if k not in known]
    if not added:
        return {**current, "added": 0}
    rows, version = old + added, current["version"] + 1
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    _, experiment_id = store_experiment(tracking)
    kinds = {k: sum(r["provenance"]["kind"] == k for r in added) for k in ("curated", "feedback", "reviewer")}
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"{tracking.experiment}{SUFFIX}-v{version}") as run:
        mlflow.log_metric("version", version)
        mlflow.log_metrics({"rows": len(rows), "added": len(added), **{f"added_{k}": n for k, n in kinds.items()}})
        mlflow.set_tags(tags)
        mlflow.log_artifact(str(out_file))
        mlflow.log_input(store_dataset(tracking, str(out_file), run.info.run_id), context="training",
                         tags={"version": str(version)})
    return {"version": version, "rows": len(rows), "file": str(out_file), "run_id": run.info.run_id,
            "sha256": file_sha256(out_file), "added": len(added)}


if __name__ == "__main__":
    import tempfile

    store = load_store(TrackingConfig(tracking_uri=sys.argv[1], experiment=sys.argv[2]),
                       Path(tempfile.mkdtemp()) / STORE_FILE)
    print(json.dumps(store, indent=2))
