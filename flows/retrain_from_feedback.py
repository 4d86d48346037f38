"""Retrain from production feedback: the feedback logged since the watermark -> finetune_pipeline.

    tunegate retrain --config configs/demo.yaml [--approve LABEL --note "..."]   # once, by hand
    python -m flows.retrain_from_feedback configs/demo.yaml [--set feedback.k=v ...]   # the same, no CLI
    tunegate serve                                                           # nightly, as a deployment

Upvotes and corrections become SFT rows, corrections and up-vs-down answers become preference
pairs (tasks/feedback.py); they are added to the config's data and go through the same data checks,
training, eval and gate. The watermark moves to the window's newest record only when the pipeline
run reached its gate decision (promoted or blocked), so a crashed run retries the same window next
time: no feedback is lost or trained on twice. No new feedback: nothing runs, and the result says so.

A window that contradicts curated data past `data.checks.conflict_max_fraction` stops before
training and waits for a reviewer (the watermark's `pending`). Until the decision, every run reads
exactly that window and stops again; later windows wait behind it, so nothing a reviewer has not
seen trains. `feedback.approved_window` (its rows train) or `feedback.rejected_window` (marked read,
never trained), each with `feedback.review_note`, settles it (`tunegate retrain --approve/--reject`).
The same holds for a window whose rows come past `data.checks.rater_max_fraction` from flagged raters
(data_checks/raters.py): validate reads the window's ratings file, with the registered reward model's
score of each rated answer added first when there is a current one.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from prefect import flow
from prefect.logging import get_run_logger
from prefect.runtime import deployment

from flows.finetune import finetune_pipeline
from tasks.feedback import (advance_watermark, collect_feedback, current_champion, extend_production_set,
                            hold_for_review, load_production_set, score_ratings)
from tasks.validate import ConflictReviewRequired
from tunegate.config import FeedbackConfig, PipelineParams, RewardConfig, load_config


@flow(name="retrain-from-feedback")
def retrain_from_feedback(params: PipelineParams) -> dict:
    """Fine-tune on the config's data plus the feedback logged since the last watermark (params.feedback)."""
    log = get_run_logger()
    feedback = params.feedback
    window = collect_feedback(feedback, params.tracking)
    pending = window["pending"]
    checks = params.data.checks
    if pending:
        if feedback.rejected_window == pending["label"]:
            mark = advance_watermark(feedback.watermark_file, pending["new_watermark"], pending["lines_read"],
                                     pending["run"], f"rejected by review: {feedback.review_note}")
            log.warning("Window %s rejected by review (%s): marked read, not trained.", pending["label"],
                        feedback.review_note)
            return {"status": "rejected", "window": [pending["start"], pending["end"]], "watermark": mark["timestamp"]}
        if feedback.approved_window != pending["label"]:
            log.warning("Window %s waits for review since %s; later feedback waits behind it. Approve it "
                        "(feedback.approved_window=%s, feedback.review_note='<reviewer>: <reason>') or reject it "
                        "(feedback.rejected_window=%s). Why it stopped:\n%s", pending["label"], pending["since"],
                        pending["label"], pending["label"], pending["reason"])
            return {"status": "awaiting_review", "window": [pending["start"], pending["end"]],
                    "records": window["records"], "watermark": window["watermark"]}
        checks = checks.model_copy(update={"conflicts_approved": feedback.review_note})
    if window["records"] < feedback.min_records:
        log.info("No new feedback since %s (%d records, need %d): nothing to do.",
                 window["watermark"] or "the beginning", window["records"], feedback.min_records)
        return {"status": "no_new_feedback", "watermark": window["watermark"], "records": window["records"]}

    run_name = f"{deployment.name or 'retrain-from-feedback'}-{window['label']}"
    champion = current_champion(params.tracking)
    production = load_production_set(params.tracking, str(Path(window["prompts_file"]).parent / "production_set.v.jsonl"))
    # The rater check weighs each vote against the reward model too, when a good enough one is registered.
    score_ratings(window["ratings_file"], params.tracking, (params.reward or RewardConfig()).min_accuracy)
    state = finetune_pipeline(with_feedback(params, window, checks, production, feedback, run_name), return_state=True)
    summary = read_summary(Path(params.output_dir).resolve() / run_name)
    if summary is None:  # no gate decision was reached
        error = state.result(raise_on_failure=False)
        if isinstance(error, ConflictReviewRequired):
            hold_for_review(feedback.watermark_file, window, run_name, str(error))
            raise RuntimeError(f"Feedback window {window['label']} stopped for review before training; the "
                               f"watermark stays at {window['watermark']} and later feedback waits behind it.\n{error}")
        raise RuntimeError(f"{run_name} failed before its gate decision; watermark kept at "
                           f"{window['watermark']}, the next run retries this window. {state.message}")
    # A decision was reached (promoted or cleanly blocked): the window is used up, even when a later
    # stage such as export failed, so it never trains twice.
    # canary: passed and on alias `candidate`; blocked, or needs_review
    outcome = "promoted" if summary["promoted"] else "canary" if summary.get("canary") else summary["gate"]
    grown = extend_production_set(params.tracking, production, window,
                                  str(Path(params.output_dir).resolve() / run_name / "data" / "clean.jsonl"), champion,
                                  params.data.checks.conflict_prompt_similarity)
    mark = advance_watermark(feedback.watermark_file, window["new_watermark"], window["lines_read"], run_name, outcome)
    log.info("Feedback up to %s used by %s (%s); watermark advanced.", mark["timestamp"], run_name, outcome)
    if state.is_failed() and outcome == "promoted":
        log.error("%s was promoted, but a later stage failed: %s", run_name, state.message)
    return {"status": outcome, "run_name": run_name, "window": [window["start"], window["end"]],
            "records": window["records"], "sft_rows": window["sft_rows"], "pairs": window["pairs"],
            "watermark": mark["timestamp"], "model_version": summary["model_version"] if outcome == "promoted" else None,
            "production_set": {"evaluated": production["version"], "now": grown["version"], "rows": grown["rows"]}}


