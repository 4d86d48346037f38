"""SFT on the tiny model: each method trains exactly the parameters it should."""

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import tasks.sft_training
import tunegate.precision
from tasks.sft_training import (COMPLETE_MARKER, check_training_setup, choose_gradient_checkpointing, choose_lm_head,
                                estimate_training_bytes, last_complete_checkpoint, launch_distributed, train_sft,
                                truncate_rows)
from tunegate.precision import choose_precision, cpu_matmul_speeds, precision_from_speeds
from tunegate.config import SFTConfig, load_config

BASE_KEY = "model.layers.0.self_attn.q_proj.weight"


def two_steps(prepared, tmp_path, **overrides):
    cfg = SFTConfig(max_steps=2, batch_size=4, learning_rate=1e-2 if overrides.get("method") != "full" else 1e-4,
                    warmup_steps=1, lora_r=4, save_steps=100, **overrides)
    return train_sft(prepared["base_model_path"], prepared["train"], None, cfg, tmp_path, tmp_path / "ckpt")


def speeds(bf16: float, fp32: float, cached: str | None = None) -> dict:
    return {"bf16_gflops": bf16, "fp32_gflops": fp32, "cpu": "AMD EPYC", "bf16_flags": ["avx2"], "torch": "2.13.0",
            "measured_at": "2026-12-01T20:00:00Z", "cached": cached}


def test_a_precision_set_in_the_config_is_used_without_measuring(monkeypatch):
    monkeypatch.setattr(tunegate.precision, "cpu_matmul_speeds", lambda: pytest.fail("measured although the config set it"))
    assert choose_precision("bf16") == ("bf16", "set in the config", None)
    assert choose_precision("fp32") == ("fp32", "set in the config", None)


def test_cpu_precision_is_the_faster_of_the_measured_bf16_and_fp32():
    # ENVIRONMENT.md's AVX2-only EPYC: bf16 0.7 GFLOP/s, fp32 65.
    precision, why = precision_from_speeds(speeds(0.7, 65.0))
    assert precision == "fp32" and "bf16 matmul 0.7 GFLOP/s vs fp32 65.0 GFLOP/s on AMD EPYC" in why
    assert "(92.9x bf16's speed, exact)" in why and "measured now" in why
    # This machine's EPYC with avx512_bf16 (docs/benchmarks.md): bf16 ~2.5x fp32.
    precision, why = precision_from_speeds(speeds(122.7, 52.0, cached="/c/x.json"))
    assert precision == "bf16" and why.endswith("(cached from 2026-12-01T20:00:00Z): bf16 is 2.4x faster")
    # A near tie keeps the exact one.
    assert precision_from_speeds(speeds(54.0, 52.0))[0] == "fp32"
    assert precision_from_speeds(speeds(57.3, 52.0))[0] == "bf16"


def test_auto_on_cpu_follows_the_measurement_and_returns_it(monkeypatch):
    for bf16, fp32, expected in [(0.7, 65.0, "fp32"), (122.7, 52.0, "bf16")]:
        monkeypatch.setattr(tunegate.precision, "cpu_matmul_speeds", lambda b=bf16, f=fp32: speeds(b, f))
        precision, why, measured = choose_precision("auto")
        assert precision == expected and measured["bf16_gflops"] == bf16 and f"fp32 {fp32:.1f} GFLOP/s" in why


def test_the_matmul_measurement_is_quick_positive_and_cached_per_machine(tmp_path, monkeypatch):
    first = cpu_matmul_speeds(tmp_path, force=True)
    assert first["bf16_gflops"] > 0 and first["fp32_gflops"] > 0 and first["cached"] is None
    assert first["seconds"] < 2.0
    assert first["cpu"] and first["torch"] == torch.__version__
    # Reused: the second call reads the file and measures nothing.
    monkeypatch.setattr(tunegate.precision, "measure_matmul_gflops", lambda *a, **k: pytest.fail("measured again"))
    again = cpu_matmul_speeds(tmp_path)
    assert again["cached"] and {k: v for k, v in again.items() if k != "cached"} == \
        {k: v for k, v in first.items() if k != "cached"}
    # Another torch version (or CPU, flags, thread count) is another machine: measured anew.
    monkeypatch.setattr(torch, "__version__", "9.9.9")
    monkeypatch.setattr(tunegate.precision, "measure_matmul_gflops", lambda name, **k: {"bf16": 3.0, "fp32": 4.0}[name])
    other = cpu_matmul_speeds(tmp_path)
    assert (other["bf16_gflops"], other["fp32_gflops"], other["torch"]) == (3.0, 4.0, "9.9.9")
    assert len(list(tmp_path.glob("*.json"))) == 2


