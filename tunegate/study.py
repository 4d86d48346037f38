"""The Optuna study of a sweep: where it lives, its sampler and pruner, the space as Optuna distributions, and a
trial's values as the pipeline params it trains with.

    python -m tunegate.study configs/tiny.yaml     # print the space as Optuna distributions and the storage

A study is a row set in a database (sqlite next to the MLflow DB, or the team's PostgreSQL), so any process
that loads it by name sees the same trials: the sweep's flow asks for trials, each trial's process reports to
its own trial and tells the study how it ended, and a sweep started again with the same study name goes on
from what the study holds. Every trial's process records a heartbeat; a trial RUNNING without one for
GRACE_S seconds belonged to a process that died (a crashed sweep or worker), and is failed and run again.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from tunegate.config import (DPOConfig, FloatRange, IntRange, PipelineParams, SFTConfig, SweepConfig, SweepSpace,
                             TrackingConfig, embedded, load_config, overrides_from_argv, sqlite_db)

log = logging.getLogger(__name__)

HEARTBEAT_S = 10  # a trial's process records its heartbeat this often
GRACE_S = 40  # a RUNNING trial without a heartbeat for this long belongs to a process that died
INT_FIELDS = ("lora_r", "warmup_steps")  # searched as integers: categorical ranks, warmup steps


class StudyRef(BaseModel):
    """Where a sweep's study is and what it optimizes: all a trial's process needs to load it."""

    model_config = ConfigDict(extra="forbid")
    name: str
    storage: str
    objective: str
    direction: Literal["minimize", "maximize"]
    parent_run_id: str
    experiment_id: str


class TrialRef(BaseModel):
    """One trial of a study, by its number."""

    model_config = ConfigDict(extra="forbid")
    study: StudyRef
    number: int


def storage_url(sweep: SweepConfig, tracking: TrackingConfig) -> str:
    """sweep.storage, else optuna.db next to the embedded sqlite MLflow DB; a tracking server needs it set."""
    if sweep.storage:
        return sweep.storage
    if embedded(tracking.tracking_uri):
        return f"sqlite:///{sqlite_db(tracking.tracking_uri).resolve().parent / 'optuna.db'}"
    raise ValueError(
        f"sweep.storage is not set, and tracking.tracking_uri is a server ({tracking.tracking_uri}): every worker "
        "must reach the study, so put it in the team's database, e.g. --set sweep.storage=postgresql://USER@HOST:PORT/"
        "optuna, or export TUNEGATE_SWEEP_STORAGE (make team-up: `python -m deployments.team env` prints it)")


def is_server_database(url: str) -> bool:
    """True for PostgreSQL, MySQL and the like; False for sqlite, one file that only one machine can share."""
    return not url.startswith("sqlite")


def shown_url(url: str) -> str:
    """The storage URL with any password hidden, for logs, the MLflow run and the CLI."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def rdb_storage(url: str, on_stale=None):
    """Optuna's RDBStorage with heartbeats; on_stale(study, trial) runs for each trial failed for lack of one."""
    import optuna

    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    # sqlite: a writer waits for the lock up to 30 s instead of failing at once (heartbeats and reports overlap)
    engine = {"connect_args": {"timeout": 30}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    with quiet_heartbeat_warnings():
        return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_S,
                                          grace_period=GRACE_S, heartbeat_stale_trial_callback=on_stale)


def sampler_and_pruner(sweep: SweepConfig, trials_so_far: int):
    """TPE with constant liar (trials still running count as bad guesses, so parallel trials spread out) and the
    median pruner. The seed moves on with the trial count: each ask draws from a fresh, reproducible stream, and a
    resumed study does not redraw the values its first trials had."""
    import optuna

    sampler = optuna.samplers.TPESampler(seed=sweep.seed + trials_so_far, n_startup_trials=sweep.sampler_startup_trials,
                                         constant_liar=True)
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=sweep.pruner_startup_trials) if sweep.prune
              else optuna.pruners.NopPruner())
    return sampler, pruner


@contextmanager
def quiet_heartbeat_warnings():
    """Optuna warns that heartbeats are experimental and "supposed to be used with Study.optimize": a trial asked
    for in one process and run in another records them itself (heartbeat below), which is what they are for."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
        yield


def load(ref: StudyRef, sweep: SweepConfig, storage=None):
    """The study, with this sweep's sampler and pruner."""
    import optuna

    storage = storage or rdb_storage(ref.storage)
    study = optuna.load_study(study_name=ref.name, storage=storage)
    study.sampler, study.pruner = sampler_and_pruner(sweep, len(study.get_trials(deepcopy=False)))
    return study


