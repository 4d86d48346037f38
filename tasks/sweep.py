"""A sweep's study stages: open (or resume) the Optuna study, hand out trials, wait for them, record the study,
and turn its best trial into a candidate for the gated pipeline.

    tunegate sweep configs/tiny.yaml --trials 4 [--study NAME]     # flows/sweep.py calls these in order

The study is created under `sweep.study` (default: the run name) in `sweep.storage`; a study of that name that
already exists is resumed: its finished trials count and are never run again, a trial whose process died is
failed (no heartbeat) and run again with the same values. Its objective and space must be the ones it was
made with. The sweep's MLflow run (experiment `<experiment>-sweeps`) is made with the study and found again on
resume; each trial is a child run of it (tasks/trial.py). At the end the parent run gets the study's table, its
best trial and Optuna's plots (parameter importances, parallel coordinates, optimization history, the eval
loss of every trial by step, pruned ones included), and the best trial's values become a PipelineParams that
the finetune pipeline trains, evaluates on the full suite, judges, gates and promotes like any run.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime
from pathlib import Path
from uuid import UUID

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict

from tasks.evaluate import EvalSuite
from tasks.trial import mark_failed_run
from tunegate.config import PipelineParams, SweepConfig, TrackingConfig
from tunegate.registry import connect, sweep_experiment
from tunegate.study import (GRACE_S, StudyRef, TrialRef, counts, distributions, load, quiet_heartbeat_warnings,
                            rdb_storage, shown_url, storage_url, trial_id, trial_settings, with_trial_values)

log = logging.getLogger(__name__)
POLL_S = 2.0  # how often a waiting sweep looks at its study and its trials' flow runs
# Every stage here reads or changes the study, so none may be a cache hit (cache_policy=NO_CACHE): Prefect's default
# policy (inputs + source + flow run) would hand a second next_trial(study, sweep) in one sweep the first one's
# trial whenever results are persisted (PREFECT_RESULTS_PERSIST_BY_DEFAULT).
PLOTS = ("param_importances", "parallel_coordinate", "optimization_history", "intermediate_values")


class SweepError(ValueError):
    """The sweep cannot start or cannot finish as configured; raised before any trial when the input is wrong."""


class Progress(BaseModel):
    """Where the study stands: trials finished and running, the launched ones still going, whether one may start."""

    model_config = ConfigDict(extra="forbid")
    finished: int
    running: int
    in_flight: dict[int, str]
    may_start: bool


class TrialRow(BaseModel):
    """One trial in the study's table."""

    model_config = ConfigDict(extra="forbid")
    number: int
    state: str
    value: float | None
    values: dict
    reason: str | None
    started: str | None
    finished: str | None
    seconds: float | None
    host: str | None
    flow_run_id: str | None
    mlflow_run_id: str | None
    retry_of: int | None


class StudyResult(BaseModel):
    """The study at the end of a sweep: every trial, the counts, the best trial, and where the parent run is."""

    model_config = ConfigDict(extra="forbid")
    study: str
    storage: str
    objective: str
    direction: str
    trials: list[TrialRow]
    counts: dict[str, int]
    best: TrialRow | None
    parent_run_id: str
    plots: dict[str, str]
    plots_skipped: dict[str, str]
    candidate_run: str | None = None


@task(cache_policy=NO_CACHE)
def check_sweep(params: PipelineParams) -> None:
    """Fail in seconds, before the data stages: no storage for the study, one it cannot reach, several processes."""
    if params.sft.num_processes > 1:
        raise SweepError("sweep trials train in one process each (the pruner's callback lives in it): set "
                         "sft.num_processes=1; the best trial's pipeline run may use more")
    url = storage_url(params.sweep, params.tracking)  # raises with what to set for a tracking server
    try:
        rdb_storage(url)  # connects, and creates Optuna's tables in a new database
    except Exception as err:  # sqlalchemy's OperationalError and the like: say where and why, once
        raise SweepError(f"sweep.storage {shown_url(url)} cannot be reached: {err}") from err


def objective_direction(objective: str, suite: EvalSuite) -> str:
    """minimize for eval_loss, else the direction the eval task declares for the metric; a metric it lacks fails."""
    if objective == "eval_loss":
        return "minimize"
    task_name, metric = objective.split("/", 1)
    spec = next(s for s in suite.tasks if s["name"] == task_name)  # the config checked the task is in the suite
    if metric not in spec["higher_is_better"]:
        raise SweepError(f"sweep.objective {objective}: {task_name} has no metric {metric!r}; it has "
                         f"{sorted(spec['higher_is_better'])}")
    return "maximize" if spec["higher_is_better"][metric] else "minimize"


