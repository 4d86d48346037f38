"""Retrain from production feedback: the feedback logged since the watermark -> finetune_pipeline.

    python -m flows.retrain_from_feedback configs/demo.yaml [--set k=v ...]   # once, by hand
    tunegate serve                                                           # nightly, as a deployment

Upvotes and corrections become SFT rows, corrections and up-vs-down answers become preference
pairs (tasks/feedback.py); they are added to the config's data and go through the same data checks,
training, eval and gate. The watermark moves to the window's newest record only when the pipeline
run reached its gate decision (promoted or blocked), so a crashed run retries the same window next
time: no feedback is lost or trained on twice. No new feedback: nothing runs, and the result says so.
"""

from __future__ import annotations

import sys

from prefect import flow
from prefect.logging import get_run_logger
from prefect.runtime import deployment

from flows.finetune import finetune_pipeline
from tasks.feedback import advance_watermark, collect_feedback
from tasks.promote import GateBlocked
from tunegate.config import FeedbackConfig, PipelineParams, load_config


@flow(name="retrain-from-feedback")
def retrain_from_feedback(params: PipelineParams, feedback: FeedbackConfig = FeedbackConfig()) -> dict:
    """Fine-tune on the config's data plus the feedback logged since the last watermark."""
    log = get_run_logger()
    window = collect_feedback(feedback.logs, feedback.watermark_file, feedback.work_dir)
    if window["records"] < feedback.min_records:
        log.info("No new feedback since %s (%d records, need %d): nothing to do.",
                 window["watermark"] or "the beginning", window["records"], feedback.min_records)
        return {"status": "no_new_feedback", "watermark": window["watermark"], "records": window["records"]}

    run_name = f"{deployment.name or 'retrain-from-feedback'}-{window['label']}"
    # Feedback trains only (general_files are never split off for eval): the eval sets stay the curated
    # ones, so every retrain is gated on the same questions and MLflow compares like with like.
    data = params.data.model_copy(update={
        "general_files": params.data.general_files + [f for f in [window["sft_file"]] if f],
        "preference_files": params.data.preference_files + [f for f in [window["preference_file"]] if f],
    })
    state = finetune_pipeline(params.model_copy(update={"run_name": run_name, "data": data}), return_state=True)
    outcome = "promoted" if state.is_completed() else None
    if outcome is None and isinstance(state.result(raise_on_failure=False), GateBlocked):
        outcome = "blocked"  # a finished run with a decision: this window is used up
    if outcome is None:
        raise RuntimeError(f"{run_name} failed before its gate decision; watermark kept at "
                           f"{window['watermark']}, the next run retries this window. {state.message}")
    mark = advance_watermark(feedback.watermark_file, window["new_watermark"], window["lines_read"], run_name, outcome)
    log.info("Feedback up to %s used by %s (%s); watermark advanced.", mark["timestamp"], run_name, outcome)
    summary = state.result() if outcome == "promoted" else None
    return {"status": outcome, "run_name": run_name, "window": [window["start"], window["end"]],
            "records": window["records"], "sft_rows": window["sft_rows"], "pairs": window["pairs"],
            "watermark": mark["timestamp"], "model_version": summary["model_version"] if summary else None}


if __name__ == "__main__":
    from tunegate.config import overrides_from_argv

    print(retrain_from_feedback(load_config(*overrides_from_argv(sys.argv[1:]))))