def test_a_distributed_run_chooses_the_precision_once_for_all_ranks(tmp_path, monkeypatch):
    # Ranks measuring side by side could disagree; the launcher measures and hands every rank its choice.
    monkeypatch.setattr(tunegate.precision, "cpu_matmul_speeds", lambda: speeds(122.7, 52.0))
    launched = []

    def fake_launch(cmd, check):
        launched.append(cmd)
        (tmp_path / "sft_summary.json").write_text("{}")

    monkeypatch.setattr(tasks.sft_training.subprocess, "run", fake_launch)
    launch_distributed({"cfg": {}}, SFTConfig(num_processes=2), tmp_path)
    handed = json.loads((tmp_path / "sft_spec.json").read_text())["precision"]
    assert handed["precision"] == "bf16" and "bf16 matmul 122.7 GFLOP/s" in handed["reason"]
    assert handed["cpu_matmul_gflops"]["fp32_gflops"] == 52.0 and launched[0][-2:] == ["--spec", str(tmp_path / "sft_spec.json")]


class FakeModel(torch.nn.Module):
    """1,000,000 weights and the config fields the memory estimate reads."""

    def __init__(self, layers=2, hidden=64, heads=4):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1000, 1000))
        self.config = type("Config", (), {"num_hidden_layers": layers, "hidden_size": hidden,
                                          "num_attention_heads": heads})()


def test_training_memory_estimate_by_hand():
    cfg = SFTConfig(batch_size=8, max_length=512)
    # activations per layer: 34 * 8*512 tokens * 64 hidden + 5 * 4 heads * 8 * 512^2 = 50,855,936 (16-bit)
    act16 = 2 * (34 * 4096 * 64 + 5 * 4 * 8 * 512**2)
    assert act16 == 101_711_872
    # LoRA fp32: 4 B weights + (1e6 // 50) trainable * 12 B (fp32 grad, 2 Adam moments) + fp32 activations
    assert estimate_training_bytes(FakeModel(), cfg, "fp32") == 4_000_000 + 240_000 + 2 * act16 == 207_663_744
    assert estimate_training_bytes(FakeModel(), cfg, "bf16") == 2_000_000 + 240_000 + act16 == 103_951_872
    assert estimate_training_bytes(FakeModel(), SFTConfig(method="full"), "fp32") == 4_000_000 + 12_000_000 + 2 * act16
    # Attention scores grow with the square of the length: 4x the length, ~16x those bytes.
    long = estimate_training_bytes(FakeModel(), SFTConfig(batch_size=8, max_length=2048), "fp32")
    assert long == 4_240_000 + 2 * 2 * (34 * 16384 * 64 + 5 * 4 * 8 * 2048**2) == 2_831_200_896


def test_gradient_checkpointing_only_when_the_estimate_does_not_fit_the_gpu(monkeypatch):
    cfg, model = SFTConfig(batch_size=8, max_length=512), FakeModel()
    assert choose_gradient_checkpointing(cfg, model, "fp32") == (
        False, "CPU: memory is plentiful and checkpointing only costs time")
    assert choose_gradient_checkpointing(SFTConfig(gradient_checkpointing="on"), model, "fp32") == (
        True, "set in the config")
    need = 207_663_744  # from the test above
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for total, expected in [(int(need / 0.85) + 1024, False), (int(need / 0.85) - 1024, True)]:
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda t=total: (t, t))
        on, why = choose_gradient_checkpointing(cfg, model, "fp32")
        assert on is expected, why
        assert ("> 85% of 0.2 GiB" if on else "fits in 0.2 GiB") in why and "estimated 0.2 GiB" in why


def test_cpu_uses_the_plain_lm_head_and_trains_exactly_like_trls_chunked_head(prepared, tmp_path, monkeypatch):
    plain = two_steps(prepared, tmp_path / "plain", method="lora")
    assert plain["lm_head"] == "plain" and "fit in RAM" in plain["lm_head_reason"]
    monkeypatch.setattr("tasks.sft_training.choose_lm_head", lambda cfg, vocab: ("chunked", "forced by the test"))
    chunked = two_steps(prepared, tmp_path / "chunked", method="lora")
    assert chunked["lm_head"] == "chunked"
    # Same loss (both fp32 log-softmax over the same tokens), so the same update and the same second step.
    assert [s for s, _ in plain["loss_curve"]] == [s for s, _ in chunked["loss_curve"]] == [1, 2]
    for (_, a), (_, b) in zip(plain["loss_curve"], chunked["loss_curve"]):
        assert abs(a - b) < 1e-4, (plain["loss_curve"], chunked["loss_curve"])
    assert plain["input_tokens_per_step"] == chunked["input_tokens_per_step"] > 100  # num_tokens is still logged