def space_key(sweep: SweepConfig) -> str:
    return json.dumps(sweep.space.model_dump(exclude_none=True), sort_keys=True)


def start_parent_run(params: PipelineParams, name: str, url: str, direction: str) -> tuple[str, str]:
    """The sweep's MLflow run; returns (run id, experiment id)."""
    from mlflow.entities import Param

    from tunegate.study import describe

    client, experiment_id = sweep_experiment(params.tracking)
    run = client.create_run(experiment_id, run_name=name, tags={
        "tunegate.kind": "sweep", "sweep.study": name, "sweep.storage": shown_url(url),
        "sweep.objective": params.sweep.objective, "sweep.direction": direction})
    logged = {"sweep.objective": params.sweep.objective, "sweep.direction": direction,
              "sweep.space": space_key(params.sweep), "sweep.prune": params.sweep.prune,
              "sweep.seed": params.sweep.seed, "sweep.eval_steps": params.sweep.eval_steps,
              "base_model": params.base_model, "config.name": params.name}
    client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in logged.items()])
    client.log_text(run.info.run_id, describe(params), "sweep/space.txt")
    return run.info.run_id, experiment_id


@task(cache_policy=NO_CACHE)
def open_study(params: PipelineParams, suite: EvalSuite) -> StudyRef:
    """Create the study (its first trials queued, its MLflow run made), or resume the one of this name."""
    import optuna

    sweep = params.sweep
    direction = objective_direction(sweep.objective, suite)
    url, name = storage_url(sweep, params.tracking), sweep.study or params.run_name
    study = optuna.create_study(study_name=name, storage=rdb_storage(url), direction=direction, load_if_exists=True)
    made, settings = study.user_attrs, trial_settings(params)
    if not made:
        parent_run_id, experiment_id = start_parent_run(params, name, url, direction)
        made = {"objective": sweep.objective, "space": space_key(sweep), "settings": settings,
                "parent_run_id": parent_run_id, "experiment_id": experiment_id,
                "created": datetime.now().isoformat(timespec="seconds")}
        for key, value in made.items():
            study.set_user_attr(key, value)
        for values in sweep.first_trials:
            study.enqueue_trial(values)
    elif (made["objective"], made["space"]) != (sweep.objective, space_key(sweep)):
        raise SweepError(f"study {name} in {shown_url(url)} searches {made['space']} for {made['objective']}; this "
                         f"config asks for {space_key(sweep)} for {sweep.objective}. Resume it with its own objective "
                         "and space, or start a new study (sweep.study / --study).")
    elif made["settings"] != settings:
        changed = sorted(set(made["settings"].items()) ^ set(settings.items()))
        shown = sorted({key for key, _ in changed})[:6]
        raise SweepError(f"study {name} was run with other settings than this config's, so its trials and new ones "
                         "would not be measured alike: " + "; ".join(
                             f"{key}: {made['settings'].get(key, '-')} -> {settings.get(key, '-')}" for key in shown)
                         + ". Resume it with its own settings, or start a new study (sweep.study / --study).")
    else:
        client, _ = connect(params.tracking)
        client.update_run(made["parent_run_id"], status="RUNNING")
        done = counts(study.get_trials(deepcopy=False))
        client.set_tag(made["parent_run_id"], f"sweep.resumed.{datetime.now():%Y%m%dT%H%M%S}",
                       f"{done['finished']} trials finished, {done['running']} running")
        log.info("Resuming study %s: %d of %d trials finished, %d running", name, done["finished"], sweep.trials,
                 done["running"])
    log.info("Study %s in %s (%s %s); a sweep stopped before its end resumes with --study %s", name, shown_url(url),
             direction, sweep.objective, name)
    return StudyRef(name=name, storage=url, objective=sweep.objective, direction=direction,
                    parent_run_id=made["parent_run_id"], experiment_id=made["experiment_id"])


@task(task_run_name="next-trial", cache_policy=NO_CACHE)
def next_trial(study: StudyRef, sweep: SweepConfig) -> TrialRef:
    """Ask the sampler for the next trial's values (a queued trial first: the first trials, a retried one)."""
    with quiet_heartbeat_warnings():
        trial = load(study, sweep).ask(distributions(sweep.space))
    log.info("Trial %d: %s", trial.number, trial.params)
    return TrialRef(study=study, number=trial.number)


