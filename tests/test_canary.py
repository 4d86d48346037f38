"""A canary in the serve-model app (in process, real tiny-model versions from a real sqlite registry): a sticky
share of users gets the candidate, every trace names its arm, and the guard promotes it on its users' ratings.

200 users at share 0.3: the candidate's share has sigma sqrt(0.3 * 0.7 / 200) = 0.032, so it must lie in
0.3 +- 3 sigma = [0.203, 0.397] (the hash is fixed, so this run's count is the same every time).

    pytest -m slow tests/test_canary.py     # the in-app canary, ~1.5 min on 2 cores
"""

import math
import os
import time
from datetime import datetime, timedelta, timezone

import pytest
from fastapi.testclient import TestClient

from serve.app import build_app
from serve.batching import Batcher
from serve.canary import in_canary
from serve.champion import ChampionFollower
from serve.tracing import RequestTracer, trace_id_of
from tasks.guard import judge_canary, served_since, settle_canary
from tasks.monitor import MonitorWindow, measure_serving, report_markdown
from tasks.promote import promote_version
from test_guard import on_candidate
from test_serve import register_adapter
from tunegate.config import CanaryConfig, GuardConfig, ServeConfig
from tunegate.registry import CANDIDATE, CHAMPION, connect, get_alias
from tunegate.traces import ARM_TAG

os.environ["MLFLOW_ENABLE_ASYNC_TRACE_LOGGING"] = "false"
QUESTION = [{"role": "user", "content": "Name a colour."}]


def test_the_hash_split_is_sticky_and_close_to_the_share():
    keys = [f"user:{i}" for i in range(20_000)]
    share = sum(in_canary(k, 0.3) for k in keys) / len(keys)
    assert abs(share - 0.3) < 3 * math.sqrt(0.3 * 0.7 / len(keys))
    assert [in_canary(k, 0.3) for k in keys[:100]] == [in_canary(k, 0.3) for k in keys[:100]]
    assert not any(in_canary(k, 0.0) for k in keys[:100])


def test_the_candidate_answers_only_while_it_is_loaded_and_differs_from_the_champion():
    from types import SimpleNamespace

    from serve.canary import pick_arm, user_key

    v1, v2 = SimpleNamespace(version="1"), SimpleNamespace(version="2")
    champion, candidate = SimpleNamespace(current=v1), SimpleNamespace(current=v2)
    users = [user_key(f"u{i}", QUESTION) for i in range(400)]
    assert {pick_arm(champion, candidate, 0.3, u)[1] for u in users} == {"champion", "candidate"}
    assert all(pick_arm(champion, candidate, 0.3, u) == ((v2, "candidate") if in_canary(u, 0.3) else
                                                         (v1, "champion")) for u in users)
    for other in (None, SimpleNamespace(current=None), SimpleNamespace(current=v1)):  # off, unloaded, the same
        assert all(pick_arm(champion, other, 0.3, u) == (v1, "champion") for u in users)
    assert pick_arm(SimpleNamespace(current=None), candidate, 0.3, users[0]) == (None, "champion")  # 503, no canary
    # No user id: the first user message is the key, so one conversation stays on one arm.
    assert user_key(None, [{"role": "system", "content": "s"}, *QUESTION]) == user_key(None, QUESTION) != users[0]


@pytest.mark.slow  # ~1.5 min on 2 cores: 223 requests, each traced synchronously to sqlite, and 200 ratings
def test_a_canary_serves_a_sticky_share_and_is_promoted_on_its_users_ratings(tracking, tiny_model, tmp_path):
    name = tracking.registered_model
    v1 = register_adapter(tracking, tiny_model, tmp_path / "a1", seed=1)
    v2 = register_adapter(tracking, tiny_model, tmp_path / "a2", seed=2)
    promote_version(tracking, v1)
    on_candidate(tracking, v2, v1)  # as the promote stage does with serve.canary set
    client, _ = connect(tracking)
    champion, candidate = ChampionFollower(client, name), ChampionFollower(client, name, alias=CANDIDATE)
    assert champion.check_once() and candidate.check_once()
    app = build_app(champion, RequestTracer(tracking, ServeConfig()), name, 1, Batcher(), candidate, 0.3)
    with TestClient(app) as http:
        def ask(user=None, messages=QUESTION):
            body = {"model": name, "messages": messages, "max_tokens": 1, **({"user": user} if user else {})}
            reply = http.post("/v1/chat/completions", json=body)
            assert reply.status_code == 200, reply.text
            return reply.json()

        replies = {f"user-{i}": ask(f"user-{i}") for i in range(200)}
        arm = {u: r["system_fingerprint"].rsplit("/v", 1)[1] for u, r in replies.items()}
        share = list(arm.values()).count(v2) / 200
        assert abs(share - 0.3) <= 3 * math.sqrt(0.3 * 0.7 / 200), share
        for user in list(arm)[:20]:  # sticky: the same user, the same version
            assert ask(user)["system_fingerprint"] == f"{name}/v{arm[user]}"
        anonymous = [{"role": "user", "content": "who are you, no user id sent"}]
        assert len({ask(None, anonymous)["system_fingerprint"] for _ in range(3)}) == 1
        assert http.get("/health").json()["canary"] == {"candidate": v2, "serving": v2, "share": 0.3,
                                                         "load_errors": {}}

        # Each trace names its arm; users rate what they got: the candidate's answers are liked more.
        now = datetime.now(timezone.utc)
        tagged = {t.info.trace_id: t.info.tags[ARM_TAG] for t in served_since(tracking, now - timedelta(hours=1), now)}
        for i, (user, reply) in enumerate(replies.items()):
            assert tagged[trace_id_of(reply["id"])] == ("candidate" if arm[user] == v2 else "champion")
            down = i % 10 == 0 if arm[user] == v2 else i % 5 < 2  # ~10% against ~40%
            r = http.post("/v1/feedback", json={"request_id": reply["id"], "user": user,
                                                "rating": "down" if down else "up"})
            assert r.status_code == 200, r.text
        while http.get("/health").json()["feedback_pending"]:  # written in the background
            time.sleep(0.2)

        now = datetime.now(timezone.utc)
        arms = {v.arm: v for v in measure_serving.fn(tracking, MonitorWindow(start=now - timedelta(hours=1),
                                                                             end=now + timedelta(hours=1))).versions}
        assert (arms["candidate"].version, arms["champion"].version) == (v2, v1)
        assert arms["candidate"].requests + arms["champion"].requests == 200 + 20 + 3  # with the repeats
        assert arms["candidate"].ratings == list(arm.values()).count(v2) and arms["champion"].ratings == 200 - arms[
            "candidate"].ratings
        assert "| candidate |" in report_markdown(measure_serving.fn(tracking, MonitorWindow(
            start=now - timedelta(hours=1), end=now + timedelta(hours=1))))

        verdict = judge_canary.fn(tracking, GuardConfig(), CanaryConfig(share=0.3, min_ratings=40, max_hours=24))
        assert verdict.status == "ok" and verdict.increase < 0, verdict.reason
        assert settle_canary.fn(tracking, verdict).status == "promoted"
        assert str(get_alias(client, name, CHAMPION).version) == v2 and get_alias(client, name, CANDIDATE) is None
        candidate.check_once()
        champion.check_once()
        assert candidate.current is None and champion.current.version == v2
        assert {ask(f"user-{i}")["system_fingerprint"] for i in range(10)} == {f"{name}/v{v2}"}