def with_feedback(params: PipelineParams, window: dict, checks, production: dict, feedback: FeedbackConfig,
                  run_name: str) -> PipelineParams:
    """The pipeline's params for this window: feedback trains; the production set, when it has prompts, is gated."""
    # Feedback trains only (never split off for eval): the eval sets stay the curated ones, so every
    # retrain is gated on the same questions. It is also the window the contradiction check measures.
    data = params.data.model_copy(update={
        "feedback_files": [f for f in [window["sft_file"]] if f],
        "feedback_preference_files": [f for f in [window["preference_file"]] if f],
        "feedback_ratings_file": window["ratings_file"],  # the rater check (data_checks/raters.py)
        "checks": checks,
        "production_eval_file": production["file"] if production["rows"] else None,
    })
    update = {"run_name": run_name, "data": data}
    gate = params.gate
    if feedback.max_answer_drift is not None:
        gate = gate.model_copy(update={"max_answer_drift": feedback.max_answer_drift})
    if production["rows"]:
        key_facts = dict(params.eval.key_facts)
        if "tunegate_domain" in key_facts:  # the same forbidden terms hold for what users asked
            key_facts.setdefault("tunegate_production", key_facts["tunegate_domain"])
        update["eval"] = params.eval.model_copy(update={"tasks": [*params.eval.tasks, "production"],
                                                        "key_facts": key_facts})
        gate = gate.model_copy(update={"rules": [*gate.rules, *feedback.production_rules]})
    return params.model_copy(update={**update, "gate": gate})


def read_summary(run_dir: Path) -> dict | None:
    """The run's summary.json, written once the promotion decision was made; None before that."""
    path = run_dir / "summary.json"
    return json.loads(path.read_text()) if path.exists() else None


if __name__ == "__main__":
    from tunegate.config import overrides_from_argv

    print(retrain_from_feedback(load_config(*overrides_from_argv(sys.argv[1:]))))
