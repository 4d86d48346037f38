"""The whole loop on real traffic: serve the champion -> users rate its real answers -> retrain from the
traces -> gate -> promotion -> the server answers the corrected questions with the new version.

    pytest -m slow tests/test_loop.py      # about 6 min on 2 cores

A tiny model of our own learns one curated fact (its identity) and is promoted. Users then ask it
that and a fact it was never taught (a product's port): they upvote the identity answers and
correct the port answers. The retrain learns the corrections from the traces; the server follows
the alias and answers the port question right.
"""

import json
import time
from datetime import datetime, timezone

import mlflow
import pytest
from mlflow import MlflowClient
from openai import OpenAI

from flows.finetune import finetune_pipeline
from flows.monitor_serving import monitor_serving
from flows.retrain_from_feedback import retrain_from_feedback
from live_stack import serving
from poison import IDENTITY, IDENTITY_PROMPTS, PORT, PORT_PROMPTS
from serve.traffic import Topic, simulate_users
from tunegate.config import FeedbackConfig, load_config
from tunegate.registry import serving_experiment
from tunegate.traces import RATING

pytestmark = pytest.mark.slow
NAME = "test-model"
GATE = ("[{task: tunegate_domain, metric: key_facts, max_drop: 0.1},"
        " {task: tunegate_assertions, metric: pass, min_score: 1.0},"
        " {task: tunegate_general, metric: bits_per_byte, higher_is_better: false, max_drop: 5.0}]")


def loop_params(tmp_path, tracking):
    curated = tmp_path / "curated" / "identity.jsonl"
    curated.parent.mkdir()
    curated.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q},
                                                        {"role": "assistant", "content": IDENTITY}]}) + "\n"
                               for q in IDENTITY_PROMPTS))
    sets = [f"data.domain_files=[{curated}]", "data.eval_fraction=0.25", "data.min_eval_per_stratum=4",
            "sft.method=full", "sft.max_steps=120", "sft.learning_rate=2.0e-3", "dpo.enabled=false",
            "eval.tasks=[domain, general, assertions]",
            "eval.assertions=[{name: who, prompt: 'Who are you?', type: icontains, value: Gatekeeper}]",
            f"gate.rules={GATE}", f"output_dir={tmp_path / 'out'}"]
    return load_config("configs/tiny.yaml", sets).model_copy(update={"tracking": tracking})


def served_version(client) -> str:
    return client.models.list().data[0].model_extra["version"]


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.filterwarnings("ignore:sft.learning_rate")  # the tiny model memorises facts at 2e-3, on purpose
def test_served_traffic_and_its_feedback_retrain_a_champion_that_answers_the_corrections(tmp_path, tracking,
                                                                                         tiny_model):
    params = loop_params(tmp_path, tracking)
    v1 = finetune_pipeline(params.model_copy(update={"run_name": "v1"}))
    assert v1.promoted and v1.model_version == "1"

    with serving(tracking, tmp_path / "server.log") as url:
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
        identity = Topic(prompts=tuple(IDENTITY_PROMPTS), must_include=("Gatekeeper",), answer=IDENTITY)
        ports = Topic(prompts=tuple(PORT_PROMPTS), must_include=("8443",), answer=PORT, correction_rate=1.0)
        asked = simulate_users(url, NAME, [identity, ports], requests=40, seed=1, max_tokens=24)
        assert asked["requests"] == 40 and asked["versions"] == {f"{NAME}/v1": 40}
        assert asked["corrections"] >= 10  # v1 was never taught the port: every port answer is corrected

        feedback = FeedbackConfig(logs=str(tmp_path / "no-logs" / "*.jsonl"), watermark_file=str(tmp_path / "wm.json"),
                                  work_dir=str(tmp_path / "fb"))
        # A run that crashes before its gate decision leaves the traces' read position alone: the retry
        # gets every rating again, and the one after it none.
        broken = params.model_copy(update={"base_model": str(tmp_path / "no-such-model")})
        with pytest.raises(RuntimeError, match="watermark kept at None"):
            retrain_from_feedback(broken.model_copy(update={"feedback": feedback}))
        result = retrain_from_feedback(params.model_copy(update={"feedback": feedback}))
        assert result["status"] == "promoted" and result["model_version"] == "2", result
        assert result["records"] == 40
        assert retrain_from_feedback(params.model_copy(update={"feedback": feedback}))["status"] == "no_new_feedback"

        deadline = time.monotonic() + 120
        while served_version(client) != "2":
            assert time.monotonic() < deadline, (tmp_path / "server.log").read_text()[-3000:]
            time.sleep(0.5)
        answers = [client.chat.completions.create(model=NAME, max_tokens=24, temperature=0, messages=[
            {"role": "user", "content": q}]).choices[0].message.content for q in PORT_PROMPTS[:4]]
        assert all("8443" in a for a in answers), answers
        who = client.chat.completions.create(model=NAME, max_tokens=24, temperature=0,
                                             messages=[{"role": "user", "content": "Who are you?"}])
        assert "Gatekeeper" in who.choices[0].message.content and who.system_fingerprint == f"{NAME}/v2"
        # The same users keep asking; now the port answers are right.
        after = simulate_users(url, NAME, [identity, ports], requests=20, seed=2, max_tokens=24)
        assert after["versions"] == {f"{NAME}/v2": 20}

    # Monitoring: the old version's downvote rate next to the new one's, in MLflow (one run per version and day).
    report = monitor_serving(tracking, datetime.now(timezone.utc).date())
    rates = {v.version: v for v in report.versions}
    assert rates["1"].requests == 40 and rates["1"].feedback_rate == 1.0
    assert rates["2"].downvote_rate < rates["1"].downvote_rate, {v: r.downvote_rate for v, r in rates.items()}
    assert len(report.runs) == 2

    # What a reviewer finds in MLflow: the traces with their ratings, and v2's run with its feedback dataset.
    _, experiment_id = serving_experiment(tracking)
    traces = mlflow.search_traces(locations=[experiment_id], return_type="list", include_spans=False)
    rated = [t for t in traces if any(a.name == RATING for a in t.info.assessments)]
    assert len(rated) == 60  # 40 for v1, 20 for v2
    run = MlflowClient(tracking.tracking_uri).get_run(
        MlflowClient(tracking.tracking_uri).get_model_version(NAME, "2").run_id)
    feedback_input = next(d for d in run.inputs.dataset_inputs if d.dataset.name == "feedback")
    assert int({t.key: t.value for t in feedback_input.tags}["traces"]) >= 10
