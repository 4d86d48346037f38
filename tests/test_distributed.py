"""Two training processes on CPU (gloo) under `accelerate launch` match one process on the same global batch."""

import json
from pathlib import Path

import pytest
import yaml

from tasks.sft_training import launch_distributed, run_spec
from tunegate.config import SFTConfig

ROOT = Path(__file__).resolve().parent.parent


def spec_for(prepared, out: Path, processes: int, per_device_batch: int, accelerate_config: str | None = None):
    # fp32 whatever this CPU measures faster: the losses are compared to 1e-4, finer than bf16 rounds.
    cfg = SFTConfig(max_steps=2, batch_size=per_device_batch, learning_rate=1e-3, warmup_steps=1, lora_r=4,
                    save_steps=100, num_processes=processes, accelerate_config=accelerate_config, precision="fp32")
    return cfg, {"base_model_path": prepared["base_model_path"], "train": prepared["train"], "eval": None,
                 "cfg": cfg.model_dump(), "out_dir": str(out), "checkpoint_dir": str(out / "ckpt"),
                 "trust_remote_code": False}


@pytest.fixture(scope="module")
def single_process(prepared, tmp_path_factory):
    _, spec = spec_for(prepared, tmp_path_factory.mktemp("single"), processes=1, per_device_batch=8)
    return run_spec(spec)


# The GPU configs run unchanged on CPU workers (gloo); FSDP's bf16 autocast moves the loss slightly.
@pytest.mark.parametrize("config,tolerance", [("ddp_cpu", 1e-4), ("deepspeed_zero2", 1e-4),
                                              ("deepspeed_zero3", 1e-4), ("fsdp", 2e-3)])
def test_two_cpu_processes_match_one_process_with_the_same_global_batch(prepared, tmp_path, single_process, config,
                                                                         tolerance):
    cfg, spec = spec_for(prepared, tmp_path, processes=2, per_device_batch=4,
                         accelerate_config=f"configs/accelerate/{config}.yaml")
    two = launch_distributed(spec, cfg, tmp_path)
    one = single_process
    assert two["world_size"] == 2 and one["world_size"] == 1 and two["precision"] == one["precision"] == "fp32"
    for (step_a, loss_a), (step_b, loss_b) in zip(two["loss_curve"], one["loss_curve"]):
        assert step_a == step_b and loss_a == pytest.approx(loss_b, rel=tolerance)
    assert len(two["loss_curve"]) == 2
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()  # saved once, by rank 0


@pytest.mark.parametrize("name", ["ddp", "ddp_cpu", "deepspeed_zero2", "deepspeed_zero3", "fsdp"])
def test_accelerate_configs_parse_and_point_at_existing_files(name):
    cfg = yaml.safe_load((ROOT / "configs" / "accelerate" / f"{name}.yaml").read_text())
    assert cfg["num_processes"] >= 2
    ds = cfg.get("deepspeed_config", {}).get("deepspeed_config_file")
    if ds:
        stage = json.loads((ROOT / ds).read_text())["zero_optimization"]["stage"]
        assert stage == int(name[-1])
