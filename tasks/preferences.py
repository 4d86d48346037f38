"""Stage: the preference store grows by this run's human preferences (tunegate/preference_store.py).

    python -m tasks.preferences configs/demo.yaml OUTPUTS/<run>   # add a finished run's clean pairs to the store

Sources, each row with its provenance:
- curated preference files (data.preference_files): file:line;
- feedback pairs (data.feedback_preference_files: a correction beats the answer it corrects, an
  upvoted answer beats a downvoted one to the same prompt): the traces or log records they came
  from, the users and the newest time (from the window's ratings, data.feedback_ratings_file);
- reviewers' `preference` feedback (candidate or baseline; ties teach no order) on the side-by-side
  traces of registered runs (tasks/register.py, tasks/gate.py): trace id, reviewer, time. Their
  prompt is the rendered one; only ChatML renderings are read back into messages (others are counted).

Curated and feedback pairs are taken from validate's clean preferences, so quarantined rows (PII
under reject, contradictions, flagged raters' rows) never arrive, and a window a reviewer rejected
never reaches validate. Every row is PII-redacted again before it is stored (reviewer traces are
redacted only when serve.redact_pii was on). Runs only with a `reward:` section.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from pathlib import Path

from prefect import task
from pydantic import BaseModel, ConfigDict

from data_checks.pii import redact_value
from tasks.gate import PREFERENCE
from tasks.register import SIDE_BY_SIDE_TAG
from tasks.validate import Validated
from tunegate.config import DataConfig, RewardConfig, TrackingConfig
from tunegate.preference_store import STORE_FILE, extend_store, load_store, read_rows
from tunegate.reward_model import unrender_chatml
from tunegate.traces import latest_human_feedback

log = logging.getLogger(__name__)


class PreferenceStore(BaseModel):
    """The store's version this run trains on: its file, size and what this run added."""

    model_config = ConfigDict(extra="forbid")
    skipped: bool = False
    version: int
    rows: int
    file: str | None
    run_id: str | None
    sha256: str | None
    added: int = 0
    offered: dict[str, int] = {}
    reviewer_skipped: dict[str, int] = {}


def feedback_provenance(data: DataConfig) -> dict[tuple[str, int], dict]:
    """(feedback preference file, line) -> where the pair came from, who rated, when; from the window's files."""
    by_source = {r["source"]: r for r in read_rows(data.feedback_ratings_file)}
    out = {}
    for path in data.feedback_preference_files:
        for line, row in enumerate(read_rows(path), 1):
            sources = row.get("feedback_sources", [])
            ratings = [by_source[s] for s in sources if s in by_source]
            out[(path, line)] = {"kind": "feedback", "where": f"{path}:{line}", "sources": sources,
                                 "users": sorted({r["user"] for r in ratings if r["user"]}),
                                 "time": max((r["timestamp"] for r in ratings), default=None)}
    return out


def clean_rows(validated: Validated, data: DataConfig) -> list[dict]:
    """The run's clean preference pairs (curated and feedback), as store rows with their provenance."""
    feedback = feedback_provenance(data)
    rows = []
    for rec in read_rows(validated.clean_preferences):
        where = (rec["source"]["file"], rec["source"]["line"])
        provenance = feedback.get(where) or {"kind": "curated", "where": f"{where[0]}:{where[1]}", "sources": [],
                                             "users": [], "time": None}
        rows.append({"prompt": rec["prompt"], "chosen": rec["chosen"], "rejected": rec["rejected"],
                     "provenance": provenance})
    return rows


def reviewer_rows(tracking: TrackingConfig) -> tuple[list[dict], dict[str, int]]:
    """Reviewers' candidate/baseline preferences on side-by-side traces as pairs; counts of those left out."""
    import mlflow

    from tunegate.registry import connect

    _, experiment_id = connect(tracking)
    mlflow.flush_trace_async_logging()
    # Only side-by-side traces: the experiment also holds every served request's trace.
    traces = mlflow.search_traces(locations=[experiment_id], include_spans=False, return_type="list",
                                  filter_string=f"tag.`{SIDE_BY_SIDE_TAG}` != ''")
    rows, skipped = [], {"tie_or_other": 0, "prompt_not_chatml": 0}
    for (trace_id, reviewer), (a, _) in sorted(latest_human_feedback(traces, PREFERENCE).items()):
        value = str(a.feedback.value).strip().lower()
        if value not in ("candidate", "baseline"):
            skipped["tie_or_other"] += 1
            continue
        data = mlflow.get_trace(trace_id).data
        prompt = unrender_chatml(data.request["prompt"] if isinstance(data.request, dict)
                                 else json.loads(data.request)["prompt"])
        if prompt is None:
            skipped["prompt_not_chatml"] += 1
            continue
        answers = data.response if isinstance(data.response, dict) else json.loads(data.response)
        other = "baseline" if value == "candidate" else "candidate"
        rows.append({"prompt": prompt, "chosen": {"role": "assistant", "content": answers[value]},
                     "rejected": {"role": "assistant", "content": answers[other]},
                     "provenance": {"kind": "reviewer", "where": f"trace {trace_id}", "sources": [trace_id],
                                    "users": [reviewer], "time": datetime.fromtimestamp(
                                        a.create_time_ms / 1000, tz=timezone.utc).isoformat()}})
    return rows, skipped


def redact_row(row: dict) -> dict:
    """A store row with PII redacted from its prompt and both answers (its provenance holds ids, not text)."""
    return {**row, **redact_value({k: row[k] for k in ("prompt", "chosen", "rejected")})}


def store_rows(validated: Validated, data: DataConfig, tracking: TrackingConfig) -> tuple[list[dict], dict]:
    """Every preference this run offers the store, PII-redacted, with its provenance; and what was left out."""
    clean = clean_rows(validated, data)
    reviewed, skipped = reviewer_rows(tracking)
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    rows = [redact_row({**r, "provenance": {**r["provenance"], "time": r["provenance"]["time"] or now}})
            for r in clean + reviewed]
    return rows, skipped


@task(retries=2, retry_delay_seconds=[2, 5])
def preference_store(validated: Validated, data: DataConfig, cfg: RewardConfig | None,
                     tracking: TrackingConfig) -> PreferenceStore:
    """Add this run's new preferences to the store; return the version the reward model trains on."""
    if cfg is None:
        log.info("preference store skipped: no `reward:` section in the config")
        return PreferenceStore(skipped=True, version=0, rows=0, file=None, run_id=None, sha256=None)
    out = Path(validated.clean).parent.parent / "preferences" / STORE_FILE  # <output_dir>/<run>/preferences
    current = load_store(tracking, out)
    rows, skipped = store_rows(validated, data, tracking)
    offered = {k: sum(r["provenance"]["kind"] == k for r in rows) for k in ("curated", "feedback", "reviewer")}
    grown = extend_store(tracking, current, rows, out, {"offered": json.dumps(offered),
                                                        "reviewer_skipped": json.dumps(skipped)})
    log.info("preference store v%d: %d rows, %d new (offered %s; reviewer preferences left out: %s)",
             grown["version"], grown["rows"], grown["added"], offered, skipped)
    return PreferenceStore(**grown, offered=offered, reviewer_skipped=skipped)


if __name__ == "__main__":
    from tunegate.config import load_config

    logging.basicConfig(level=logging.INFO)
    params = load_config(sys.argv[1])
    run = Path(sys.argv[2])
    validated = Validated.of(json.loads((run / "data" / "report.json").read_text()), run / "data" / "report.json")
    print(preference_store.fn(validated, params.data, params.reward or RewardConfig(), params.tracking))
