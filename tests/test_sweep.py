"""Hyperparameter search on the tiny model: Optuna trials as Prefect subflows, MLflow child runs, the best gated.

The trials' values are queued (sweep.first_trials), so what each trial does is known: two learn, one barely
moves (pruned at its first eval), one collapses to a uniform guess (failed, diverged). Each trial is 6 SFT steps.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from flows.sweep import sweep
from tunegate.config import load_config
from tunegate.registry import CHAMPION, get_alias

# lr 2e-3 and 5e-3 learn; 1e-6 stays at the start's loss (worse than both at step 2: pruned); 50 collapses the
# tiny Llama to uniform outputs (eval loss ln 1024 = 6.93 at step 2: diverged). tests/test_sweep.py measured each.
FIRST = "[{learning_rate: 2.0e-3}, {learning_rate: 5.0e-3}, {learning_rate: 1.0e-6}, {learning_rate: 50}]"
SWEEP = ["sft.max_steps=6", "sweep.eval_steps=2", "sweep.pruner_startup_trials=2",
         "sweep.space={learning_rate: {low: 1.0e-6, high: 100, log: true}}", f"sweep.first_trials={FIRST}"]


def tiny_sweep(tmp_path, tracking, *sets: str, run_name: str = "sweep"):
    params = load_config("configs/tiny.yaml", [*SWEEP, *sets])
    return params.model_copy(update={"tracking": tracking, "output_dir": str(tmp_path / "outputs"),
                                     "run_name": run_name})


@pytest.mark.usefixtures("prefect_harness")
def test_four_trials_make_a_parent_and_four_child_runs_one_pruned_one_failed_and_the_best_is_gated(
        tmp_path, tracking, tiny_model):
    params = tiny_sweep(tmp_path, tracking, "sweep.trials=4")
    summary = sweep(params)

    result = json.loads((tmp_path / "outputs" / "sweep" / "sweep.json").read_text())
    states = {t["number"]: t["state"] for t in result["trials"]}
    assert states == {0: "COMPLETE", 1: "COMPLETE", 2: "PRUNED", 3: "FAIL"}, result["trials"]
    pruned, failed = result["trials"][2], result["trials"][3]
    assert "pruned at step 2" in pruned["reason"], pruned
    assert failed["reason"].startswith("diverged: eval loss") and "uniform guess" in failed["reason"], failed
    best = result["best"]
    assert best["number"] in (0, 1) and best["value"] == min(t["value"] for t in result["trials"][:2])
    assert 0 < best["value"] < math.log(1024)

    client = MlflowClient(tracking.tracking_uri)
    experiment = client.get_experiment_by_name("test-sweeps")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("tunegate.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(runs) == 5 and len(children) == 4
    by_trial = {int(r.data.tags["sweep.trial"]): r for r in children}
    assert {n: r.info.status for n, r in by_trial.items()} == {0: "FINISHED", 1: "FINISHED", 2: "KILLED",
                                                                3: "FAILED"}
    assert by_trial[3].data.tags["sweep.reason"] == failed["reason"]
    assert float(by_trial[0].data.params["sft.learning_rate"]) == 2e-3
    curve = client.get_metric_history(by_trial[0].info.run_id, "train/eval_loss_step")
    assert [m.step for m in curve] == [2, 4, 6]  # the eval loss the pruner saw, step by step
    assert [m.step for m in client.get_metric_history(by_trial[2].info.run_id, "train/eval_loss_step")] == [2]
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")}
    assert {"sweep/trials.json", "sweep/best_trial.json", "sweep/param_importances.png",
            "sweep/parallel_coordinate.png", "sweep/intermediate_values.png"} <= artifacts
    assert parent.data.metrics["best/objective"] == best["value"] and parent.info.status == "FINISHED"

    # The best trial went through the finetune pipeline's gate: registered, judged against the base, promoted.
    assert summary.gate == "passed" and summary.baseline == "base"
    version = client.get_model_version("test-model", summary.model_version)
    assert json.loads(version.tags["config"])["sft"]["learning_rate"] == best["values"]["learning_rate"]
    assert str(get_alias(client, "test-model", CHAMPION).version) == summary.model_version
    parent = client.get_run(parent.info.run_id)
    assert parent.data.tags["sweep.gate"] == "passed" and parent.data.tags["sweep.candidate_run"] == "sweep-best"
    # Its SFT was the best trial's, from Prefect's cache (same data, model and config): no sft/ folder of its own.
    assert not (tmp_path / "outputs" / "sweep-best" / "sft").exists()
    assert (tmp_path / "outputs" / f"sweep-trial-{best['number']:03d}" / "sft").exists()

    study = optuna.load_study(study_name="sweep", storage=f"sqlite:///{tmp_path}/optuna.db")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE", "PRUNED", "FAIL"]
