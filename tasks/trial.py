"""A sweep's trial stage: train one trial's values, report its eval loss to the pruner, tell the study how it ended.

    tunegate sweep configs/tiny.yaml --trials 4     # runs this once per trial (flows/sweep.py: sweep_trial)

The trial trains with the sft stage itself (and the dpo stage when the space searches a dpo field), with a
Trainer callback that reports each eval loss on the held-out split to the trial. When the pruner says the
trial is worse than the median of earlier ones at that step, the callback raises TrialPruned: training stops
there, and because the sft task raised, Prefect caches nothing for it, so no partial model is ever taken for
a finished one. A loss that is not finite, or no better than a uniform guess over the vocabulary, is a
divergence; it and any other error (out of memory ...) end the trial as failed, with the reason on the trial
and on its MLflow run, and the study goes on. Each trial is an MLflow child run (tag mlflow.parentRunId) of
the sweep's run, with its values as params and its loss curves as step metrics.
"""

from __future__ import annotations

import math
import os
import socket
import tempfile
import time
from contextlib import contextmanager

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from pydantic import BaseModel, ConfigDict

from tasks.dpo import Aligned, dpo
from tasks.evaluate import EvalSuite, evaluate_suite
from tasks.prepare import Prepared
from tasks.sft import sft
from tunegate.config import PipelineParams, SFTConfig, SweepSpace
from tunegate.registry import connect
from tunegate.study import (TrialRef, heartbeat, load, rdb_storage, shown_url, trial_id, trial_run_name,
                            with_trial_values)

UNIFORM_MARGIN = 1e-3  # nats: a loss within this of ln(vocabulary size) is a model that guesses uniformly
MLFLOW_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}


class TrialDiverged(RuntimeError):
    """The trial's loss is not finite, or no better than guessing every token uniformly."""


class TrialOutcome(BaseModel):
    """How one trial ended: complete with its objective, pruned at a step, or failed with the reason."""

    model_config = ConfigDict(extra="forbid")
    number: int
    state: str
    value: float | None
    values: dict
    reason: str | None
    mlflow_run_id: str
    seconds: float


def divergence(name: str, value: float, step: int, uniform_loss: float) -> str | None:
    """Why a logged value means the trial diverged, or None."""
    if not math.isfinite(value):
        return f"{name} is {value} at step {step}"
    if name.endswith("loss") and value >= uniform_loss - UNIFORM_MARGIN:
        return (f"{name} {value:.4f} at step {step} is no better than a uniform guess over the vocabulary "
                f"(ln V = {uniform_loss:.4f}): the model collapsed")
    return None


def report_callback(trial, client, run_id: str, minimize: bool):
    """A Trainer callback: losses to the trial's MLflow run, each eval loss to the Optuna trial and its pruner."""
    from mlflow.entities import Metric
    from optuna import TrialPruned
    from transformers import TrainerCallback

    class ReportToTrial(TrainerCallback):
        """Raises rather than setting control.should_training_stop: a stopped Trainer would save and return the
        partial model as if it had finished, and the sft task would cache it under these values. Step metrics are
        written at each evaluation, in one batch: one MLflow call per value took ~0.6 s on a busy sqlite store."""

        def __init__(self):
            self.pending = []  # step metrics not yet written

        def flush(self) -> None:
            if self.pending:
                client.log_batch(run_id, metrics=self.pending)
                self.pending = []

        def record(self, name: str, value: float, step: int, vocab_size: int) -> None:
            why = divergence(name.replace("_", " "), value, step, math.log(vocab_size))
            if why:
                self.flush()
                raise TrialDiverged(why)
            self.pending.append(Metric(f"train/{name}_step", value, int(time.time() * 1000), step))

        def on_log(self, args, state, control, logs=None, model=None, **kwargs):
            for key in ("loss", "grad_norm"):
                if key in (logs or {}):
                    self.record(key, logs[key], state.global_step, model.config.vocab_size)

        def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
            loss, step = metrics["eval_loss"], state.global_step
            self.record("eval_loss", loss, step, model.config.vocab_size)
            self.flush()
            # The pruner compares intermediate values in the study's direction: a maximized metric gets -loss.
            trial.report(loss if minimize else -loss, step)
            # At the last step training is over: pruning would only throw a finished trial away.
            if step < state.max_steps and trial.should_prune():
                raise TrialPruned(f"pruned at step {step}: eval loss {loss:.4f} is worse than the median of the "
                                  "finished trials at that step")

        def on_train_end(self, args, state, control, **kwargs):
            self.flush()

    return ReportToTrial()


