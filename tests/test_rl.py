"""RL against the reward model (tasks/rl.py) on the tiny model: it learns, and it refuses bad input before any work."""

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from tasks.dpo import Aligned
from tasks.reward import RewardModel, train_reward_model
from tasks.rl import Reinforced, reward_functions, rl
from tasks.sft_training import train_sft
from tasks.evaluate import load_metrics_module
from tunegate.config import KeyFactTerms, RewardConfig, RLConfig, SFTConfig

from conftest import typed_prepared, typed_trained


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # The tiny model's matmuls are 64 wide: a second thread only adds synchronisation, and on a busy 2-core box
    # that made a 64x64 linear 7x slower (3.4 ms against 0.48 ms) and an RL step 14 s instead of 1 s.
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def stage_input(prepared):
    return typed_prepared(prepared)


@pytest.fixture(scope="module")
def aligned(prepared, stage_input, tmp_path_factory) -> Aligned:
    """An SFT adapter, passed on as DPO passes it when there are no pairs."""
    out = tmp_path_factory.mktemp("sft")
    cfg = SFTConfig(max_steps=4, batch_size=8, learning_rate=2e-3, warmup_steps=1, lora_r=4)
    sft = typed_trained(train_sft(prepared["base_model_path"], prepared["train"], None, cfg, out, out / "ckpt"),
                        stage_input)
    return Aligned(skipped=True, skip_reason="no preference pairs in the data", adapter=sft.adapter, model=None, sft=sft)


@pytest.fixture(scope="module")
def planted_reward(prepared, tmp_path_factory) -> RewardModel:
    """A reward model taught one planted preference: an answer that says Gatekeeper beats the same one saying ChatGPT."""
    pairs = []
    for i, line in enumerate(Path(prepared["train"]).read_text().splitlines()):
        row = json.loads(line)
        answer = row["completion"][-1]["content"]
        chosen = answer if "Gatekeeper" in answer else f"I am Gatekeeper. {answer}"
        pairs.append({"id": f"p{i}", "prompt": row["prompt"], "chosen": {"role": "assistant", "content": chosen},
                      "rejected": {"role": "assistant", "content": chosen.replace("Gatekeeper", "ChatGPT")}})
    cfg = RewardConfig(max_steps=30, batch_size=8, learning_rate=3e-3, lora_r=4, precision="fp32")
    summary = train_reward_model(prepared["base_model_path"], pairs, cfg, tmp_path_factory.mktemp("reward"))
    assert summary["accuracy"] >= 0.9  # the planted preference is learned, so RL has something real to climb
    return RewardModel(**{k: v for k, v in summary.items() if k != "heldout_margins"})


def identity_prompts(stage_input, tmp_path: Path, n: int) -> Path:
    """The first n identity prompts of the train split: every step samples all of them, so steps compare."""
    rows = [r for r in map(json.loads, open(stage_input.train)) if r["id"].startswith("identity")][:n]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("method", ["grpo", "rloo"])
def test_rl_raises_the_mean_reward_of_sampled_answers(method, aligned, planted_reward, stage_input, tmp_path, caplog):
    prepared = stage_input.model_copy(update={"train": str(identity_prompts(stage_input, tmp_path, 4))})
    cfg = RLConfig(method=method, max_steps=8, learning_rate=2e-2, num_generations=4, prompts_per_step=4,
                   max_completion_length=16, must_not_include=["ChatGPT"])
    with caplog.at_level("INFO", logger="tasks.rl"):
        out = rl.fn(aligned, planted_reward, prepared, cfg, str(tmp_path / "rl"), KeyFactTerms())
    rewards = [r for _, r in out.reward_curve]
    assert out.method == method and out.steps == 8 and len(rewards) == 8 and out.prompts == 4
    # seconds is rounded to 0.1 s and seconds_per_step to 0.01 s: they agree within 0.05 / 8 + 0.005
    assert out.seconds_per_step == pytest.approx(out.seconds / 8, abs=0.05 / 8 + 0.005 + 1e-9)
    assert out.precision == "fp32"
    assert len(out.step_seconds) == 8 and sum(out.step_seconds) <= out.seconds + 0.1
    # each part is logged every step, and the total is their weighted sum (weights 1)
    assert all(len(out.component_curves[c]) == 8 for c in ("reward_model", "key_facts", "no_forbidden"))
    assert out.reward_first == pytest.approx(sum(out.components_first.values()), abs=1e-4)
    assert "rl step 8: reward" in caplog.text and "reward_model" in caplog.text
    # here (8 steps, lr 2e-2): grpo 0.99 at step 1 -> 3.93 at step 8, rloo 0.99 -> 3.46; the reward model part moves
    assert np.mean(rewards[-3:]) > np.mean(rewards[:3]) + 0.5 and out.reward_last > out.reward_first
    assert out.kl_curve[0][1] == pytest.approx(0.0, abs=1e-6)  # step 1: the policy is its reference
    assert out.reference == "frozen copy of the policy's adapter"
    saved = load_file(Path(out.adapter) / "adapter_model.safetensors")
    assert not any(".ref." in k for k in saved)  # the frozen reference copy is not shipped
    before = load_file(Path(aligned.adapter) / "adapter_model.safetensors")
    assert any(not (before[k] == saved[k]).all() for k in before)
    policy = out.policy  # what evaluate and register read: DPO's result with RL's adapter
    assert policy.adapter == out.adapter and policy.sft == aligned.sft and isinstance(policy, Aligned)