def distributions(space: SweepSpace) -> dict:
    """The searched fields as Optuna distributions, by field name."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out = {}
    for name, domain in space.searched().items():
        if isinstance(domain, list):
            out[name] = CategoricalDistribution(domain)
        elif isinstance(domain, IntRange):
            out[name] = IntDistribution(domain.low, domain.high, step=domain.step)
        else:
            out[name] = FloatDistribution(domain.low, domain.high, log=domain.log)
    return out


def with_trial_values(params: PipelineParams, values: dict, run_name: str) -> PipelineParams:
    """The params one trial trains with: its values set, the eval loss computed every sweep.eval_steps steps.

    The best trial's candidate is built by this same function, so its SFT config, and so its cached weights, are
    the trial's."""
    sections = {"sft": params.sft.model_dump(), "dpo": params.dpo.model_dump()}
    for name, value in values.items():
        section, field = SweepSpace.TARGETS[name].split(".")
        if name == "lora_alpha_ratio":  # alpha scales with the rank it goes with
            value = max(1, round(value * values.get("lora_r", params.sft.lora_r)))
        sections[section][field] = int(value) if name in INT_FIELDS else value
    sections["sft"]["eval_steps"] = params.sft.eval_steps or params.sweep.eval_steps
    return params.model_copy(update={"run_name": run_name, "sft": SFTConfig(**sections["sft"]),
                                     "dpo": DPOConfig(**sections["dpo"])})


def trial_id(storage, study_name: str, number: int) -> int:
    """The storage's id of a study's trial number (what heartbeats and attributes are recorded under)."""
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study_name), number)


def trial_settings(params: PipelineParams) -> dict[str, str]:
    """What a trial's objective depends on besides its searched values, flattened: the base model, the data, the
    training (DPO only when searched) and eval settings. A study resumed under other ones would rank trials that
    were not measured alike."""
    tree = params.model_dump(mode="json", include={"base_model", "trust_remote_code", "data", "sft", "dpo", "eval"})
    searched = params.sweep.space.searched()
    if not any(SweepSpace.TARGETS[name].startswith("dpo.") for name in searched):
        tree.pop("dpo")  # trials train SFT only
    for name in searched:
        section, field = SweepSpace.TARGETS[name].split(".")
        tree[section].pop(field)
    tree["sft"]["eval_steps"] = params.sft.eval_steps or params.sweep.eval_steps  # the pruner's steps

    def flat(node, prefix: str = "") -> dict[str, str]:
        if isinstance(node, dict):
            return {k: v for key, value in node.items() for k, v in flat(value, f"{prefix}{key}.").items()}
        return {prefix.rstrip("."): json.dumps(node)}

    return flat(tree)


def trial_run_name(study_name: str, number: int) -> str:
    """A trial's run folder and MLflow run name: per study, so a resumed sweep finds its trials' folders."""
    return f"{study_name}-trial-{number:03d}"


def counts(trials) -> dict[str, int]:
    """Trials finished (completed, pruned, failed; a failed one that is run again counts once, by its retry) and
    running, in a list of Optuna FrozenTrials."""
    retried = {t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs}
    finished = [t for t in trials if t.state.is_finished() and t.number not in retried]
    return {"finished": len(finished), "running": sum(t.state.name == "RUNNING" for t in trials),
            **{state: sum(t.state.name == state.upper() for t in finished) for state in ("complete", "pruned", "fail")}}


@contextmanager
def heartbeat(storage, trial_id: int):
    """Record the trial's heartbeat every HEARTBEAT_S in a thread while the block runs (Optuna's own loop does this
    inside study.optimize; a trial started by ask() in another process has to do it itself)."""
    stop = threading.Event()

    def beat() -> None:
        while True:
            try:
                storage.record_heartbeat(trial_id)
            except Exception as err:  # a database blip: the next beat tries again, well within GRACE_S
                log.warning("heartbeat of trial id %s not recorded: %s", trial_id, err)
            if stop.wait(HEARTBEAT_S):
                return

    thread = threading.Thread(target=beat, name=f"optuna-heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def describe(params: PipelineParams) -> str:
    """The space as Optuna distributions, the objective and the storage, one per line."""
    lines = [f"{name}: {dist}" for name, dist in distributions(params.sweep.space).items()]
    storage = shown_url(storage_url(params.sweep, params.tracking))
    return "\n".join([*lines, f"objective: {params.sweep.objective}", f"storage: {storage}"])


if __name__ == "__main__":
    print(describe(load_config(*overrides_from_argv(sys.argv[1:]))))