def test_logits_that_would_not_fit_in_ram_keep_trls_chunked_head():
    head, why = choose_lm_head(SFTConfig(batch_size=64, max_length=8192), vocab_size=256_000)  # ~1.5 TiB of logits
    assert head == "chunked" and "over 25% of the" in why


def test_qlora_and_8bit_adam_are_refused_up_front_on_cpu():
    with pytest.raises(ValueError, match="sft.method=qlora needs a CUDA GPU.*Use sft.method=lora"):
        check_training_setup(SFTConfig(method="qlora"))
    with pytest.raises(ValueError, match="adamw_8bit needs a CUDA GPU"):
        check_training_setup(SFTConfig(optimizer="adamw_8bit"))
    # The config itself still loads: a GPU worker may run it.
    assert load_config("configs/tiny.yaml", ["sft.method=qlora"]).sft.method == "qlora"


def test_a_missing_bitsandbytes_or_deepspeed_is_refused_before_the_model_loads(monkeypatch):
    # A GPU machine without them (the device image has neither) fails here, not minutes into loading or in a rank.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # None in sys.modules: not importable, find_spec -> None
    monkeypatch.setitem(sys.modules, "deepspeed", None)
    with pytest.raises(ValueError, match="sft.method=qlora, sft.optimizer=adamw_torch needs bitsandbytes"):
        check_training_setup(SFTConfig(method="qlora"))
    with pytest.raises(ValueError, match="deepspeed_zero2.yaml runs DeepSpeed, which is not installed"):
        check_training_setup(SFTConfig(accelerate_config="configs/accelerate/deepspeed_zero2.yaml"))
    check_training_setup(SFTConfig(accelerate_config="configs/accelerate/ddp.yaml"))  # DDP needs no DeepSpeed


def test_warmup_zero_is_refused_with_an_explanation():
    with pytest.raises(ValueError, match="warmup_steps must be >= 1: starting at the full learning rate"):
        SFTConfig(warmup_steps=0)


def test_learning_rate_far_outside_the_method_range_warns_why():
    with pytest.warns(UserWarning, match="outside the usual range.*full fine-tuning moves every weight"):
        SFTConfig(method="full", learning_rate=1e-3)
    with pytest.warns(UserWarning, match="adapters start at zero"):
        SFTConfig(method="lora", learning_rate=0.1)


def test_lora_trains_two_steps_and_changes_only_the_adapter(prepared, tmp_path):
    out = two_steps(prepared, tmp_path, method="lora")
    assert out["steps"] == 2 and math.isfinite(out["train_loss"]) and len(out["loss_curve"]) == 2
    adapter = Path(out["adapter"])
    assert not list(adapter.glob("*.bin"))  # safetensors only
    weights = load_file(adapter / "adapter_model.safetensors")
    lora_b = [v for k, v in weights.items() if "lora_B" in k]
    # lora_B starts at zero: two steps at lr 1e-2 must have moved every one of them.
    assert len(lora_b) == 2 * 7 and all(v.abs().sum() > 0 for v in lora_b)  # 7 linear layers x 2 layers
    assert all("lora_" in k for k in weights)  # nothing else is saved: the base did not train
    assert json.loads((adapter / "adapter_config.json").read_text())["lora_alpha"] == 8
    assert (tmp_path / "loss_curve.png").stat().st_size > 5000
    # On CPU the precision is the faster one by this machine's measurement, and the numbers are in the summary.
    measured = out["cpu_matmul_gflops"]
    assert measured["bf16_gflops"] > 0 and measured["fp32_gflops"] > 0
    assert (out["precision"], out["precision_reason"]) == precision_from_speeds(measured)


def test_dora_adds_trained_magnitude_vectors(prepared, tmp_path):
    out = two_steps(prepared, tmp_path, method="dora")
    weights = load_file(Path(out["adapter"]) / "adapter_model.safetensors")
    magnitudes = [k for k in weights if "lora_magnitude_vector" in k]
    assert len(magnitudes) == 14 and json.loads((Path(out["adapter"]) / "adapter_config.json").read_text())["use_dora"]
    # A magnitude starts as the column norm of the base weight; training moves it.
    base = load_file(Path(prepared["base_model_path"]) / "model.safetensors")
    key = next(k for k in magnitudes if "layers.0.self_attn.q_proj" in k)
    assert not torch.allclose(weights[key], base[BASE_KEY].norm(dim=1))


