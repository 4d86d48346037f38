"""Hyperparameter search on the tiny model: Optuna trials as Prefect subflows, MLflow child runs, the best gated.

The trials' values are queued (sweep.first_trials), so what each trial does is known: two learn, one barely
moves (pruned at its first eval), one collapses to a uniform guess (failed, diverged). Each trial is 4 SFT steps.
The tests of one session share an outputs folder, so the data stages run once (Prefect's cache), as in a sweep.

    pytest tests/test_sweep.py                # ~2 min on 2 cores
    pytest -m slow tests/test_sweep.py        # + a sweep killed mid-trial, then resumed (~4 min)
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from cli.main import main
from flows.sweep import sweep
from tasks.dpo import Aligned
from tasks.sweep import SweepError
from tunegate.config import load_config
from tunegate.registry import CHAMPION, get_alias

from conftest import ROOT
from live_stack import wait_for

# lr 2e-3 and 5e-3 learn; 1e-6 stays at the start's loss (worse than both at step 2: pruned); 50 collapses the
# tiny Llama to uniform outputs (eval loss ln 1024 = 6.93 at step 2: diverged). tests/test_sweep.py measured each.
FIRST = "[{learning_rate: 2.0e-3}, {learning_rate: 5.0e-3}, {learning_rate: 1.0e-6}, {learning_rate: 50}]"
SWEEP = ["sft.max_steps=4", "sweep.eval_steps=2", "sweep.pruner_startup_trials=2",
         "sweep.space={learning_rate: {low: 1.0e-6, high: 100, log: true}}", f"sweep.first_trials={FIRST}"]


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("outputs")


def tiny_sweep(outputs: Path, tracking, *sets: str, run_name: str = "sweep"):
    params = load_config("configs/tiny.yaml", [*SWEEP, *sets])
    return params.model_copy(update={"tracking": tracking, "output_dir": str(outputs), "run_name": run_name})


@pytest.mark.usefixtures("prefect_harness")
def test_four_trials_make_a_parent_and_four_child_runs_one_pruned_one_failed_and_the_best_is_gated(
        tmp_path, outputs, tracking, tiny_model):
    params = tiny_sweep(outputs, tracking, "sweep.trials=4")
    summary = sweep(params)

    result = json.loads((outputs / "sweep" / "sweep.json").read_text())
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
    assert [m.step for m in curve] == [2, 4]  # the eval loss the pruner saw, step by step
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
    assert not (outputs / "sweep-best" / "sft").exists()
    assert (outputs / f"sweep-trial-{best['number']:03d}" / "sft").exists()

    study = optuna.load_study(study_name="sweep", storage=f"sqlite:///{tmp_path}/optuna.db")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE", "PRUNED", "FAIL"]

    # Resuming this study with trials of another length would rank unlike trials together: refused, named.
    longer = tiny_sweep(outputs, tracking, "sweep.trials=6", "sweep.study=sweep", "sft.max_steps=6", run_name="more")
    with pytest.raises(SweepError, match=r"study sweep was run with other settings .* sft.max_steps: 4 -> 6"):
        sweep(longer)
    assert len(optuna.load_study(study_name="sweep", storage=f"sqlite:///{tmp_path}/optuna.db").trials) == 4


def test_the_held_out_loss_of_sft_weights_is_the_eval_loss_sft_logged_at_its_last_step(prepared, tmp_path):
    # objective_value takes SFT's last eval loss instead of computing held_out_loss again: they must agree.
    from tasks.sft_training import train_sft
    from tasks.trial import held_out_loss

    from conftest import typed_prepared, typed_trained

    typed = typed_prepared(prepared)
    cfg = load_config("configs/tiny.yaml", ["sft.max_steps=3", "sft.eval_steps=3", "sft.precision=fp32"]).sft
    trained = typed_trained(train_sft(typed.base.path, typed.train, typed.eval, cfg, tmp_path, tmp_path / "ck"), typed)
    aligned = Aligned(skipped=True, adapter=trained.adapter, model=None, sft=trained)
    ((step, logged),) = trained.eval_loss_curve
    assert step == 3 and held_out_loss(aligned, typed, cfg) == pytest.approx(logged, abs=1e-4)
    assert logged < math.log(1024)


@pytest.mark.parametrize("override, message", [
    ("sweep.space={}", "sweep.space is empty"),
    ("sweep.space={learning_rate: {low: 1.0e-3, high: 1.0e-4}}", "low (0.001) must be below high (0.0001)"),
    ("sweep.space={learning_rate: {low: 0, high: 1.0e-3}}", "learning_rate: low must be > 0"),
    ("sweep.space={lora_r: []}", "lora_r: give one or more distinct choices"),
    ("sweep.space={warmup_steps: {low: 0, high: 4}}", "warmup_steps: low must be >= 1"),
    ("sweep.space={num_epochs: {low: 1, high: 3}}", "sft.max_steps is set and overrides epochs"),
    ("sweep.first_trials=[{learning_rate: 1}]", "learning_rate=1 is outside sweep.space.learning_rate"),
    ("sweep.first_trials=[{lora_r: 8}]", "lora_r is not searched"),
    ("sweep.objective=tunegate_math/acc", "use eval_loss or <task>/<metric> of a task eval.tasks runs"),
    ("sweep.trials=0", "greater than or equal to 1"),
])
def test_a_bad_space_objective_or_trial_count_is_refused_before_anything_starts(override, message, tmp_path, capsys):
    assert main(["sweep", "configs/tiny.yaml", "--set", override, "--set", f"output_dir={tmp_path}",
                 "--set", f"tracking.tracking_uri=sqlite:///{tmp_path}/mlflow.db"]) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # no run folder, no study, no MLflow store


def test_trials_0_on_the_command_line_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["sweep", "configs/tiny.yaml", "--trials", "0"])
    assert exit_.value.code == 2 and "--trials: must be at least 1, got 0" in capsys.readouterr().err


@pytest.mark.usefixtures("prefect_harness")
def test_an_objective_metric_the_task_does_not_have_fails_before_any_trial(tmp_path, outputs, tracking, tiny_model):
    params = tiny_sweep(outputs, tracking, "sweep.objective=tunegate_domain/bleu", run_name="bad-objective")
    with pytest.raises(SweepError, match=r"tunegate_domain has no metric 'bleu'; it has \[.*'token_f1'"):
        sweep(params)
    assert optuna.get_all_study_names(f"sqlite:///{tmp_path}/optuna.db") == []
    assert MlflowClient(tracking.tracking_uri).get_experiment_by_name("test-sweeps") is None


@pytest.mark.skipif(Path("/proc/sys/vm/overcommit_memory").read_text().strip() == "1",
                    reason="with overcommit_memory=1 the 256 GiB adapter would be granted and then really filled")
@pytest.mark.usefixtures("prefect_harness")
def test_a_trial_out_of_memory_fails_with_its_reason_and_with_no_completed_trial_nothing_is_gated(
        tmp_path, outputs, tracking, tiny_model):
    # A rank of 2**30 needs a 256 GiB LoRA matrix: the allocator refuses it at once (a real OOM, not a mock).
    params = tiny_sweep(outputs, tracking, "sweep.trials=1", "sweep.space={lora_r: [8, 1073741824]}",
                        "sweep.first_trials=[{lora_r: 1073741824}]", run_name="oom")
    with pytest.raises(SweepError, match=r"no trial completed .* so there is no candidate to gate"):
        sweep(params)
    (trial,) = json.loads((outputs / "oom" / "sweep.json").read_text())["trials"]
    assert trial["state"] == "FAIL" and trial["reason"].startswith("out of memory: RuntimeError"), trial
    assert "can't allocate memory" in trial["reason"]
    client = MlflowClient(tracking.tracking_uri)
    assert client.search_registered_models() == [] and not (outputs / "oom-best").exists()
    (child,) = [r for r in client.search_runs([client.get_experiment_by_name("test-sweeps").experiment_id])
                if "mlflow.parentRunId" in r.data.tags]
    assert child.info.status == "FAILED" and child.data.tags["sweep.reason"] == trial["reason"]


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_a_task_metric_objective_with_dpo_searched_scores_trials_with_lm_eval_and_the_candidate_reuses_them(
        tmp_path, outputs, tracking, tiny_model):
    params = tiny_sweep(outputs, tracking, "sweep.trials=2", "sweep.objective=tunegate_domain/token_f1",
                        "sweep.space={dpo_beta: {low: 0.05, high: 0.5, log: true}}",
                        "sweep.first_trials=[{dpo_beta: 0.1}, {dpo_beta: 0.4}]", run_name="metric")
    summary = sweep(params)

    result = json.loads((outputs / "metric" / "sweep.json").read_text())
    assert result["direction"] == "maximize" and [t["state"] for t in result["trials"]] == ["COMPLETE"] * 2
    best = result["best"]
    assert best["value"] == max(t["value"] for t in result["trials"])
    for t in result["trials"]:  # each trial trained DPO with its beta after SFT
        dpo_summary = json.loads((outputs / f"metric-trial-{t['number']:03d}" / "dpo" / "dpo_summary.json").read_text())
        assert dpo_summary["steps"] == 2
    client = MlflowClient(tracking.tracking_uri)
    evals = client.search_runs([client.get_experiment_by_name("test-evals").experiment_id],
                               filter_string="tags.`eval.task` = 'tunegate_domain'")
    scored = sorted(r.data.metrics["token_f1"] for r in evals if r.data.tags["eval.model_label"].startswith("metric-"))
    assert scored == sorted(t["value"] for t in result["trials"])  # the objective is lm-eval's token F1
    # The candidate's DPO weights are the best trial's (cache), so its domain score is the trial's, not recomputed.
    assert not (outputs / "metric-best" / "dpo").exists()
    assert "tunegate_domain" in summary.eval_cache_hits["candidate"]
    assert summary.eval["tunegate_domain"]["candidate"]["token_f1"] == best["value"]


def trials_in(db: Path) -> list:
    if not db.exists() or "resumable" not in optuna.get_all_study_names(f"sqlite:///{db}"):
        return []
    return optuna.load_study(study_name="resumable", storage=f"sqlite:///{db}").trials


@pytest.mark.slow
def test_a_sweep_killed_mid_trial_resumes_its_study_without_repeating_finished_trials(tmp_path, tiny_model):
    sets = ["sft.max_steps=12", "sweep.eval_steps=4", "sweep.prune=false", f"output_dir={tmp_path}/outputs",
            f"tracking.tracking_uri=sqlite:///{tmp_path}/mlflow.db", f"tracking.artifact_root={tmp_path}/artifacts",
            "sweep.space={learning_rate: {low: 1.0e-4, high: 1.0e-2, log: true}}",
            "sweep.first_trials=[{learning_rate: 2.0e-3}, {learning_rate: 3.0e-3}, {learning_rate: 4.0e-3}]"]
    cmd = [sys.executable, "-m", "cli", "sweep", "configs/tiny.yaml", "--trials", "3", "--study", "resumable",
           *[a for s in sets for a in ("--set", s)]]
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    db = tmp_path / "optuna.db"
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen([*cmd, "--set", "run_name=first"], cwd=ROOT, env=env, stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True)
    try:  # kill the whole sweep (-9, no cleanup) once the third trial is training
        wait_for(lambda: [t.state.name for t in trials_in(db)] == ["COMPLETE", "COMPLETE", "RUNNING"]
                 and "mlflow_run_id" in trials_in(db)[2].user_attrs, 600, "the third trial to start", every=0.5)
        time.sleep(3)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    before = trials_in(db)
    assert [t.state.name for t in before] == ["COMPLETE", "COMPLETE", "RUNNING"]

    second = subprocess.run([*cmd, "--set", "run_name=second"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=900)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    after = trials_in(db)
    assert [t.state.name for t in after] == ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE"]
    for old, new in zip(before[:2], after[:2]):  # finished trials kept as they were, not run again
        assert (new.datetime_start, new.value, new.params) == (old.datetime_start, old.value, old.params)
    retry = after[3]
    assert retry.user_attrs["retry_of"] == 2 and retry.params == before[2].params
    assert "no heartbeat" in retry.user_attrs["retry_reason"]
    assert "3 finished: 3 complete, 0 pruned, 0 failed" in second.stdout  # the dead trial counts once, by its retry
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("tunegate-sweeps").experiment_id])
    (parent,) = [r for r in runs if r.data.tags["tunegate.kind"] == "sweep"]  # the resumed sweep found its run
    assert parent.info.status == "FINISHED" and len(runs) == 5
    dead = next(r for r in runs if r.data.tags.get("sweep.trial") == "2")
    assert dead.info.status == "FAILED" and "no heartbeat" in dead.data.tags["sweep.reason"]
    assert "PASSED: promoted to champion" in second.stdout