def held_out_loss(aligned: Aligned, prepared: Prepared, cfg: SFTConfig) -> float:
    """The final weights' loss on the held-out domain split, on the answer tokens, computed as SFT's eval does."""
    import torch
    from datasets import load_dataset
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig as TRLSFTConfig
    from trl import SFTTrainer

    from tunegate.models import load_chat_tokenizer

    base = prepared.base
    tokenizer = load_chat_tokenizer(base.path, base.trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(aligned.model or base.path, dtype=torch.float32,
                                                 trust_remote_code=base.trust_remote_code)
    if aligned.adapter:
        model = PeftModel.from_pretrained(model, aligned.adapter)
    data = load_dataset("json", data_files={"eval": prepared.eval})["eval"].remove_columns(["id"])
    with tempfile.TemporaryDirectory(prefix="tunegate-trial-eval-") as out:
        args = TRLSFTConfig(output_dir=out, per_device_eval_batch_size=cfg.batch_size, max_length=cfg.max_length,
                            report_to=[], use_cpu=not torch.cuda.is_available(), bf16=False, fp16=False)
        # SFTTrainer insists on a train set; it is never trained on here
        trainer = SFTTrainer(model=model, args=args, train_dataset=data, eval_dataset=data, processing_class=tokenizer)
        return float(trainer.evaluate()["eval_loss"])


def objective_value(aligned: Aligned, prepared: Prepared, suite: EvalSuite, params: PipelineParams) -> float:
    """sweep.objective of the trial's final weights: eval_loss, or one task metric scored by lm-eval (cached)."""
    objective, trained = params.sweep.objective, aligned.sft
    last_eval = trained.eval_loss_curve[-1] if trained.eval_loss_curve else None
    if objective == "eval_loss" and aligned.skipped and last_eval and last_eval[0] == trained.steps:
        return last_eval[1]  # SFT already evaluated these weights on the held-out split (tests/test_sweep.py)
    if objective == "eval_loss":
        return held_out_loss(aligned, prepared, params.sft)
    task_name, metric = objective.split("/", 1)
    one_task = {**suite.model_dump(), "tasks": [s for s in suite.tasks if s["name"] == task_name]}
    model = {"label": params.run_name, "adapter": aligned.adapter, "model": aligned.model, "version": None}
    return float(evaluate_suite(model, one_task, params.tracking)["tasks"][task_name]["metrics"][metric])


def searches_dpo(params: PipelineParams) -> bool:
    return any(SweepSpace.TARGETS[name].startswith("dpo.") for name in params.sweep.space.searched())


def train_and_score(params: PipelineParams, prepared: Prepared, suite: EvalSuite, callback) -> float:
    """SFT with the trial's callback, DPO when the space searches it, then the objective of the final weights."""
    paths = params.paths()
    trained = sft(prepared, params.sft, paths.sft, paths.checkpoints, callbacks=[callback])
    if searches_dpo(params):
        aligned = dpo(trained, prepared, params.dpo, paths.dpo)
    else:  # the candidate's pipeline runs DPO as configured; the trials compare SFT settings
        aligned = Aligned(skipped=True, skip_reason="the sweep searches no dpo field", adapter=trained.adapter,
                          model=trained.model, sft=trained)
    value = objective_value(aligned, prepared, suite, params)
    if not math.isfinite(value):
        raise TrialDiverged(f"objective {params.sweep.objective} is {value}")
    return value


def failure_reason(err: BaseException) -> str:
    """One line saying why a trial failed; out-of-memory errors are named as such."""
    text = f"{type(err).__name__}: {err}".splitlines()[0][:400]
    if type(err).__name__ == "OutOfMemoryError" or "can't allocate memory" in text or "out of memory" in text:
        return f"out of memory: {text}"
    return f"diverged: {err}" if isinstance(err, TrialDiverged) else text


@contextmanager
def torch_threads(threads: int | None):
    """torch's CPU thread count for the block (sweep.trial_threads), then the one before."""
    if threads is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def start_child_run(trial: TrialRef, values: dict, params: PipelineParams) -> tuple:
    """The trial's MLflow run, a child of the sweep's run: its values as params; returns (client, run id)."""
    from mlflow.entities import Param

    client, _ = connect(params.tracking)
    study = trial.study
    run = client.create_run(study.experiment_id, run_name=params.run_name, tags={
        "mlflow.parentRunId": study.parent_run_id, "tunegate.kind": "sweep-trial", "sweep.study": study.name,
        "sweep.trial": str(trial.number), "sweep.host": socket.gethostname(),
        "sweep.flow_run_id": str(flow_run.id or ""), "sweep.storage": shown_url(study.storage)})
    sections = {"sft": params.sft.model_dump(), "dpo": params.dpo.model_dump()}
    resolved = {target: sections[target.split(".")[0]][target.split(".")[1]]
                for target in (SweepSpace.TARGETS[name] for name in values)}  # e.g. sft.lora_alpha from its ratio
    client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in {
        **{f"trial.{k}": v for k, v in values.items()}, **resolved, "trial.number": trial.number}.items()])
    return client, run.info.run_id