def test_full_fine_tuning_changes_every_weight_and_saves_a_whole_model(prepared, tmp_path):
    out = two_steps(prepared, tmp_path, method="full")
    assert out["adapter"] is None and out["trainable_params"] > 100_000
    before = load_file(Path(prepared["base_model_path"]) / "model.safetensors")
    after = load_file(Path(out["model"]) / "model.safetensors")
    assert before.keys() == after.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) == len(before), set(before) - set(changed)


def test_incomplete_checkpoints_are_ignored_and_removed(tmp_path):
    for step, complete in [(2, True), (4, True), (6, False)]:
        ckpt = tmp_path / f"checkpoint-{step}"
        ckpt.mkdir()
        if complete:
            (ckpt / COMPLETE_MARKER).write_text("{}")
    assert last_complete_checkpoint(tmp_path).name == "checkpoint-4"
    assert not (tmp_path / "checkpoint-6").exists()


def test_eval_loss_is_tracked_and_early_stopping_ends_a_diverging_run(prepared, tmp_path):
    # lr 0.3 on adapters diverges within a few steps, so the eval loss stops improving.
    cfg = SFTConfig(max_steps=40, batch_size=8, learning_rate=0.3, warmup_steps=1, lora_r=4, eval_steps=2,
                    save_steps=2, early_stopping_patience=2)
    out = train_sft(prepared["base_model_path"], prepared["train"], prepared["eval"], cfg, tmp_path, tmp_path / "ck")
    evals = [loss for _, loss in out["eval_loss_curve"]]
    assert out["stopped_early"] and out["steps"] < 40
    best = evals.index(min(evals))
    assert len(evals) == best + 1 + 2  # stopped after `patience` evaluations without improvement
    assert [s for s, _ in out["eval_loss_curve"]] == list(range(2, out["steps"] + 1, 2))


def test_early_stopping_needs_evaluations_that_are_saved():
    with pytest.raises(ValueError, match="early_stopping_patience needs sft.eval_steps"):
        SFTConfig(early_stopping_patience=2)
    with pytest.raises(ValueError, match="save_steps \\(5\\) must be a multiple of sft.eval_steps \\(2\\)"):
        SFTConfig(early_stopping_patience=2, eval_steps=2, save_steps=5)


def test_packing_fills_sequences_and_trains(prepared, tmp_path):
    packed = two_steps(prepared, tmp_path / "packed", method="lora", packing=True, max_length=256)
    plain = two_steps(prepared, tmp_path / "plain", method="lora", max_length=256)
    assert math.isfinite(packed["train_loss"]) and packed["steps"] == 2
    assert packed["input_tokens_per_step"] > 2 * plain["input_tokens_per_step"]  # no padding, rows packed together


def test_padding_free_trains_the_same_batches_to_the_same_losses(prepared, tmp_path):
    # Each batch runs as one unpadded row; a token attending across rows would change the loss.
    free = two_steps(prepared, tmp_path / "free", method="lora", padding_free=True)
    padded = two_steps(prepared, tmp_path / "padded", method="lora", padding_free=False)
    assert [s for s, _ in free["loss_curve"]] == [s for s, _ in padded["loss_curve"]] == [1, 2]
    for (_, a), (_, b) in zip(free["loss_curve"], padded["loss_curve"]):
        assert abs(a - b) < 1e-4, (free["loss_curve"], padded["loss_curve"])
    assert free["input_tokens_per_step"] == padded["input_tokens_per_step"] > 100


def test_padding_free_rows_are_truncated_as_trl_truncates_padded_ones():
    from datasets import Dataset

    rows = Dataset.from_list([
        {"input_ids": [1, 2, 3], "labels": [-100, 2, 3]},  # fits: unchanged
        {"input_ids": [1, 2, 3, 4, 5, 6], "labels": [-100, -100, 3, 4, 5, 6]},  # keeps its start
        {"input_ids": [1, 2, 3, 4, 5, 6], "labels": [-100, -100, -100, -100, 5, 6]},  # nothing trained left: dropped
    ])
    cut = truncate_rows(rows, 4)
    assert cut["input_ids"] == [[1, 2, 3], [1, 2, 3, 4]] and cut["labels"] == [[-100, 2, 3], [-100, -100, 3, 4]]
    assert truncate_rows(rows, 6) is rows and len(truncate_rows(rows.select([]), 4)) == 0
