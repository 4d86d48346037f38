"""kill -9 during training, then run again: it resumes from the last complete checkpoint."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tasks.sft_training import COMPLETE_MARKER, run_spec
from tunegate.config import SFTConfig

ROOT = Path(__file__).resolve().parent.parent


def test_sigkill_mid_training_then_rerun_resumes_from_the_checkpoint(prepared, tmp_path):
    cfg = SFTConfig(max_steps=80, batch_size=8, learning_rate=2e-3, warmup_steps=2, lora_r=4, save_steps=5)
    spec = {"base_model_path": prepared["base_model_path"], "train": prepared["train"], "eval": None,
            "cfg": cfg.model_dump(), "out_dir": str(tmp_path / "out"), "checkpoint_dir": str(tmp_path / "ckpt"),
            "trust_remote_code": False}
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec))
    proc = subprocess.Popen([sys.executable, "-m", "tasks.sft_training", "--spec", str(spec_path)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not list((tmp_path / "ckpt").glob(f"checkpoint-10/{COMPLETE_MARKER}")):
        assert proc.poll() is None, "training ended before a second checkpoint"
        assert time.time() < deadline, "no checkpoint within 240 s"
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "out" / "sft_summary.json").exists()
    killed_at = max(int(p.parent.name.split("-")[1]) for p in (tmp_path / "ckpt").glob(f"*/{COMPLETE_MARKER}"))

    summary = run_spec(spec)  # the same job again, as a re-run of the flow does
    assert summary["resumed_at_step"] == killed_at >= 10
    assert summary["steps"] == 80
    # One loss per step, with no restart: steps up to the crash come from the checkpoint's state.
    assert [s for s, _ in summary["loss_curve"]] == list(range(1, 81))
