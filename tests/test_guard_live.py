"""The guard against a real `tunegate serve-model` process: v2 is promoted and served, its users downvote it
through /v1/feedback, `tunegate guard` rolls it back, and the server answers with v1 again within its poll.

    pytest -m slow tests/test_guard_live.py     # ~2 min on 2 cores
"""

import time

import pytest
from mlflow import MlflowClient
from openai import OpenAI

from cli.main import main
from live_stack import serving
from serve.client import send_feedback, wait_for_feedback
from tasks.promote import promote_version
from test_serve import cli_tracking, register_adapter
from tunegate.registry import CHAMPION, get_alias

pytestmark = pytest.mark.slow
VOTES = 24  # per version; guard.min_ratings is 20 below


def rate(url: str, client, name: str, version: str, downs: int) -> None:
    """VOTES requests answered by `version`, each rated by its own user: the first `downs` down, the rest up."""
    for i in range(VOTES):
        reply = client.chat.completions.create(model=name, max_tokens=2, user=f"u{i}",
                                               messages=[{"role": "user", "content": f"question {i}"}])
        assert reply.system_fingerprint == f"{name}/v{version}"
        send_feedback(url, reply.id, user=f"u{i}", rating="down" if i < downs else "up")
    wait_for_feedback(url)


@pytest.mark.usefixtures("prefect_harness")
def test_the_guard_rolls_back_a_served_champion_its_users_downvote_and_the_server_follows(tracking, tiny_model,
                                                                                         tmp_path, capsys):
    name = tracking.registered_model
    v1 = register_adapter(tracking, tiny_model, tmp_path / "a1", seed=1)
    v2 = register_adapter(tracking, tiny_model, tmp_path / "a2", seed=2)
    promote_version(tracking, v1)
    guard = ["--set", "guard.min_ratings=20", *cli_tracking(tracking)]
    with serving(tracking, tmp_path / "server.log") as url:
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
        rate(url, client, name, v1, downs=1)
        time.sleep(1.1)  # promotion.time has whole seconds
        promote_version(tracking, v2)
        deadline = time.monotonic() + 60
        while client.models.list().data[0].model_extra["version"] != v2:
            assert time.monotonic() < deadline, (tmp_path / "server.log").read_text()[-2000:]
            time.sleep(0.3)

        rate(url, client, name, v2, downs=1)  # as good as v1: the guard leaves it alone
        assert main(["guard", *guard]) == 0
        assert "### champion: ok" in capsys.readouterr().out
        assert str(get_alias(MlflowClient(tracking.tracking_uri), name, CHAMPION).version) == v2

        rate(url, client, name, v2, downs=18)  # now 18 of 24 down on top: 19/48 against 1/24, Fisher p ~ 0.001
        assert main(["guard", *guard]) == 0
        out = capsys.readouterr().out
        assert "### champion: rolled_back" in out and "39.6% (19/48" in out and "4.2% (1/24)" in out, out
        assert str(get_alias(MlflowClient(tracking.tracking_uri), name, CHAMPION).version) == v1

        start = time.monotonic()  # serve-model polls every 0.5 s here (live_stack.serving)
        while client.models.list().data[0].model_extra["version"] != v1:
            assert time.monotonic() - start < 30, (tmp_path / "server.log").read_text()[-2000:]
            time.sleep(0.2)
        reply = client.chat.completions.create(model=name, max_tokens=2, messages=[{"role": "user", "content": "hi"}])
        assert reply.system_fingerprint == f"{name}/v{v1}"
    tags = MlflowClient(tracking.tracking_uri).get_model_version(name, v2).tags
    assert tags["guard.votes"] == "48" and tags["guard.compared_with"] == v1