def end_child_run(client, run_id: str, outcome: TrialOutcome) -> None:
    """How the trial ended, onto its MLflow run: state and reason as tags, objective and time as metrics."""
    from mlflow.entities import Metric, RunTag

    now = int(time.time() * 1000)
    metrics = [Metric("trial/seconds", outcome.seconds, now, 0)]
    metrics += [Metric("objective", outcome.value, now, 0)] if outcome.value is not None else []
    tags = [RunTag("sweep.state", outcome.state)] + ([RunTag("sweep.reason", outcome.reason)] if outcome.reason else [])
    client.log_batch(run_id, metrics=metrics, tags=tags)
    client.set_terminated(run_id, MLFLOW_STATUS[outcome.state])


@task(task_run_name="trial-{trial.number}", cache_policy=NO_CACHE)  # it tells the study: never a cache hit
def run_trial(trial: TrialRef, params: PipelineParams, prepared: Prepared, suite: EvalSuite) -> TrialOutcome:
    """Train one trial's values and tell the study: complete with the objective, pruned, or failed with the reason."""
    import optuna

    storage = rdb_storage(trial.study.storage)
    study = load(trial.study, params.sweep, storage)
    stored_id = trial_id(storage, trial.study.name, trial.number)
    live = optuna.trial.Trial(study, stored_id)
    trial_params = with_trial_values(params, live.params, trial_run_name(trial.study.name, trial.number))
    client, run_id = start_child_run(trial, live.params, trial_params)
    for key, value in {"mlflow_run_id": run_id, "host": socket.gethostname(), "pid": os.getpid(),
                       "flow_run_id": str(flow_run.id or "")}.items():
        live.set_user_attr(key, value)
    callback = report_callback(live, client, run_id, trial.study.direction == "minimize")
    value, reason, state, start = None, None, "COMPLETE", time.perf_counter()
    with heartbeat(storage, stored_id), torch_threads(params.sweep.trial_threads):
        try:
            value = train_and_score(trial_params, prepared, suite, callback)
        except optuna.TrialPruned as pruned:
            state, reason = "PRUNED", str(pruned)
        except Exception as err:  # noqa: BLE001 - any error ends this trial, not the study (issue 25)
            state, reason = "FAIL", failure_reason(err)
    if reason:  # set while the trial still runs: a finished trial takes no attributes
        live.set_user_attr("reason", reason)
    if state == "COMPLETE":
        study.tell(live, value)
    else:  # a pruned trial keeps its last reported eval loss as its value
        study.tell(live, state=optuna.trial.TrialState[state])
    outcome = TrialOutcome(number=trial.number, state=state, value=value, values=live.params, reason=reason,
                           mlflow_run_id=run_id, seconds=round(time.perf_counter() - start, 1))
    end_child_run(client, run_id, outcome)
    return outcome


def mark_failed_run(client, run_id: str, reason: str) -> None:
    """A trial's MLflow run whose process died, or whose flow run ended without telling the study: FAILED, and why."""
    from mlflow.entities import RunTag

    client.log_batch(run_id, tags=[RunTag("sweep.state", "FAIL"), RunTag("sweep.reason", reason)])
    client.set_terminated(run_id, "FAILED")
