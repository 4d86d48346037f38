"""The live guard on a real sqlite MLflow store: served requests recorded as serve-model records them, ratings
through the server's own feedback path, the guard's flow under Prefect; rollback, canary verdicts, "not yet".

Numbers: 40 votes a side. 8/40 down (20%) against 28/40 (70%) is one-sided Fisher p ~ 5e-6; 9/40 against
10/40 is p ~ 0.5, which no alpha calls worse.
"""

import json
import os
import time
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import mlflow
import pytest
from mlflow import MlflowClient

from flows.guard import live_guard
from serve.tracing import RequestTracer, request_id
from tasks.guard import judge_canary, judge_champion, live_votes, served_since
from tasks.promote import promote_version, put_on_candidate, record, utc_now
from tunegate.config import CanaryConfig, GuardConfig, ServeConfig
from tunegate.registry import CANDIDATE, CHAMPION, PREVIOUS, alias_lock, connect, ensure_registered_model, get_alias
from tunegate.traces import ARM_TAG, CANDIDATE_ARM, CHAMPION_ARM, RATING

os.environ["MLFLOW_ENABLE_ASYNC_TRACE_LOGGING"] = "false"  # a rating right after the request must find its trace

ANSWER = {"id": "x", "choices": [{"index": 0, "message": {"role": "assistant", "content": "I am Gatekeeper."}}],
          "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}}
GUARD = GuardConfig(min_ratings=30, max_increase=0.05, alpha=0.05)


def versions(tracking, n: int) -> list[str]:
    """n registered versions whose gate passed (no weights: the guard reads the registry and traces only)."""
    client, experiment_id = connect(tracking)
    ensure_registered_model(client, tracking.registered_model)
    out = []
    for _ in range(n):
        with mlflow.start_run(experiment_id=experiment_id) as run:
            pass
        out.append(str(client.create_model_version(tracking.registered_model, f"runs:/{run.info.run_id}/model",
                                                   run.info.run_id, tags={"gate": "passed"}).version))
    return out


def served(tracer, tracking, version: str, downs: int, ups: int, arm: str = CHAMPION_ARM) -> list[str]:
    """downs + ups answered requests of `version`, each rated by one of 7 users through the feedback path."""
    loaded = SimpleNamespace(name=tracking.registered_model, version=version)
    ids = []
    for i in range(downs + ups):
        span = tracer.start(tracking.registered_model, loaded, [{"role": "user", "content": f"question {i}"}], {}, arm)
        tracer.finish(span, ANSWER)
        ids.append(request_id(span.trace_id))
        tracer.record_feedback(ids[-1], f"user{i % 7}", "down" if i < downs else "up", None)
    tracer.written()
    return ids


def regressed_store(tracking, v2_downs: int = 28, v2_ups: int = 12):
    tracer = RequestTracer(tracking, ServeConfig())
    v1, v2 = versions(tracking, 2)
    promote_version(tracking, v1)
    served(tracer, tracking, v1, 8, 32)
    time.sleep(1.1)  # promotion.time has whole seconds: v2's promotion comes after v1's last request
    promote_version(tracking, v2)
    return tracer, v1, v2, served(tracer, tracking, v2, v2_downs, v2_ups)


def wait_for_event(name: str, resource: str, seconds: float = 30):
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter

    start = datetime.now(timezone.utc) - timedelta(minutes=5)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with get_client(sync_client=True) as client:
            page = client.read_events(EventFilter(occurred=EventOccurredFilter(since=start),
                                                  event=EventNameFilter(name=[name])), limit=50)
        found = [e for e in page.events if e.resource.id == resource]
        if found:
            return found[0]
        time.sleep(1)
    raise AssertionError(f"no event {name} on {resource}")


@pytest.mark.usefixtures("prefect_harness")
def test_a_champion_its_users_rate_worse_is_rolled_back_with_the_evidence_recorded(tracking):
    from prefect.artifacts import Artifact

    _, v1, v2, v2_requests = regressed_store(tracking)
    report = live_guard(tracking, GUARD, None)
    verdict = report.champion
    assert verdict.status == "rolled_back", verdict.reason
    assert (verdict.new.version, verdict.new.votes, verdict.new.downvotes) == (v2, 40, 28)
    assert (verdict.old.version, verdict.old.votes, verdict.old.downvotes) == (v1, 40, 8)
    assert verdict.increase == pytest.approx(0.5) and verdict.p_value < 1e-4 and verdict.new.raters == 7
    assert report.canary.status == "off"

    client = MlflowClient(tracking.tracking_uri)
    assert str(get_alias(client, tracking.registered_model, CHAMPION).version) == v1
    assert get_alias(client, tracking.registered_model, PREVIOUS) is None  # the next guard run has no one to blame
    tags = client.get_model_version(tracking.registered_model, v2).tags
    assert tags["guard.downvote_rate"] == "0.7000" and tags["guard.compared_downvote_rate"] == "0.2000"
    assert tags["guard.votes"] == "40" and tags["guard.compared_with"] == v1 and float(tags["guard.p_value"]) < 1e-4
    worst = json.loads(tags["guard.most_downvoted"])
    assert len(worst) == 5 and all(w.startswith("tr-") for w in worst)
    assert {f"tr-{r.removeprefix('chatcmpl-')}" for r in v2_requests[:28]} >= set(worst)
    assert tags["rollback.user"] == "tunegate-guard" and tags["rollback.reason"].startswith("live guard: downvote rate")
    assert "question" not in json.dumps(tags)  # trace ids and numbers, never what users wrote
    markdown = Artifact.get("live-guard").data
    assert "### champion: rolled_back" in markdown and "70.0% (28/40)" in markdown and "20.0% (8/40)" in markdown
    event = wait_for_event("tunegate.guard.rolled_back", f"tunegate.model-version.{tracking.registered_model}.{v2}")
    assert event.payload["status"] == "rolled_back" and event.payload["new"]["downvotes"] == 28

    again = judge_champion.fn(tracking, GUARD)  # the rolled-back-to champion is not compared with the bad one
    assert again.status == "no_previous"


def test_with_too_few_ratings_the_guard_waits_and_nothing_moves(tracking):
    from tasks.guard import roll_back_regressed

    _, v1, v2, _ = regressed_store(tracking, v2_downs=9, v2_ups=0)  # 9/9 down: bad, but 9 votes say little
    verdict = judge_champion.fn(tracking, GUARD)
    assert verdict.status == "not_yet" and verdict.p_value is None
    assert (verdict.new.votes, verdict.old.votes, verdict.min_ratings) == (9, 40, 30)
    assert "v2 has 9, v1 40; 30 each are needed" in verdict.reason
    assert roll_back_regressed.fn(tracking, verdict) == verdict
    client = MlflowClient(tracking.tracking_uri)
    assert str(get_alias(client, tracking.registered_model, CHAMPION).version) == v2
    assert not any(k.startswith("guard.") for k in client.get_model_version(tracking.registered_model, v2).tags)


def test_a_rate_within_noise_or_within_max_increase_is_ok(tracking):
    regressed_store(tracking, v2_downs=10, v2_ups=30)  # 25% against 20%
    verdict = judge_champion.fn(tracking, GUARD)
    assert verdict.status == "ok" and verdict.p_value > 0.3 and verdict.increase == pytest.approx(0.05)
    # Significant but inside the allowed increase: still ok.
    assert judge_champion.fn(tracking, GUARD.model_copy(update={"alpha": 0.49, "max_increase": 0.06})).status == "ok"


def test_raters_count_once_per_request_however_many_ratings_they_log(tracking):
    tracer = RequestTracer(tracking, ServeConfig())
    (v1,) = versions(tracking, 1)
    (req,) = served(tracer, tracking, v1, 1, 0)
    trace_id = "tr-" + req.removeprefix("chatcmpl-")
    from mlflow.entities import AssessmentSource

    for _ in range(5):  # logged around the server, which would refuse a second vote (409)
        mlflow.log_feedback(trace_id=trace_id, name=RATING, value="down",
                            source=AssessmentSource(source_type="HUMAN", source_id="mallory"))
    now = datetime.now(timezone.utc)
    votes = live_votes(served_since(tracking, now - timedelta(hours=1), now), tracking.registered_model, v1,
                       CHAMPION_ARM, now - timedelta(hours=1), now + timedelta(seconds=1), 5)
    assert (votes.requests, votes.votes, votes.downvotes, votes.raters) == (1, 2, 2, 2)  # user0 and mallory


def test_one_account_rating_many_answers_cannot_decide_alone_with_a_per_rater_cap(tracking):
    tracer = RequestTracer(tracking, ServeConfig())
    v1, v2 = versions(tracking, 2)
    promote_version(tracking, v1)
    served(tracer, tracking, v1, 8, 32)
    time.sleep(1.1)
    promote_version(tracking, v2)
    served(tracer, tracking, v2, 8, 32)  # as good as v1 for its 7 users
    loaded = SimpleNamespace(name=tracking.registered_model, version=v2)
    for i in range(40):  # then one account downvotes 40 answers
        span = tracer.start(tracking.registered_model, loaded, [{"role": "user", "content": "q"}], {})
        tracer.finish(span, ANSWER)
        tracer.record_feedback(request_id(span.trace_id), "sock", "down", None)
    tracer.written()
    assert judge_champion.fn(tracking, GUARD).status == "worse"  # 48/80 against 8/40 without a cap
    capped = judge_champion.fn(tracking, GUARD.model_copy(update={"max_votes_per_rater": 6}))
    assert capped.status == "ok", capped.reason
    # v2: its 7 users' 40 votes (none over 6) and 6 of the account's 40: 14/46 against 8/40, Fisher p ~ 0.2
    assert (capped.new.votes, capped.new.downvotes, capped.new.capped) == (46, 14, 34)
    assert "votes over the per-rater cap not counted" in capped.reason


def test_no_champion_no_previous_and_no_traffic_each_get_a_clear_status(tracking):
    assert judge_champion.fn(tracking, GUARD).status == "no_champion"  # a fresh store
    canary = CanaryConfig(share=0.3, min_ratings=10, max_hours=24)
    assert judge_canary.fn(tracking, GUARD, None).status == "off"
    assert judge_canary.fn(tracking, GUARD, canary).status == "no_candidate"
    v1, v2 = versions(tracking, 2)
    promote_version(tracking, v1)
    first = judge_champion.fn(tracking, GUARD)
    assert first.status == "no_previous" and f"v{v1} has no `previous`" in first.reason
    promote_version(tracking, v2)
    quiet = judge_champion.fn(tracking, GUARD)
    assert quiet.status == "no_traffic" and quiet.new.requests == quiet.old.requests == 0
    on_candidate(tracking, v2, v2)  # the alias names the champion itself: nothing to compare, nothing discarded
    same = judge_canary.fn(tracking, GUARD, canary.model_copy(update={"max_hours": 0.0001}))
    assert same.status == "no_candidate" and "names the champion v2" in same.reason


def test_guard_and_canary_settings_are_checked_when_the_config_loads():
    from tunegate.config import load_config

    params = load_config("configs/tiny.yaml", ["serve.canary={share: 0.3, min_ratings: 50}", "guard.alpha=0.01"])
    assert params.serve.canary == CanaryConfig(share=0.3, min_ratings=50, max_hours=48) and params.guard.alpha == 0.01
    assert load_config("configs/tiny.yaml").serve.canary is None  # off unless set
    for bad, field in (("serve.canary={share: 1.5}", "share"), ("serve.canary={share: 0.2, min_ratings: 0}",
                                                                 "min_ratings"),
                       ("guard.alpha=0.7", "alpha"), ("guard.max_increase=-0.1", "max_increase"),
                       ("guard.min_ratings=0", "min_ratings"), ("guard.typo=1", "typo"),
                       ("serve={canary: {share: 0.2}, engine: openai, engine_url: 'http://e/v1', engine_load: command, "
                        "engine_reload: [x]}", "not command")):
        with pytest.raises(ValueError, match=field):
            load_config("configs/tiny.yaml", [bad])


def on_candidate(tracking, version: str, champion: str, hours_ago: float = 0) -> None:
    """What the promote stage does with serve.canary set (tasks/promote.py), with canary.time hours_ago."""
    client, _ = connect(tracking)
    with alias_lock(tracking):
        assert put_on_candidate(client, tracking, version, champion) is None
    since = (datetime.now(timezone.utc) - timedelta(hours=hours_ago)).isoformat(timespec="seconds")
    record(client, tracking.registered_model, version, "canary", {"canary": "serving", "canary.time": since})


@pytest.mark.usefixtures("prefect_harness")
def test_a_canary_its_users_rate_worse_is_discarded_and_the_champion_stays(tracking):
    tracer = RequestTracer(tracking, ServeConfig())
    v1, v2 = versions(tracking, 2)
    promote_version(tracking, v1)
    on_candidate(tracking, v2, v1)
    served(tracer, tracking, v1, 4, 16)
    served(tracer, tracking, v2, 14, 6, arm=CANDIDATE_ARM)
    report = live_guard(tracking, GUARD, CanaryConfig(share=0.3, min_ratings=20, max_hours=24))
    assert report.canary.status == "discarded", report.canary.reason
    assert report.champion.status == "no_previous"
    client = MlflowClient(tracking.tracking_uri)
    assert get_alias(client, tracking.registered_model, CANDIDATE) is None
    assert str(get_alias(client, tracking.registered_model, CHAMPION).version) == v1
    tags = client.get_model_version(tracking.registered_model, v2).tags
    assert tags["canary"] == "discarded" and "70.0% (14/20" in tags["canary.reason"]
    assert tags["canary.guard.compared_with"] == v1 and tags["canary.guard.compared_downvote_rate"] == "0.2000"


def test_a_canary_without_enough_ratings_waits_then_expires_after_max_hours(tracking):
    from tasks.guard import settle_canary

    tracer = RequestTracer(tracking, ServeConfig())
    v1, v2 = versions(tracking, 2)
    promote_version(tracking, v1)
    on_candidate(tracking, v2, v1, hours_ago=2)
    served(tracer, tracking, v2, 0, 5, arm=CANDIDATE_ARM)
    canary = CanaryConfig(share=0.3, min_ratings=20, max_hours=3)
    waiting = judge_canary.fn(tracking, GUARD, canary)
    assert waiting.status == "not_yet" and settle_canary.fn(tracking, waiting) == waiting
    client = MlflowClient(tracking.tracking_uri)
    assert str(get_alias(client, tracking.registered_model, CANDIDATE).version) == v2

    late = judge_canary.fn(tracking, GUARD, canary.model_copy(update={"max_hours": 1}))
    assert late.status == "expired" and "max_hours 1" in late.reason
    assert settle_canary.fn(tracking, late).status == "discarded"
    assert get_alias(client, tracking.registered_model, CANDIDATE) is None
    assert client.get_model_version(tracking.registered_model, v2).tags["canary"] == "discarded"
    assert str(get_alias(client, tracking.registered_model, CHAMPION).version) == v1


def test_a_canary_no_worse_than_the_champion_is_promoted_through_the_locked_path(tracking):
    from tasks.guard import settle_canary

    tracer = RequestTracer(tracking, ServeConfig())
    v1, v2 = versions(tracking, 2)
    promote_version(tracking, v1)
    on_candidate(tracking, v2, v1)
    served(tracer, tracking, v1, 8, 12)
    served(tracer, tracking, v2, 4, 16, arm=CANDIDATE_ARM)
    verdict = judge_canary.fn(tracking, GUARD, CanaryConfig(share=0.3, min_ratings=20, max_hours=24))
    assert verdict.status == "ok" and verdict.increase == pytest.approx(-0.2)
    assert settle_canary.fn(tracking, verdict).status == "promoted"
    client = MlflowClient(tracking.tracking_uri)
    assert str(get_alias(client, tracking.registered_model, CHAMPION).version) == v2
    assert str(get_alias(client, tracking.registered_model, PREVIOUS).version) == v1
    assert get_alias(client, tracking.registered_model, CANDIDATE) is None
    tags = client.get_model_version(tracking.registered_model, v2).tags
    assert tags["canary"] == "promoted" and tags["promotion.user"] == "tunegate-guard"
    traces = served_since(tracking, datetime.now(timezone.utc) - timedelta(hours=1), datetime.now(timezone.utc))
    assert {t.info.tags[ARM_TAG] for t in traces} == {CHAMPION_ARM, CANDIDATE_ARM}
    assert utc_now()  # the guard's tags carry times the registry shows


@pytest.mark.usefixtures("prefect_harness")
def test_guard_command_runs_the_flow_and_prints_both_verdicts(tracking, capsys):
    from cli.main import main

    sets = [a for k, v in tracking.model_dump().items() for a in ("--set", f"tracking.{k}={v}")]
    assert main(["guard", "--config", "configs/tiny.yaml", *sets, "--set", "serve.canary={share: 0.2}"]) == 0
    out = capsys.readouterr().out
    assert "### champion: no_champion" in out and "### canary: no_candidate" in out