def retry_stale(tracking: TrackingConfig):
    """For Optuna's fail_stale_trials: the dead trial's MLflow run failed with the reason, its values queued again."""

    def on_stale(study, trial) -> None:
        reason = (f"no heartbeat for {GRACE_S} s: the process running it died (a crashed sweep or worker); its "
                  "values are queued to run again")
        log.warning("Trial %d: %s", trial.number, reason)
        if "mlflow_run_id" in trial.user_attrs:  # absent when the process died before the trial's run was made
            mark_failed_run(connect(tracking)[0], trial.user_attrs["mlflow_run_id"], reason)
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number, "retry_reason": reason})

    return on_stale


def settle_flow_runs(study, storage, launched: dict[int, str], tracking: TrackingConfig) -> dict[int, str]:
    """The launched trials whose flow runs still go. A flow run that ended while its trial is still RUNNING (its
    worker was killed, it crashed before telling) fails the trial now, with the flow run's state as the reason."""
    from optuna.trial import TrialState
    from prefect.client.orchestration import get_client

    going = {}
    with get_client(sync_client=True) as prefect:
        for number, run_id in launched.items():
            run = prefect.read_flow_run(UUID(run_id))
            if not run.state.is_final():
                going[number] = run_id
                continue
            trial = study.get_trials(deepcopy=False)[number]
            if trial.state == TrialState.RUNNING:
                reason = f"its flow run {run.name} ended {run.state.type.value}: {run.state.message}"[:400]
                storage.set_trial_user_attr(trial_id(storage, study.study_name, number), "reason", reason)
                study.tell(number, state=TrialState.FAIL)
                if "mlflow_run_id" in trial.user_attrs:
                    mark_failed_run(connect(tracking)[0], trial.user_attrs["mlflow_run_id"], reason)
    return going


@task(task_run_name="wait-for-a-trial-slot", cache_policy=NO_CACHE)
def wait_for_slot(study: StudyRef, params: PipelineParams, launched: dict[int, str], slots: int) -> Progress:
    """Wait until the study has sweep.trials finished trials, or a trial may start (fewer than `slots` of ours
    running). Meanwhile trials without a heartbeat are failed and queued again, and trials whose flow run ended
    without telling the study are failed with the flow run's state."""
    import optuna

    storage = rdb_storage(study.storage, on_stale=retry_stale(params.tracking))
    optuna_study = load(study, params.sweep, storage)
    target = params.sweep.trials
    while True:
        with quiet_heartbeat_warnings():
            optuna.storages.fail_stale_trials(optuna_study)
        in_flight = settle_flow_runs(optuna_study, storage, launched, params.tracking) if launched else {}
        now = counts(optuna_study.get_trials(deepcopy=False))
        may_start = now["finished"] + now["running"] < target and len(in_flight) < slots
        if now["finished"] >= target or may_start:
            return Progress(finished=now["finished"], running=now["running"], in_flight=in_flight, may_start=may_start)
        time.sleep(POLL_S)


def trial_rows(trials) -> list[TrialRow]:
    """The study's trials as table rows; a trial failed for lack of a heartbeat gets its reason from its retry."""
    retries = {t.user_attrs["retry_of"]: t for t in trials if "retry_of" in t.user_attrs}
    rows = []
    for t in trials:
        attrs = t.user_attrs
        reason = attrs.get("reason") or (retries[t.number].user_attrs["retry_reason"] if t.number in retries else None)
        start, end = t.datetime_start, t.datetime_complete
        rows.append(TrialRow(
            number=t.number, state=t.state.name, value=t.value, values=t.params, reason=reason,
            started=start.isoformat(timespec="seconds") if start else None,
            finished=end.isoformat(timespec="seconds") if end else None,
            seconds=round((end - start).total_seconds(), 1) if start and end else None,
            host=attrs.get("host"), flow_run_id=attrs.get("flow_run_id"), mlflow_run_id=attrs.get("mlflow_run_id"),
            retry_of=attrs.get("retry_of")))
    return rows


