import sys
from pathlib import Path

import pytest

from tasks.evaluate import evaluate_model, materialize_tasks

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "evals"))
import tunegate_metrics  # noqa: E402


def test_token_f1_and_containment_by_hand():
    assert tunegate_metrics.token_f1("I am Gatekeeper.", "Hello! I am Gatekeeper") == pytest.approx(2 * 1 * 0.75 / 1.75)
    assert tunegate_metrics.token_f1("nothing shared", "I am Gatekeeper") == 0.0
    doc = {"reference": "I am Gatekeeper."}
    assert tunegate_metrics.domain_results(doc, ["Sure: i am gatekeeper, hi"])["contains"] == 1.0
    # CJK has no spaces: it is scored per character, not as one giant token.
    assert tunegate_metrics.token_f1("我是助手", "我是 Gatekeeper 助手") == pytest.approx(2 * 1 * 0.8 / 1.8)


def test_bits_per_byte_from_loglikelihood():
    import math

    out = tunegate_metrics.general_results({"reference": "abcd"}, [(-4 * math.log(2), True)])
    assert out["bits_per_byte"] == pytest.approx(1.0)


def test_lm_eval_scores_the_tiny_model_per_task_and_per_sample(prepared, tmp_path):
    tasks_dir = materialize_tasks(prepared, 8, ["domain", "general"], tmp_path / "tasks")
    assert str(Path(prepared["domain_eval"]).resolve()) in (tasks_dir / "tunegate_domain.yaml").read_text()
    result = evaluate_model("base", prepared["base_model_path"], None, tasks_dir, ["domain", "general"], 16, tmp_path)
    domain, general = result["tasks"]["tunegate_domain"], result["tasks"]["tunegate_general"]
    assert domain["n"] == prepared["counts"]["domain_eval"] and general["n"] == 60
    assert 0.0 <= domain["metrics"]["token_f1"] <= 1.0
    # A barely trained 1k-vocab model: far worse than SmolLM2's ~0.7, far better than uniform (~10 bits).
    assert 1.0 < general["metrics"]["bits_per_byte"] < 9.0
    assert general["metrics"]["bits_per_byte"] == pytest.approx(
        sum(general["samples"]["bits_per_byte"]) / 60, rel=1e-6)
    assert (tmp_path / "eval_base.json").exists()
