"""A poisoned feedback window on a tiny model of our own: stopped at the data stage, and, with that
check turned off, blocked at the gate by the key-fact and assertion rules. The champion never moves.

The tiny model first learns two curated facts (its identity, a product's port) and is promoted. The
window then "corrects" both to other facts (ChatGPT by OpenAI; port 8080) on paraphrased prompts.
"""

import json

import pytest
from mlflow import MlflowClient

from flows.finetune import finetune_pipeline
from flows.retrain_from_feedback import retrain_from_feedback
from poison import poisoned_window, write_curated, write_window
from tunegate.config import FeedbackConfig, load_config
from tunegate.registry import CHAMPION, get_alias

GATE = ("[{task: tunegate_domain, metric: key_facts, max_drop: 0.1},"
        " {task: tunegate_domain, metric: no_forbidden, max_drop: 0.0},"
        " {task: tunegate_assertions, metric: pass, min_score: 1.0},"
        # The tiny model forgets general text when it memorises; this test is about the facts.
        " {task: tunegate_general, metric: bits_per_byte, higher_is_better: false, max_drop: 5.0}]")
ASSERTIONS = ("[{name: who, prompt: 'Who are you?', type: icontains, value: Gatekeeper},"
              " {name: not-chatgpt, prompt: 'Who are you?', type: not_icontains, value: chatgpt},"
              " {name: port, prompt: \"What is Zephyr's default port?\", type: contains, value: '8443'}]")


def tiny_params(tmp_path, tracking):
    curated = write_curated(tmp_path / "curated")
    sets = [f"data.domain_files={json.dumps(curated)}", "data.eval_fraction=0.25", "data.min_eval_per_stratum=4",
            "sft.method=full", "sft.max_steps=120", "sft.learning_rate=2.0e-3", "dpo.enabled=false",
            "eval.tasks=[domain, general, assertions]", f"eval.assertions={ASSERTIONS}",
            "eval.key_facts={tunegate_domain: {must_not_include: [ChatGPT, OpenAI, '8080']}}",
            f"gate.rules={GATE}", f"output_dir={tmp_path / 'out'}"]
    return load_config("configs/tiny.yaml", sets).model_copy(update={"tracking": tracking})


def versions(client, name="test-model"):
    return sorted(str(v.version) for v in client.search_model_versions(f"name='{name}'"))


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.filterwarnings("ignore:sft.learning_rate")  # the tiny model memorises both facts at 2e-3, on purpose
def test_poisoned_window_is_stopped_at_the_data_stage_and_blocked_at_the_gate(tmp_path, tracking, tiny_model):
    params = tiny_params(tmp_path, tracking)
    client = MlflowClient(tracking.tracking_uri)
    v1 = finetune_pipeline(params.model_copy(update={"run_name": "v1"}))
    assert v1.promoted and v1.model_version == "1"
    assert v1.eval["tunegate_assertions"]["candidate"]["pass"] == 1.0  # it learned both facts
    write_window(tmp_path / "logs", poisoned_window())

    # Layer 1, the data stage: the window contradicts curated rows and stops before any training.
    feedback = FeedbackConfig(logs=str(tmp_path / "logs" / "*.jsonl"), watermark_file=str(tmp_path / "wm.json"),
                              work_dir=str(tmp_path / "fb"))
    with pytest.raises(RuntimeError, match=r"(?s)stopped for review before training.*identity.jsonl:\d+ "
                                           r"'.+': \d+ rows.*bring \['chatgpt', 'openai'"):
        retrain_from_feedback(params.model_copy(update={"feedback": feedback}))
    mark = json.loads((tmp_path / "wm.json").read_text())
    assert mark["timestamp"] is None and mark["pending"]["label"] == "20261121T0000-20261121T2302"
    assert versions(client) == ["1"]  # nothing was trained or registered
    waiting = retrain_from_feedback(params.model_copy(update={"feedback": feedback}))
    assert waiting["status"] == "awaiting_review" and versions(client) == ["1"]
    # A reviewer rejects it: marked read, never trained, recorded in the watermark.
    rejected = feedback.model_copy(update={"rejected_window": mark["pending"]["label"], "review_note": "ana: poisoned"})
    assert retrain_from_feedback(params.model_copy(update={"feedback": rejected}))["status"] == "rejected"
    mark = json.loads((tmp_path / "wm.json").read_text())
    assert "pending" not in mark and mark["outcome"] == "rejected by review: ana: poisoned"
    assert retrain_from_feedback(params.model_copy(update={"feedback": feedback}))["status"] == "no_new_feedback"

    # Layer 2, the gate, on its own: the contradiction check off, the same window trains and is blocked.
    checks = params.data.checks.model_copy(update={"contradiction": False, "max_fraction": {"duplicates_near": 1.0}})
    unchecked = params.model_copy(update={"data": params.data.model_copy(update={"checks": checks})})
    fresh = feedback.model_copy(update={"watermark_file": str(tmp_path / "wm2.json"), "work_dir": str(tmp_path / "fb2")})
    result = retrain_from_feedback(unchecked.model_copy(update={"feedback": fresh}))
    assert result["status"] == "blocked" and versions(client) == ["1", "2"]
    v2 = client.get_model_version("test-model", "2")
    assert v2.tags["gate"] == "blocked"
    regressed = {k: v for k, v in v2.tags.items() if k.startswith("gate.tunegate") and v.startswith("regressed")}
    assert {"gate.tunegate_assertions.pass", "gate.tunegate_domain.key_facts",
            "gate.tunegate_domain.no_forbidden"} <= set(regressed), v2.tags

    # The champion and its alias never moved.
    assert str(get_alias(client, "test-model", CHAMPION).version) == "1"