def save_plots(study, out: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Optuna's matplotlib plots of the study as PNGs; the ones it has too few trials for, with Optuna's reason."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as plots

    made, skipped = {}, {}
    for name in PLOTS:
        try:
            with warnings.catch_warnings():  # optuna marks its matplotlib backend experimental, on every call
                warnings.simplefilter("ignore")
                axes = getattr(plots, f"plot_{name}")(study)
        except (ValueError, RuntimeError) as err:  # e.g. importances need two completed trials
            skipped[name] = str(err)
            continue
        figure = axes.figure  # these four plots are one Axes each (contour and slice plots would be grids)
        figure.set_size_inches(10, 5.5)
        figure.tight_layout()
        figure.savefig(out / f"{name}.png", dpi=110)
        plt.close(figure)
        made[name] = str(out / f"{name}.png")
    return made, skipped


@task(cache_policy=NO_CACHE)
def record_study(study: StudyRef, sweep: SweepConfig, tracking: TrackingConfig, out_dir: str) -> StudyResult:
    """The study's table, best trial and plots onto the sweep's MLflow run (then finished) and <run>/sweep.json."""
    optuna_study = load(study, sweep)
    trials = optuna_study.get_trials()
    rows = trial_rows(trials)
    complete = [r for r in rows if r.state == "COMPLETE"]
    best = next(r for r in rows if r.number == optuna_study.best_trial.number) if complete else None
    out = Path(out_dir) / "sweep"
    out.mkdir(parents=True, exist_ok=True)
    made, skipped = save_plots(optuna_study, out)
    result = StudyResult(study=study.name, storage=shown_url(study.storage), objective=study.objective,
                         direction=study.direction, trials=rows, counts=counts(trials), best=best,
                         parent_run_id=study.parent_run_id, plots=made, plots_skipped=skipped)
    client, _ = connect(tracking)
    run_id = study.parent_run_id
    table = [{**r.model_dump(exclude={"values"}), **{f"param {k}": v for k, v in r.values.items()}} for r in rows]
    client.log_table(run_id, data={key: [row.get(key) for row in table] for key in dict.fromkeys(
        k for row in table for k in row)}, artifact_file="sweep/trials.json")
    client.log_dict(run_id, best.model_dump() if best else {"best": None, "why": "no trial completed"},
                    "sweep/best_trial.json")
    for path in made.values():
        client.log_artifact(run_id, path, "sweep")
    if skipped:
        client.log_dict(run_id, skipped, "sweep/plots_skipped.json")
    now = int(time.time() * 1000)
    from mlflow.entities import Metric

    metrics = [Metric(f"trials/{k}", v, now, 0) for k, v in result.counts.items()]
    if best:
        metrics.append(Metric("best/objective", best.value, now, 0))
        client.set_tag(run_id, "sweep.best_trial", str(best.number))
        client.set_tag(run_id, "sweep.best_values", json.dumps(best.values))
    client.log_batch(run_id, metrics=metrics)
    client.set_terminated(run_id, "FINISHED")
    (Path(out_dir) / "sweep.json").write_text(result.model_dump_json(indent=2))
    return result


@task(cache_policy=NO_CACHE)
def best_candidate(result: StudyResult, params: PipelineParams) -> PipelineParams:
    """The best completed trial's values as a pipeline run of their own; the gate, not the objective, decides."""
    if result.best is None:
        reasons = "; ".join(f"trial {r.number} {r.state.lower()}: {r.reason}" for r in result.trials if r.reason)
        raise SweepError(f"study {result.study}: no trial completed ({result.counts}), so there is no candidate to "
                         f"gate. {reasons}")
    candidate = with_trial_values(params, result.best.values, f"{params.run_name}-best")
    client, _ = connect(params.tracking)
    client.set_tag(result.parent_run_id, "sweep.candidate_run", candidate.run_name)
    log.info("Best trial %d (%s %s = %.4f): %s -> pipeline run %s", result.best.number, result.direction,
             result.objective, result.best.value, result.best.values, candidate.run_name)
    return candidate


@task(cache_policy=NO_CACHE)
def record_gate(result: StudyResult, candidate: PipelineParams, tracking: TrackingConfig) -> dict | None:
    """The candidate's gate decision (its summary.json, written once the gate decided) onto the sweep's run."""
    path = Path(candidate.paths().run) / "summary.json"
    client, _ = connect(tracking)
    if not path.exists():
        client.set_tag(result.parent_run_id, "sweep.gate", "no decision: the candidate's run failed before its gate")
        return None
    summary = json.loads(path.read_text())
    for key, value in {"sweep.gate": summary["gate"], "sweep.promoted": summary["promoted"],
                       "sweep.model_version": summary["model_version"],
                       "sweep.candidate_mlflow_run": summary["mlflow_run_id"]}.items():
        client.set_tag(result.parent_run_id, key, str(value))
    client.log_dict(result.parent_run_id, summary, "sweep/candidate_summary.json")
    return summary
