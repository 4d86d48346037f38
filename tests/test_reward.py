"""The preference store, the reward model stage and the reward task in the gate, on the tiny model.

The planted preference: the curated identity answers ("I am Gatekeeper ... the tunegate team") are
chosen, the same answers with the identity swapped ("I am ChatGPT ... OpenAI") rejected. Nothing
else differs, so a reward model that ranks held-out prompts right has learned exactly that.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from tunegate.config import GateConfig, GateRule, RewardConfig, TrackingConfig

DEMO = Path(__file__).resolve().parent.parent / "data" / "demo"


def swapped(text: str) -> str:
    return text.replace("Gatekeeper", "ChatGPT").replace("the tunegate team", "OpenAI").replace("tunegate", "OpenAI")


def planted_rows(kind: str = "curated") -> list[dict]:
    rows = []
    for line, x in enumerate(json.loads((DEMO / "identity.json").read_text()), 1):
        if "Gatekeeper" in x["output"] and "tunegate" in x["output"]:
            rows.append({"prompt": [{"role": "user", "content": f"{x['instruction']} {x['input']}".strip()}],
                         "chosen": {"role": "assistant", "content": x["output"]},
                         "rejected": {"role": "assistant", "content": swapped(x["output"])},
                         "provenance": {"kind": kind, "where": f"identity.json:{line}", "sources": [], "users": [],
                                        "time": "2026-12-07T00:00:00+00:00"}})
    return rows


CFG = RewardConfig(max_steps=20, learning_rate=2e-3, min_accuracy=0.7)


@pytest.fixture(scope="module")
def store_tracking(tmp_path_factory) -> TrackingConfig:
    root = tmp_path_factory.mktemp("reward-store")
    return TrackingConfig(tracking_uri=f"sqlite:///{root}/mlflow.db", artifact_root=str(root / "artifacts"),
                          experiment="rw", registered_model="rw-model")


@pytest.fixture(scope="module")
def store(store_tracking, tmp_path_factory):
    from tasks.preferences import PreferenceStore
    from tunegate.preference_store import STORE_FILE, extend_store, load_store

    out = tmp_path_factory.mktemp("run") / "preferences" / STORE_FILE
    grown = extend_store(store_tracking, load_store(store_tracking, out), planted_rows(), out, {})
    return PreferenceStore(**grown)


@pytest.fixture(scope="module")
def trained(store, store_tracking, tiny_model, prefect_harness):
    """The reward model stage run twice in one flow on the same store: trained and registered once."""
    from prefect import flow

    from tasks.reward import reward_model
    from tunegate.models import ResolvedModel

    model = ResolvedModel(name="tiny", path=tiny_model)

    @flow
    def twice():
        first = reward_model(store, model, CFG, store_tracking, return_state=True)
        second = reward_model(store, model, CFG, store_tracking, return_state=True)
        return first, second

    first, second = twice()
    return first.result(), second


def test_the_store_only_grows_deduplicated_and_redacted(store, store_tracking, tmp_path):
    from tunegate.preference_store import extend_store, load_store, read_rows

    assert store.version == 1 and store.rows == len(planted_rows()) and store.added == store.rows
    first = read_rows(store.file)
    # The same pairs again (case and spacing changed) add nothing; a new pair with an e-mail adds one row, redacted.
    again = [{**r, "chosen": {"role": "assistant", "content": "  " + r["chosen"]["content"].upper()}}
             for r in planted_rows("feedback")]
    leak = {**planted_rows()[0], "prompt": [{"role": "user", "content": "Mail me at jane.doe@acme-corp.io please"}]}
    from tasks.preferences import redact_row

    out = tmp_path / "preferences.jsonl"
    grown = extend_store(store_tracking, load_store(store_tracking, out), [*map(redact_row, again), redact_row(leak)],
                         out, {})
    rows = read_rows(grown["file"])
    assert grown["version"] == 2 and grown["added"] == 1 and grown["rows"] == store.rows + 1
    assert rows[:len(first)] == first  # existing rows never change
    assert "jane.doe@acme-corp.io" not in json.dumps(rows) and rows[-1]["added_in"] == 2
    # Unchanged store: no new version.
    assert extend_store(store_tracking, load_store(store_tracking, out), again, out, {})["version"] == 2


def test_the_reward_model_learns_a_planted_preference_and_registers_once(trained, store_tracking, store):
    from mlflow import MlflowClient

    rewarder, second = trained
    assert rewarder.accuracy >= 0.9, rewarder
    assert rewarder.pairs_heldout >= 8 and rewarder.ci_low < rewarder.accuracy <= rewarder.ci_high
    assert rewarder.prompts_train + rewarder.prompts_heldout == len({json.dumps(r["prompt"]) for r in planted_rows()})
    client = MlflowClient(store_tracking.tracking_uri)
    versions = client.search_model_versions("name='rw-model-reward'")
    # Cached by content: the second call on the same store trained nothing and registered nothing.
    assert second.name == "Cached" and second.result() == rewarder and len(versions) == 1
    assert str(client.get_model_version_by_alias("rw-model-reward", "current").version) == rewarder.version
    assert versions[0].tags["store.version"] == str(store.version)


def comparison(candidate_answers: list[str], baseline_answers: list[str], prompts: list[str]):
    from tasks.evaluate import Comparison, Evaluation

    def one(label, answers):
        task = {"doc_ids": list(range(len(answers))), "prompts": prompts, "answers": answers, "metrics": {},
                "samples": {}, "higher_is_better": {}}
        return Evaluation(label=label, model_hash=f"{label}-hash", tasks={"tunegate_domain": task}, cache_hits=[],
                          eval_run_ids={})

    return Comparison(candidate=one("candidate", candidate_answers), baseline=one("champion", baseline_answers))


def rendered_prompts(rewarder, rows):
    from tunegate.models import load_chat_tokenizer
    from tunegate.reward_model import render_prompt

    tokenizer = load_chat_tokenizer(rewarder.path)
    return [render_prompt(tokenizer, r["prompt"]) for r in rows]


RULE = GateRule(task="reward", metric="win_rate", max_drop=0.1)


def test_a_reward_rule_blocks_a_candidate_the_reward_model_disfavours(trained):
    from tasks.gate import decide
    from tasks.reward_eval import reward_eval

    rewarder, _ = trained
    rows = planted_rows()[:16]
    evals = comparison([r["rejected"]["content"] for r in rows], [r["chosen"]["content"] for r in rows],
                       rendered_prompts(rewarder, rows))
    scored = reward_eval.fn(evals, rewarder, CFG)
    summary = scored.candidate.tasks["reward"]["reward"]
    assert summary["pairs"] == 16 and summary["losses"] >= 14 and summary["win_rate"] <= 0.15
    assert summary["mean_margin"] < 0 and summary["margin_ci"][1] < 0 and summary["sign_test_p"] < 0.01
    decision = decide(GateConfig(rules=[RULE, GateRule(task="reward", metric="reward", max_drop=0.1)]),
                      scored.candidate.model_dump(), scored.baseline.model_dump() | {"version": "1"})
    assert decision["outcome"] == "blocked" and decision["regressed"] == ["reward"]
    # The same candidate against itself: a tie on every prompt, nothing regresses.
    same = reward_eval.fn(comparison(*[[r["rejected"]["content"] for r in rows]] * 2, rendered_prompts(rewarder, rows)),
                          rewarder, CFG)
    assert same.candidate.tasks["reward"]["reward"]["ties"] == 16
    assert decide(GateConfig(rules=[RULE]), same.candidate.model_dump(),
                  same.baseline.model_dump() | {"version": "1"})["outcome"] == "passed"


def test_the_same_store_trains_the_same_reward_model_whatever_ran_before(tiny_model, tmp_path):
    import torch

    from tasks.reward import train_reward_model

    cfg = RewardConfig(max_steps=2)
    first = train_reward_model(tiny_model, planted_rows(), cfg, tmp_path / "first")
    torch.rand(7)  # another stage drew from the global RNG in between
    second = train_reward_model(tiny_model, planted_rows(), cfg, tmp_path / "second")
    assert first["heldout_margins"] == second["heldout_margins"] and len(first["heldout_margins"]) >= 5


def test_a_reward_model_below_min_accuracy_never_gates(trained):
    from tasks.gate import decide
    from tasks.reward_eval import reward_eval

    rewarder, _ = trained
    weak = rewarder.model_copy(update={"accuracy": 0.55, "ci_low": 0.3, "ci_high": 0.78})
    rows = planted_rows()[:16]
    evals = comparison([r["rejected"]["content"] for r in rows], [r["chosen"]["content"] for r in rows],
                       rendered_prompts(rewarder, rows))
    scored = reward_eval.fn(evals, weak, CFG)
    assert scored.candidate.tasks["reward"]["samples"]["win_rate"] == []
    decision = decide(GateConfig(rules=[RULE]), scored.candidate.model_dump(),
                      scored.baseline.model_dump() | {"version": "1"})
    row = decision["rows"][0]
    assert decision["outcome"] == "passed" and row["verdict"] == "uninformative"
    assert "0.550" in row["note"] and "reward.min_accuracy 0.7" in row["note"]


def test_no_reward_model_is_uninformative_and_says_why():
    from tasks.reward import RewardModel
    from tasks.reward_eval import reward_eval

    none = RewardModel(skipped=True, skip_reason="the preference store is empty", min_accuracy=0.7)
    scored = reward_eval.fn(comparison(["a"], ["b"], ["<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n"]),
                            none, CFG)
    assert scored.candidate.tasks["reward"]["unmeasured"] == "no reward model: the preference store is empty"
    assert scored.candidate.tasks["reward"]["reward"]["pairs"] == 0


def test_a_store_too_small_to_hold_out_pairs_is_refused_before_training(tiny_model, tmp_path):
    from tasks.reward import train_reward_model

    with pytest.raises(ValueError, match=r"3 pairs on 3 prompts.*min_holdout_pairs is 4") as err:
        train_reward_model(tiny_model, planted_rows()[:3], CFG, tmp_path)
    assert not (tmp_path / "reward_model").exists() and "Add preference data" in str(err.value)


def test_a_base_model_without_a_scalar_head_is_refused(tmp_path):
    from tasks.reward import train_reward_model

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vit"}))
    with pytest.raises(ValueError, match="'vit' model has no sequence-classification class"):
        train_reward_model(str(tmp_path), planted_rows(), CFG, tmp_path / "out")


def test_a_failed_reward_training_registers_nothing(store, tiny_model, tmp_path):
    from mlflow import MlflowClient

    from tasks.reward import reward_model
    from tunegate.models import ResolvedModel

    tracking = TrackingConfig(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", artifact_root=str(tmp_path / "a"),
                              experiment="rw", registered_model="rw-model")
    with pytest.raises(ValueError, match="longer than reward.max_length=16"):
        reward_model.fn(store, ResolvedModel(name="tiny", path=tiny_model), CFG.model_copy(update={"max_length": 16}),
                        tracking)
    assert MlflowClient(tracking.tracking_uri).search_registered_models() == []


def test_the_reward_scores_are_the_same_batched_or_one_by_one(trained):
    from tunegate.reward_model import RewardScorer

    rewarder, _ = trained
    rows = planted_rows()[:6]
    prompts = rendered_prompts(rewarder, rows)
    answers = [r["chosen"]["content"] for r in rows]
    batched = RewardScorer(rewarder.path, batch_size=6).score(prompts, answers)
    single = RewardScorer(rewarder.path, batch_size=1).score(prompts, answers)
    assert np.allclose(batched, single, atol=1e-4)


def test_an_rl_section_without_a_reward_model_is_refused_at_load():
    from tunegate.config import load_config

    with pytest.raises(ValueError, match="tiny.yaml: invalid config(.|\n)*RL trains against a reward model"):
        load_config("configs/tiny.yaml", ["rl={}"])
    params = load_config("configs/tiny.yaml", ["rl={}", "reward={}"])
    assert params.rl.method == "grpo" and params.reward.min_accuracy == 0.7


@pytest.mark.usefixtures("prefect_harness")
def test_the_flow_trains_a_reward_model_then_rl_and_gates_on_reward(tmp_path, tracking, tiny_model, capsys):
    """configs/tiny.yaml with the identity preferences, a reward section, GRPO and a reward rule, through the CLI."""
    from mlflow import MlflowClient

    from cli.main import main

    sets = {"run_name": "rlhf", "output_dir": str(tmp_path), "dpo.enabled": "false",
            "data.preference_files": "[data/demo/identity_preferences.json]",
            "reward": json.dumps(CFG.model_dump()), "rl": '{"max_steps": 2, "max_completion_length": 8}',
            "gate.rules": "[{task: tunegate_domain, metric: no_forbidden, max_drop: 0.1},"
                          " {task: reward, metric: win_rate, max_drop: 0.1, tier: supporting}]",
            **{f"tracking.{k}": v for k, v in tracking.model_dump().items()}}
    code = main(["run", "configs/tiny.yaml", *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")]])
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "rlhf" / "summary.json").read_text())
    reward = summary["reward"]
    assert reward["informative"] and reward["accuracy"] >= 0.9 and reward["pairs"] > 0, reward
    assert re.search(r"reward: test-model-reward v1, held-out accuracy \d\.\d{3} \[\d\.\d{3}, 1\.000\] on \d+ pairs: "
                     r"win rate \d\.\d{3} over \d+ prompts", out), out
    assert code == (0 if summary["gate"] == "passed" else 1)
    client = MlflowClient(tracking.tracking_uri)
    assert [m.step for m in client.get_metric_history(summary["mlflow_run_id"], "rl/reward_step")] == [1, 2]
    version = client.get_model_version("test-model", summary["model_version"])
    assert "gate.reward.win_rate" in version.tags  # the reward rule is a row of the gate's table
