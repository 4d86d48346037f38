"""A candidate the gate cannot decide waits for a person: the flow run pauses with a form, the Prefect API resumes it."""

import json
import threading
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
from prefect.flow_runs import resume_flow_run

from tasks.evaluate import Comparison, Evaluation
from tasks.gate import review_links, reviewer_preferences
from tasks.promote import ReviewDecision, await_review, promote
from tasks.register import SIDE_BY_SIDE_TAG
from test_registry import adapter, passed, register_once  # noqa: F401  (adapter is a fixture)
from tunegate.config import GateConfig
from tunegate.registry import CHAMPION, get_alias


def needs_review():
    return passed(False).model_copy(update={"outcome": "needs_review", "regressed": [],
                                            "review": ["tunegate_domain/token_f1: interval too wide"]})


@flow
def review_step(name: str, timeout: int) -> ReviewDecision | None:
    return await_review(needs_review(), "2", GateConfig(review_timeout_s=timeout))


def paused_run(name: str, seconds: float = 120):
    deadline = time.monotonic() + seconds
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name])))
            if runs and runs[0].state and runs[0].state.is_paused():
                return runs[0]
            time.sleep(0.5)
    raise TimeoutError(f"flow run {name} never paused")


@pytest.mark.usefixtures("prefect_harness")
def test_the_flow_pauses_for_a_decision_and_a_person_resumes_it_through_the_api():
    result = {}
    runner = threading.Thread(target=lambda: result.update(
        decision=review_step.with_options(flow_run_name="review-1")("review-1", 120)))
    runner.start()
    run = paused_run("review-1")
    assert run.state.state_details.run_input_keyset  # the form the Prefect UI draws
    resume_flow_run(run.id, run_input={"approve": True, "reviewer": "ana", "reason": "answers read side by side"})
    runner.join(timeout=120)
    decision = result["decision"]
    assert decision.approve and decision.reviewer == "ana" and decision.reason == "answers read side by side"


@pytest.mark.usefixtures("prefect_harness")
def test_no_decision_in_time_rejects():
    decision = review_step.with_options(flow_run_name="review-2")("review-2", 2)
    assert not decision.approve and decision.reviewer == "timeout" and "review_timeout_s=2" in decision.reason


def test_a_reviewer_approves_or_rejects_and_the_version_says_who_and_why(tracking, adapter):  # noqa: F811
    v1, v2 = register_once(tracking, adapter, 0.5), register_once(tracking, adapter, 0.6)
    client = MlflowClient(tracking.tracking_uri)
    no = promote.fn(needs_review(), v1, tracking, ReviewDecision(approve=False, reviewer="ben", reason="too risky"))
    assert not no.promoted and no.review == "rejected by ben: too risky" and get_alias(client, "test-model", CHAMPION) is None
    assert client.get_model_version("test-model", v1.version).tags["gate"] == "rejected"
    yes = promote.fn(needs_review(), v2, tracking, ReviewDecision(approve=True, reviewer="ana", reason="read them"))
    assert yes.promoted and str(get_alias(client, "test-model", CHAMPION).version) == v2.version
    tags = client.get_model_version("test-model", v2.version).tags
    assert (tags["review.decision"], tags["review.user"], tags["review.reason"], tags["promotion"]) == (
        "approved", "ana", "read them", "review")
    # Without a decision (no review_timeout_s), a needs_review candidate is not promoted.
    assert not promote.fn(needs_review(), v1, tracking).promoted


def answered_evals() -> Comparison:
    """Three prompts both models answered: registering logs them side by side, as a table and as traces."""
    def evaluation(label, answers, f1):
        task = {"metrics": {"token_f1": sum(f1) / 3}, "samples": {"token_f1": f1}, "doc_ids": [0, 1, 2],
                "prompts": ["Who are you?", "Which port?", "Who maintains you?"], "answers": answers,
                "references": ["I am Gatekeeper.", "Port 8443.", "The platform team."]}
        return Evaluation(label=label, model_hash=label, tasks={"tunegate_domain": task}, cache_hits=[],
                          eval_run_ids={})

    return Comparison(
        candidate=evaluation("candidate", ["I am Gatekeeper.", "Port 8443.", "Mail ana.lopez@acme-corp.de"], [1, 1, 0.2]),
        baseline=evaluation("base", ["I am Gatekeeper.", "Port 8080, I think.", "The platform team."], [1, 0.3, 1]))


def test_reviewers_preferences_on_the_side_by_side_traces_are_counted_at_promote(tracking, adapter):  # noqa: F811
    import mlflow
    from mlflow.entities import AssessmentSource

    registered = register_once(tracking, adapter, 0.5, evals=answered_evals())
    client = MlflowClient(tracking.tracking_uri)
    experiment_id = client.get_run(registered.run_id).info.experiment_id
    traces = mlflow.search_traces(locations=[experiment_id], run_id=registered.run_id, return_type="list")
    by_rank = sorted(traces, key=lambda t: int(t.info.tags[SIDE_BY_SIDE_TAG]))
    # One trace per prompt on the registered run, in the table's order: most disagreement first.
    assert [t.info.tags["tunegate.doc_id"] for t in by_rank] == ["2", "1", "0"]
    first = by_rank[0].data.spans[0]
    assert first.inputs == {"prompt": "Who maintains you?", "reference": "The platform team."}
    assert first.outputs == {"baseline": "The platform team.", "candidate": "Mail <EMAIL>"}  # serve.redact_pii
    assert first.attributes["token_f1 candidate"] == 0.2
    links = review_links(tracking, client, registered.run_id)
    assert links["side_by_side"] == (f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs/{registered.run_id}"
                                     "/artifacts/eval/side_by_side.json")
    assert reviewer_preferences(tracking, registered.run_id) is None  # none yet

    def prefer(trace, value, who, kind="HUMAN"):
        mlflow.log_feedback(trace_id=trace.info.trace_id, name="preference", value=value,
                            source=AssessmentSource(source_type=kind, source_id=who))

    prefer(by_rank[0], "baseline", "ana")
    prefer(by_rank[1], "candidate", "ana")
    prefer(by_rank[1], "Candidate", "ben")
    prefer(by_rank[2], "baseline", "judge-model", kind="LLM_JUDGE")  # not a reviewer: not counted
    promotion = promote.fn(needs_review(), registered, tracking,
                           ReviewDecision(approve=True, reviewer="ana", reason="read the answers side by side"))
    counts = {"candidate": 2, "baseline": 1, "tie": 0, "other": 0, "prompts": 2, "reviewers": 2}
    assert promotion.promoted and promotion.preferences == counts
    assert json.loads(client.get_model_version("test-model", registered.version).tags["review.preferences"]) == counts
    report = (Path(client.download_artifacts(registered.run_id, "gate/decision.md", str(Path(adapter).parent))))
    assert "## Reviewer preferences" in report.read_text()
    assert "2 reviewer(s) on 2 prompt(s) preferred: candidate 2, baseline 1, tie 0 (MLflow" in report.read_text()

    # A run nobody gave a preference on records nothing: no tag, no report section, none in the summary.
    quiet = register_once(tracking, adapter, 0.5, evals=answered_evals())
    assert promote.fn(needs_review(), quiet, tracking).preferences is None
    assert "review.preferences" not in client.get_model_version("test-model", quiet.version).tags
    assert not [f for f in client.list_artifacts(quiet.run_id, "gate")]
    # A run without answers to show (no side-by-side table) gets no links.
    assert review_links(tracking, client, register_once(tracking, adapter, 0.5).run_id) == {}
