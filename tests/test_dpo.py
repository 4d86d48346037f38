"""DPO on the tiny model, starting from an SFT adapter."""

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tasks.dpo import dpo, train_dpo
from tasks.sft_training import train_sft
from tunegate.config import DPOConfig, SFTConfig

from conftest import DEMO, typed_prepared, typed_trained


@pytest.fixture(scope="module")
def sft_adapter(prepared, tmp_path_factory):
    out = tmp_path_factory.mktemp("sft")
    cfg = SFTConfig(max_steps=4, batch_size=8, learning_rate=2e-3, warmup_steps=1, lora_r=4)
    return train_sft(prepared["base_model_path"], prepared["train"], None, cfg, out, out / "ckpt")


def write_pairs(path: Path, n: int) -> Path:
    """Chosen: the real answer. Rejected: the same answer reversed."""
    rows = json.loads((DEMO / "alpaca_general.json").read_text())[:n]
    with path.open("w") as f:
        for i, r in enumerate(rows):
            f.write(json.dumps({
                "id": f"p{i}", "prompt": [{"role": "user", "content": r["instruction"]}],
                "chosen": {"role": "assistant", "content": r["output"]},
                "rejected": {"role": "assistant", "content": r["output"][::-1]},
                "source": {"file": "pairs.jsonl", "line": i + 1}}) + "\n")
    return path


def test_dpo_raises_the_reward_margin_and_keeps_the_sft_adapter_as_reference(prepared, sft_adapter, tmp_path):
    pairs = write_pairs(tmp_path / "pairs.jsonl", 16)
    cfg = DPOConfig(max_steps=8, batch_size=4, learning_rate=5e-3, beta=0.1)
    out = train_dpo(prepared["base_model_path"], sft_adapter, str(pairs), cfg, "fp32", tmp_path / "dpo")
    margins = [m for _, m in out["margin_curve"]]
    assert out["steps"] == 8 and len(margins) == 8
    assert abs(margins[0]) < 1e-4  # step 1: policy == reference (the SFT adapter), so the margin is 0
    assert margins[-1] > 0.05 and sum(margins[-3:]) / 3 > sum(margins[:3]) / 3
    assert out["reference"] == "frozen copy of the SFT adapter"
    saved = load_file(Path(out["adapter"]) / "adapter_model.safetensors")
    assert not any(".ref." in k for k in saved)  # the frozen reference copy is not shipped
    before = load_file(Path(sft_adapter["adapter"]) / "adapter_model.safetensors")
    assert any(not (before[k] == saved[k]).all() for k in before)


def test_dpo_is_skipped_cleanly_without_pairs(prepared, sft_adapter, tmp_path, caplog):
    stage_input = typed_prepared(prepared)
    assert Path(stage_input.validated.clean_preferences).read_text() == ""  # the demo data has no pairs
    trained = typed_trained(sft_adapter, stage_input)
    with caplog.at_level("INFO"):
        out = dpo.fn(trained, stage_input, DPOConfig(), str(tmp_path))
    assert out.skipped and out.adapter == sft_adapter["adapter"] and out.sft == trained
    assert "DPO skipped: no preference pairs in the data" in caplog.text


def test_dpo_follows_the_configs_seed(prepared, sft_adapter, tmp_path):
    # The seed orders the pairs: the same seed repeats the run exactly, another seed gives other batches.
    pairs = write_pairs(tmp_path / "pairs.jsonl", 16)
    runs = {}
    for name, seed in [("a", 1), ("a_again", 1), ("b", 2)]:
        cfg = DPOConfig(max_steps=3, batch_size=4, learning_rate=5e-3, seed=seed)
        runs[name] = train_dpo(prepared["base_model_path"], sft_adapter, str(pairs), cfg, "fp32", tmp_path / name)
    assert runs["a"]["seed"] == 1 and runs["b"]["seed"] == 2
    assert runs["a"]["loss_curve"] == runs["a_again"]["loss_curve"]
    assert runs["a"]["margin_curve"][1:] != runs["b"]["margin_curve"][1:]


def test_dpo_trains_in_bf16_as_cpus_with_fast_bf16_get_it(prepared, sft_adapter, tmp_path):
    # precision: auto hands DPO the SFT's precision; on a CPU with AVX512-BF16 that is bf16.
    pairs = write_pairs(tmp_path / "pairs.jsonl", 16)
    cfg = DPOConfig(max_steps=4, batch_size=4, learning_rate=5e-3, beta=0.1)
    out = train_dpo(prepared["base_model_path"], sft_adapter, str(pairs), cfg, "bf16", tmp_path / "dpo")
    margins = [m for _, m in out["margin_curve"]]
    # steps 1-2: policy == reference (warm-up starts at lr 0); then the margin opens (1.59 at step 4 here)
    assert out["steps"] == 4 and max(abs(m) for m in margins[:2]) < 1e-6 and margins[-1] > 0.5
    saved = load_file(Path(out["adapter"]) / "adapter_model.safetensors")
    assert saved and not any(".ref." in k for k in saved)
