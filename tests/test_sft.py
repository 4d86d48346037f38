import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file

from tasks.sft import choose_precision, train_sft
from tunegate.config import SFTConfig


def test_cpu_gets_fp32_with_a_reason():
    precision, reason = choose_precision("auto")
    assert precision == "fp32" and "CPU" in reason
    assert choose_precision("bf16") == ("bf16", "set in the config")


def test_lora_trains_two_steps_and_changes_only_the_adapter(prepared, tmp_path):
    cfg = SFTConfig(max_steps=2, batch_size=4, learning_rate=1e-2, warmup_steps=0, lora_r=4)
    out = train_sft(prepared["base_model_path"], prepared["train"], None, cfg, tmp_path)
    assert out["steps"] == 2 and math.isfinite(out["train_loss"]) and len(out["loss_curve"]) == 2
    adapter = Path(out["adapter"])
    assert (adapter / "adapter_model.safetensors").exists()
    assert not list(adapter.glob("*.bin"))  # safetensors only
    weights = load_file(adapter / "adapter_model.safetensors")
    lora_b = [v for k, v in weights.items() if "lora_B" in k]
    # lora_B starts at zero; two steps at lr 1e-2 must have moved every one of them.
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)
    assert all("lora_" in k for k in weights)  # the base weights are not in the adapter
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8
    base = load_file(Path(prepared["base_model_path"]) / "model.safetensors")
    assert base["model.layers.0.self_attn.q_proj.weight"].dtype == torch.float32  # base file untouched
