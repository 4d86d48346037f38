"""A candidate the gate cannot decide waits for a person: the flow run pauses with a form, the Prefect API resumes it."""

import threading
import time

import pytest
from mlflow import MlflowClient
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
from prefect.flow_runs import resume_flow_run

from tasks.promote import ReviewDecision, await_review, promote
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
