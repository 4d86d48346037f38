"""The nightly retrain, fired by its schedule: Prefect's scheduler creates the runs, `tunegate serve` runs them.

    pytest -m slow tests/test_scheduled_retrain.py      # ~4-6 min on 2 cores

The cron is every minute instead of nightly; everything else is what a team runs: the Prefect server
(`tunegate ui`, with its scheduler service), `tunegate serve`, and the demo feedback logs in
data/feedback/ on the tiny config. The first scheduled run trains on the whole feedback and ends
with a gate decision; the next one finds nothing new and says so. The deployment's concurrency
limit of 1 makes a tick that fires while a run is still going wait for it, instead of reading the
same window.
"""

from __future__ import annotations

import json

import pytest

from conftest import ROOT
from live_stack import api, running_stack, wait_for

pytestmark = pytest.mark.slow

TERMINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


def logged(prefect: str, run_id: str, text: str) -> bool:
    """Whether the run's logs, as the Prefect UI shows them, contain text (they arrive in batches)."""
    def found():
        logs = api(prefect, "/api/logs/filter", {"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200})
        return any(text in entry["message"] for entry in logs)

    return wait_for(found, 60, f"'{text}' in the logs of flow run {run_id}")


def test_nightly_retrain_fires_on_schedule_trains_on_the_feedback_then_finds_nothing_new(tmp_path, tiny_model):
    from mlflow import MlflowClient

    watermark = tmp_path / "feedback" / "watermark.json"
    serve_args = ["--cron", "* * * * *", "--timezone", "UTC", "--feedback-logs", str(ROOT / "data/feedback/*.jsonl"),
                  "--watermark-file", str(watermark), "--feedback-work-dir", str(tmp_path / "feedback")]
    with running_stack(tmp_path, serve_args) as stack:
        prefect, dep = stack["prefect"], stack["deployments"]["retrain-from-feedback"]
        assert dep["global_concurrency_limit"]["limit"] == 1
        assert dep["schedules"][0]["schedule"] == {"cron": "* * * * *", "timezone": "UTC", "day_or": True}

        def two_finished():
            runs = api(prefect, "/api/flow_runs/filter", {"deployments": {"id": {"any_": [dep["id"]]}},
                                                          "sort": "EXPECTED_START_TIME_ASC"})
            done = [r for r in runs if r["state_type"] in TERMINAL]
            return done[:2] if len(done) >= 2 else None

        first, second = wait_for(two_finished, 900, "two scheduled retrain-from-feedback runs to finish")
        for run in (first, second):
            assert run["auto_scheduled"]  # the scheduler made them, not a person
            assert run["state_type"] == "COMPLETED", (run["name"], run["state"]["message"])
        assert second["start_time"] >= first["end_time"]  # never two runs over one window

        # The first run: all 120 demo feedback records -> a candidate and a gate decision.
        mark = json.loads(watermark.read_text())
        assert mark["timestamp"] == "2026-11-20T23:53:14+00:00" and mark["outcome"] in ("promoted", "blocked")
        client = MlflowClient(stack["tracking_uri"])
        (version,) = client.search_model_versions("name='tunegate-model'")
        assert version.tags["gate"] == ("passed" if mark["outcome"] == "promoted" else "blocked")
        run = client.get_run(version.run_id)
        assert run.info.run_name == mark["run"] == "retrain-from-feedback-20261118T0128-20261120T2353"
        assert int(run.data.metrics["data/rows_in"]) > 139  # the curated data plus the feedback rows
        assert logged(prefect, first["id"], "Feedback up to 2026-11-20T23:53:14+00:00 used by")

        # The second run: nothing new since the watermark, and it says so.
        assert logged(prefect, second["id"], "No new feedback since 2026-11-20T23:53:14+00:00")
        assert json.loads(watermark.read_text()) == mark
