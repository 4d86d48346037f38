"""The GPU check's CPU dry run: every case trains through the real code paths, or says why it cannot here.

The GPU machine has no Prefect and no MLflow: the dry run runs with both shadowed by packages that refuse to
import, in its own process and in the `accelerate launch` ranks it starts.
"""

import json
import math
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
from gpu_check import DRY_WORKLOAD, ratio_check  # noqa: E402

REFUSING = "raise ImportError('{name} is not on the GPU machine; the GPU check must not import it')\n"


@pytest.fixture(scope="module")
def without_prefect_and_mlflow(tmp_path_factory) -> dict:
    shadows = tmp_path_factory.mktemp("shadows")
    for name in ("prefect", "mlflow"):
        (shadows / name).mkdir()
        (shadows / name / "__init__.py").write_text(REFUSING.format(name=name))
    return os.environ | {"PYTHONPATH": str(shadows)}


def test_the_shadows_do_refuse_the_import(without_prefect_and_mlflow):
    # Else the dry run below would pass with Prefect imported.
    for name in ("prefect", "mlflow"):
        out = subprocess.run([sys.executable, "-c", f"import {name}"], env=without_prefect_and_mlflow, cwd=ROOT,
                             capture_output=True, text=True)
        assert out.returncode == 1 and "is not on the GPU machine" in out.stderr


@pytest.fixture(scope="module")
def dry_run(tiny_model, without_prefect_and_mlflow, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("gpu-check")
    # A budget far past the GPU's 480 s: a busy 2-core machine must not turn cases into time-budget skips.
    run = subprocess.run([sys.executable, "bench/gpu_check.py", "--dry-run", "--out", str(out), "--budget-s", "1800"],
                         env=without_prefect_and_mlflow, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    return {"report": json.loads((out / "gpu_check.json").read_text()), "md": (out / "gpu_check.md").read_text()}


def test_every_case_is_measured_or_skipped_with_the_setup_checks_reason(dry_run):
    assert dry_run["report"]["complete"]  # written after each case too; this is the final report
    cases = {c["name"]: c for c in dry_run["report"]["cases"]}
    assert {name: c["status"] for name, c in cases.items()} == {
        "lora-bf16": "measured", "qlora": "skipped", "full-bf16": "measured", "lora-zero2": "measured",
        "trl-defaults": "measured", "lora-bf16-checkpointing": "measured", "qlora-checkpointing": "skipped"}
    for name in ("qlora", "qlora-checkpointing"):
        assert cases[name]["reason"].startswith("sft.method=qlora needs a CUDA GPU")


def test_measured_cases_ran_their_steps_on_full_rows_with_finite_losses(dry_run):
    measured = [c for c in dry_run["report"]["cases"] if c["status"] == "measured"]
    tokens = DRY_WORKLOAD.batch_size * DRY_WORKLOAD.max_length  # every corpus row fills max_length
    for case in measured:
        assert case["steps"] == 2, case
        assert math.isfinite(case["loss_first"]) and math.isfinite(case["loss_last"]), case
        assert 0 < case["loss_first"] < 20, case
        assert case["input_tokens_per_step"] == tokens, case
        assert case["tokens_per_second"] > 0, case
        assert case["peak_gpu_memory_bytes"] is None and case["gpu_memory_at_start_bytes"] is None  # no GPU here
    # The same data in the same order: every case's first loss is the same model's loss on the same batch.
    firsts = [c["loss_first"] for c in measured]
    assert max(firsts) - min(firsts) < 0.05, firsts


def test_each_case_ran_the_path_it_names(dry_run):
    cases = {c["name"]: c for c in dry_run["report"]["cases"]}
    for name in ("lora-bf16", "full-bf16", "lora-zero2", "lora-bf16-checkpointing"):
        assert (cases[name]["precision"], cases[name]["precision_reason"]) == ("bf16", "set in the config")
    assert cases["lora-bf16"]["gradient_checkpointing"] is False
    assert cases["lora-bf16-checkpointing"]["gradient_checkpointing"] is True
    # TRL's defaults: bf16 autocast over the fp32 weights it loads, checkpointing, its chunked LM head.
    trl = cases["trl-defaults"]
    assert trl["gradient_checkpointing"] is True and trl["lm_head"] == "chunked"
    assert trl["precision"] == "bf16" and "torch.float32" in trl["precision_reason"]
    assert trl["trainable_params"] == cases["lora-bf16"]["trainable_params"]  # the same LoRA
    assert cases["full-bf16"]["trainable_params"] == dry_run["report"]["model"]["params"]
    assert cases["lora-zero2"]["world_size"] == 1  # a rank of accelerate launch, not this process


def test_the_criteria_are_computed_and_left_unjudged_on_cpu(dry_run):
    cases = {c["name"]: c for c in dry_run["report"]["cases"]}
    memory, speed = dry_run["report"]["criteria"][:2]
    assert memory["verdict"] == "not measured (qlora skipped, lora-bf16 has no peak_gpu_memory_bytes)"
    assert memory["required"]
    assert speed["ratio"] == round(cases["lora-bf16"]["tokens_per_second"] / cases["trl-defaults"]["tokens_per_second"],
                                   3)
    assert speed["verdict"].startswith("not judged")
    rows = [line for line in dry_run["md"].splitlines() if re.match(r"\| (lora|qlora|full|trl)", line)]
    assert len(rows) == 7


def test_ratio_checks_hold_the_bound_in_the_direction_they_name():
    def case(name, peak, status="measured"):
        return {"name": name, "status": status, "peak": peak}

    qlora, lora = case("qlora", 40), case("lora", 100)
    assert ratio_check("m", qlora, lora, "peak", 0.5, True, True, True)["verdict"] == "pass"
    assert ratio_check("m", case("qlora", 60), lora, "peak", 0.5, True, True, True) == {
        "name": "m", "ratio": 0.6, "bound": 0.5, "required": True, "verdict": "fail"}
    assert ratio_check("s", lora, qlora, "peak", 1.0, False, True, True)["verdict"] == "pass"  # 2.5 >= 1.0
    assert ratio_check("s", qlora, lora, "peak", 1.0, False, True, True)["verdict"] == "fail"
    assert ratio_check("m", qlora, lora, "peak", 0.5, True, True, False)["verdict"].startswith("not judged")
    missing = ratio_check("m", case("qlora", None, "failed"), case("lora", None), "peak", 0.5, True, True, True)
    assert missing["verdict"] == "not measured (qlora failed, lora has no peak)" and missing["ratio"] is None


def locked_versions() -> dict:
    lines = (ROOT / "requirements.lock").read_text().splitlines()
    return {re.sub(r"[-_.]+", "-", n).lower(): v for n, _, v in (line.partition("==") for line in lines)
            if not n.startswith("#")}


def test_the_carried_wheels_are_the_locked_versions():
    carried = re.findall(r"^([^ #]+)==([^ ]+)", (ROOT / "bench" / "gpu_wheels.txt").read_text(), re.M)
    locked = locked_versions()
    assert {"trl", "bitsandbytes", "deepspeed", "datasets", "pydantic"} <= {n.lower() for n, _ in carried}
    for name, version in carried:
        assert locked[re.sub(r"[-_.]+", "-", name).lower()] == version, name