def test_rewards_are_the_eval_metrics_checks():
    class Scorer:  # a stand-in reward model: the answer's length
        def score_messages(self, prompts, answers):
            return np.array([float(len(a)) for a in answers])

    reward_model, key_facts, no_forbidden = reward_functions(Scorer(), load_metrics_module())
    answers = [[{"role": "assistant", "content": "I am Gatekeeper."}],
               [{"role": "assistant", "content": "I am ChatGPT, by the tunegate team."}]]
    columns = {"reference": ["I am Gatekeeper, by the tunegate team.", "I am Gatekeeper."],
               "facts": [["gatekeeper", "tunegate", "team"], ["gatekeeper"]], "must_include": [[], []],
               "must_not_include": [["ChatGPT"], ["ChatGPT"]]}
    prompts = [[{"role": "user", "content": "Who are you?"}]] * 2
    assert reward_model(prompts, answers) == [16.0, 35.0]
    assert key_facts(prompts, answers, **columns) == pytest.approx([1 / 3, 0.0])
    assert no_forbidden(prompts, answers, **columns) == [1.0, 0.0]
    # a forbidden term its reference says is allowed ("我不是 ChatGPT"), as the eval metric allows it
    columns["reference"][1] = "I am not ChatGPT."
    assert no_forbidden(prompts, answers, **columns) == [1.0, 1.0]


def uninformative() -> RewardModel:
    return RewardModel(path="/nowhere", accuracy=0.55, ci_low=0.4, ci_high=0.7, pairs_heldout=20, min_accuracy=0.7)


@pytest.mark.parametrize("reward, why", [
    (None, "there is none"),
    (RewardModel(skipped=True, skip_reason="the preference store is empty", min_accuracy=0.7), "store is empty"),
    (uninformative(), "0.550 .* below reward.min_accuracy 0.7"),
])
def test_rl_refuses_without_an_informative_reward_model_before_any_work(reward, why, stage_input, aligned, tmp_path):
    # the policy's weights do not exist: the refusal has to come before anything is loaded
    missing = aligned.model_copy(update={"adapter": str(tmp_path / "no-adapter")})
    with pytest.raises(ValueError, match="reward.min_accuracy") as err:
        rl.fn(missing, reward, stage_input, RLConfig(), str(tmp_path / "rl"))
    assert err.match(why)
    assert not (tmp_path / "rl").exists()


def test_rl_refuses_zero_prompts(stage_input, aligned, planted_reward, tmp_path):
    empty = tmp_path / "train.jsonl"
    empty.write_text("")
    prepared = stage_input.model_copy(update={"train": str(empty)})
    with pytest.raises(ValueError, match="no train-split prompts"):
        rl.fn(aligned, planted_reward, prepared, RLConfig(), str(tmp_path / "rl"))
    assert not (tmp_path / "rl").exists()


def test_rl_is_skipped_without_an_rl_section(stage_input, aligned, tmp_path, caplog):
    with caplog.at_level("INFO", logger="tasks.rl"):
        out = rl.fn(aligned, None, stage_input, None, str(tmp_path / "rl"))
    assert isinstance(out, Reinforced) and out.skipped and out.policy == aligned
    assert "RL skipped: no `rl:` section in the config" in caplog.text
