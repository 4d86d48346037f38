"""One config schema for the whole pipeline.

It loads from YAML, takes `--set key=value` overrides, and is the flow's parameter type, so the
Prefect UI renders it as a form. Every field carries help text, shown in that form.

    python -m tunegate.config configs/demo.yaml --set sft.max_steps=3   # print the resolved config
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import warnings
from pathlib import Path
from datetime import datetime
from typing import ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FileFormat(_Section):
    format: Literal["auto", "alpaca", "sharegpt", "openai", "prompt_completion", "kto", "preference"] = Field(
        "auto", description="The file's format; auto detects it per row from the keys."
    )
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="Column mapping {canonical name: column in the file}, e.g. {instruction: question, output: answer}.",
    )


PiiType = Literal["API_KEY", "EMAIL", "IBAN", "CREDIT_CARD", "SSN", "PHONE", "IP_ADDRESS", "SECRET"]


class ChecksConfig(_Section):
    max_fraction: dict[str, float] = Field(
        default_factory=dict,
        description="Per-rule threshold {rule: largest failing share of rows}, e.g. {duplicates_near: 0.3, "
        "pii_email: 0.0}. Rules not named use data.max_rejected_fraction. `tunegate validate` lists the rules.",
    )
    pii_policies: dict[PiiType, Literal["reject", "redact"]] = Field(
        default_factory=dict, description="Per-type PII policy, e.g. {IP_ADDRESS: redact}; others use data.pii_policy."
    )
    near_duplicate_threshold: float = Field(
        0.85, gt=0, le=1, description="MinHash Jaccard similarity at which two rows count as near-duplicates."
    )
    minhash_num_perm: int = Field(32, ge=8, le=1024, description="MinHash signature size (a power of two).")
    shingle_words: int = Field(3, ge=1, description="Words per MinHash shingle.")
    leakage_ngram: int = Field(13, ge=3, description="Words per n-gram in the train/eval overlap check.")
    max_row_mb: float = Field(16.0, gt=0, description="Rows larger than this are rejected at ingest without parsing.")
    contradiction: bool = Field(
        True, description="Check new rows (feedback, general data) against the curated domain_files before training.",
    )
    conflict_prompt_similarity: float = Field(
        0.5, gt=0, le=1,
        description="A new row's prompt is 'close' to a curated prompt at this Jaccard similarity of their words.",
    )
    conflict_min_fact_share: float = Field(
        0.34, ge=0, le=1,
        description="A new row whose prompt is close to a curated one conflicts when its answer keeps less than this "
        "share of the curated answer's key facts (names, numbers, rare domain terms), or when it swaps one of its "
        "names or numbers for another.",
    )
    conflict_max_fraction: float = Field(
        0.1, ge=0, le=1,
        description="Stop before training, for a reviewer, when more than this share of the window (feedback rows; "
        "without feedback, every non-curated row) conflicts with curated data. Below it, conflicting rows are "
        "quarantined and the run goes on.",
    )
    conflicts_approved: str | None = Field(
        None,
        description="'<reviewer>: <reason>' approves conflicting rows: they train instead of stopping the run. "
        "Recorded in the validation report and on the MLflow run. Never set by default.",
    )
    rater_min_ratings: int = Field(
        5, ge=1,
        description="A user is judged as a rater (and can be flagged) only with at least this many ratings in the "
        "window that other evidence can be compared with (other users' ratings of the same answer, a reward model, "
        "a reference answer).",
    )
    rater_max_gap: float = Field(
        0.3, gt=0, le=1,
        description="A user whose agreement (with the other raters' trust-weighted consensus, the reward model and "
        "reference answers) is this far below the median user's is a flagged rater: their feedback rows are "
        "quarantined as rater_outlier (data_checks/raters.py).",
    )
    rater_max_fraction: float = Field(
        0.1, ge=0, le=1,
        description="Stop before training, for a reviewer, when more than this share of the window's rows comes "
        "from flagged raters (as conflicts do; approve with feedback.approved_window).",
    )


class DataConfig(_Section):
    domain_files: list[str] = Field(
        description="Your task's SFT data: JSON, JSONL, CSV or Parquet in any supported format (see tasks/ingest.py). "
        "Split into train and a held-out eval set that becomes the domain eval task."
    )
    general_files: list[str] = Field(
        default_factory=list,
        description="General instruction data mixed into training to limit forgetting. All of it trains.",
    )
    preference_files: list[str] = Field(
        default_factory=list,
        description="Preference pairs for DPO (prompt/chosen/rejected, ShareGPT chosen/rejected or OpenAI DPO).",
    )
    file_formats: dict[str, FileFormat] = Field(
        default_factory=dict, description="Per file (as listed above): its format and column mapping, when not auto."
    )
    general_holdout_file: str = Field(
        description="Held-out general instructions (Alpaca) for the general-capability regression eval."
    )
    feedback_files: list[str] = Field(
        default_factory=list,
        description="Production feedback turned into SFT rows (retrain-from-feedback fills this). They train like "
        "general_files and are the window the contradiction check measures against the curated domain_files.",
    )
    feedback_preference_files: list[str] = Field(
        default_factory=list,
        description="Production feedback turned into preference pairs (retrain-from-feedback fills this): DPO data "
        "and part of the window, judged by their chosen answers.",
    )
    production_eval_file: str | None = Field(
        None,
        description="The production regression set (retrain-from-feedback fills this): prompts seen in feedback with "
        "references no window can rewrite, scored as the eval task tunegate_production.",
    )
    eval_fraction: float = Field(0.1, gt=0, lt=1, description="Share of domain rows held out for evaluation.")
    min_eval_per_stratum: int = Field(
        3, ge=0,
        description="Every stratum of the domain data (source file x detected language) gets at least this many "
        "eval rows, while one row is left to train on; the validation report lists strata that fall short.",
    )
    split_seed: int = Field(0, description="Seed of the deterministic train/eval split.")
    max_rejected_fraction: float = Field(
        0.2, ge=0, le=1,
        description="Fail the run when more than this share of rows fails a data check (per rule; see checks.max_fraction).",
    )
    pii_policy: Literal["reject", "redact"] = Field(
        "reject", description="reject: quarantine rows with PII. redact: replace values with <EMAIL>, <PHONE>, ... "
        "Per type: checks.pii_policies.",
    )
    checks: ChecksConfig = Field(default_factory=ChecksConfig, description="Data check thresholds and settings.")
    feedback_ratings_file: str | None = Field(
        None,
        description="The feedback window's ratings, one per (user, answer), with the reward model's score where one "
        "was registered (retrain-from-feedback fills this): the rater agreement check reads it.",
    )

    @model_validator(mode="after")
    def _domain_data_given(self) -> DataConfig:
        if not self.domain_files:
            raise ValueError(
                "data.domain_files is empty: list at least one file of your task's own SFT data. Its held-out rows "
                "are the domain eval every candidate is gated on, and the curated answers that general data, "
                "preferences and feedback are checked against; general, preference or feedback files alone have none.")
        return self


# Usual peak learning rates; outside them training usually diverges or does nothing.
LR_RANGES = {"lora": (1e-5, 5e-3), "dora": (1e-5, 5e-3), "qlora": (1e-5, 5e-3), "full": (1e-7, 2e-4)}


class SFTConfig(_Section):
    method: Literal["lora", "dora", "qlora", "full"] = Field(
        "lora",
        description="lora: low-rank adapters. dora: weight-decomposed LoRA (peft use_dora). qlora: LoRA on a "
        "4-bit NF4 base (CUDA only). full: every weight trains.",
    )
    lora_r: int = Field(16, ge=1, description="LoRA rank.")
    lora_alpha: int | None = Field(None, description="LoRA alpha; default 2 * r.")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Modules that get adapters; 'all-linear' means every linear layer but the head."
    )
    learning_rate: float = Field(2e-4, gt=0, description="Peak learning rate (cosine decay after warmup).")
    num_epochs: float = Field(1.0, gt=0, description="Epochs over the train split (ignored when max_steps > 0).")
    max_steps: int = Field(-1, description="Stop after this many optimizer steps; -1 trains num_epochs.")
    batch_size: int = Field(8, ge=1, description="Per-device batch size.")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Steps to accumulate per optimizer step.")
    warmup_steps: int = Field(2, description="Linear warmup steps before the cosine decay. Must be >= 1.")
    max_length: int = Field(512, ge=16, description="Maximum tokens per row after the chat template.")
    packing: bool = Field(False, description="Pack several rows into each sequence (TRL packing).")
    padding_free: bool = Field(
        True, description="Each batch's rows run as one unpadded sequence, kept apart by their position ids (TRL "
        "padding_free): the same batches and loss as padded rows, without computing the padding.")
    optimizer: Literal["adamw_torch", "adamw_8bit"] = Field(
        "adamw_torch", description="adamw_torch, or adamw_8bit (bitsandbytes, CUDA only) to save optimizer memory."
    )
    seed: int = Field(42, description="Training seed.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 on GPUs that support it, fp16 on older GPUs; on CPU the faster of bf16 and "
        "fp32 by a matmul measurement made once per machine (cached; fp32 unless bf16 is at least 1.1x faster)."
    )
    gradient_checkpointing: Literal["auto", "on", "off"] = Field(
        "auto", description="auto: on only when the estimated training memory does not fit the GPU. Costs ~30% speed."
    )
    logging_steps: int = Field(1, ge=1, description="Log the train loss every N steps.")
    save_steps: int = Field(50, ge=1, description="Write a checkpoint every N steps; a re-run resumes from the last.")
    eval_steps: int = Field(0, ge=0, description="Eval loss on the held-out split every N steps; 0 turns it off.")
    early_stopping_patience: int = Field(
        0, ge=0, description="Stop after this many evaluations without eval-loss improvement; 0 turns it off."
    )
    num_processes: int = Field(1, ge=1, description="Training processes; > 1 runs under `accelerate launch`.")
    accelerate_config: str | None = Field(
        None, description="accelerate config for multi-process training, e.g. configs/accelerate/deepspeed_zero2.yaml."
    )

    @property
    def alpha(self) -> int:
        return self.lora_alpha if self.lora_alpha is not None else 2 * self.lora_r

    @model_validator(mode="after")
    def _explain_bad_combinations(self) -> SFTConfig:
        if self.warmup_steps < 1:
            raise ValueError(
                "sft.warmup_steps must be >= 1: starting at the full learning rate sends large, noisy updates "
                "through freshly initialised adapters (and Adam's early variance estimates), which often diverges. "
                "A few steps of warmup are enough."
            )
        if self.early_stopping_patience and not self.eval_steps:
            raise ValueError("sft.early_stopping_patience needs sft.eval_steps > 0: it watches the eval loss.")
        if self.early_stopping_patience and self.save_steps % self.eval_steps:
            raise ValueError(
                f"sft.save_steps ({self.save_steps}) must be a multiple of sft.eval_steps ({self.eval_steps}) with "
                "early stopping: the best checkpoint is reloaded at the end, so evaluated steps must be saved."
            )
        low, high = LR_RANGES[self.method]
        if not low <= self.learning_rate <= high:
            warnings.warn(
                f"sft.learning_rate={self.learning_rate:g} is outside the usual range [{low:g}, {high:g}] for "
                f"method={self.method}: " + ("full fine-tuning moves every weight, so rates above ~1e-4 tend to "
                "destroy what the model knew." if self.method == "full" else "adapters start at zero; far above "
                "this they diverge, far below it they barely move in a short run."),
                stacklevel=2,
            )
        return self


class DPOConfig(_Section):
    enabled: bool = Field(True, description="Run DPO after SFT when the data has preference pairs.")
    beta: float = Field(0.1, gt=0, description="Strength of the pull toward the reference (SFT) model.")
    loss_type: Literal["sigmoid", "ipo", "hinge", "robust", "apo_zero"] = Field(
        "sigmoid", description="TRL DPO loss: sigmoid is the original DPO; ipo is more robust to overfitting."
    )
    learning_rate: float = Field(5e-5, gt=0, description="Peak learning rate for the DPO updates.")
    max_steps: int = Field(10, description="DPO optimizer steps; -1 trains num_epochs.")
    num_epochs: float = Field(1.0, gt=0, description="Epochs over the pairs (ignored when max_steps > 0).")
    batch_size: int = Field(4, ge=1, description="Pairs per device per step.")
    warmup_steps: int = Field(1, ge=1, description="Linear warmup steps.")
    max_length: int = Field(512, ge=16, description="Maximum tokens of prompt + answer.")
    max_pairs: int | None = Field(None, description="Use only the first N pairs (keeps demos short).")
    seed: int = Field(0, description="DPO's seed: the order of the pairs, dropout and adapter init.")


class KeyFactTerms(_Section):
    must_include: list[str] = Field(
        default_factory=list,
        description="Terms every answer of this eval set should state: they count as key facts of every doc, "
        "next to the doc's own facts (metric key_facts). Use it only for terms each reference has, or should have.",
    )
    must_not_include: list[str] = Field(
        default_factory=list,
        description="Terms no answer of this eval set may state unless its reference does (\"我不是 ChatGPT\" may "
        "say ChatGPT): a doc whose answer has one scores no_forbidden = 0.",
    )


class Assertion(_Section):
    name: str = Field(description="Short unique name, shown in the gate and the per-sample log.")
    prompt: str = Field(description="The user message; rendered with the base model's chat template.")
    type: Literal["contains", "not_contains", "icontains", "not_icontains", "regex", "not_regex", "is_json"] = Field(
        description="The check on the answer (promptfoo's names): contains / not_contains (case-sensitive), "
        "icontains / not_icontains (case and Unicode width folded), regex / not_regex (Python re.search), "
        "is_json (the whole answer is a JSON object or array)."
    )
    value: str = Field("", description="The text or pattern to look for; unused by is_json.")
    stratum: str = Field("assertions", description="Group shown in the gate's per-stratum table, e.g. identity/zh.")

    @model_validator(mode="after")
    def _value_given(self) -> Assertion:
        if self.type != "is_json" and not self.value:
            raise ValueError(f"assertion {self.name!r}: type {self.type} needs a value")
        if self.type in ("regex", "not_regex"):
            try:
                re.compile(self.value)
            except re.error as err:
                raise ValueError(f"assertion {self.name!r}: bad regex {self.value!r}: {err}") from err
        return self


class EvalConfig(_Section):
    tasks: list[Literal["domain", "general", "format", "assertions", "production"]] = Field(
        default_factory=lambda: ["domain", "general"],
        description="Local lm-eval tasks from evals/: domain (answers on the held-out split: token F1, key facts, "
        "forbidden terms), general (bits per byte on the general holdout), format (held-out rows whose answer is "
        "a JSON object or array: is the model's answer valid JSON, and the same JSON), assertions (the checks in "
        "eval.assertions, metric pass), production (prompts seen in feedback; retrain-from-feedback adds it).",
    )
    key_facts: dict[str, KeyFactTerms] = Field(
        default_factory=dict,
        description="Key-fact terms per eval set, by lm-eval task name (tunegate_domain), e.g. {tunegate_domain: "
        "{must_include: [Gatekeeper], must_not_include: [OpenAI, ChatGPT]}}. Written into that task's docs; scored "
        "as key_facts (share of the doc's facts and must_include terms in the answer) and no_forbidden.",
    )
    assertions: list[Assertion] = Field(
        default_factory=list,
        description="promptfoo-style checks, each a prompt and a check on the answer, scored as the task "
        "tunegate_assertions (metric pass, 0/1 per check; list 'assertions' in eval.tasks). Gate them like any "
        "task, e.g. {task: tunegate_assertions, metric: pass, min_score: 1.0}.",
    )
    lm_eval_tasks: list[str] = Field(
        default_factory=list,
        description="More lm-eval tasks by name, e.g. arc_easy, or your own from include_paths. Their data must "
        "be loadable offline (HF datasets cache); the run fails before training when it is not.",
    )
    include_paths: list[str] = Field(
        default_factory=list, description="Folders of your own lm-eval task YAMLs that lm_eval_tasks may name."
    )
    limits: dict[str, int] = Field(
        default_factory=dict,
        description="Score only the first N docs of a task, by lm-eval task name, e.g. {arc_easy: 500}. "
        "Every model gets the same N; N is part of the cache key.",
    )
    max_gen_toks: int = Field(48, ge=1, description="Generation budget for the domain and format tasks.")
    batch_size: int = Field(8, ge=1, description="lm-eval batch size, the same for every model.")
    seed: int = Field(1234, description="lm-eval's python, numpy, torch and few-shot seeds, the same for every model.")
    cpu_threads: int | None = Field(
        None,
        ge=1,
        description="torch threads while evaluating on CPU; None: torch's default (one per core). On a machine "
        "shared with other jobs, 1 avoids OpenMP oversubscription (5-10x slower here, docs/benchmarks.md).",
    )
    cache_dir: str | None = Field(
        None,
        description="Where results are cached per (model content, task definition, eval data, eval settings), "
        "as Prefect persisted task results. Default: eval-cache/ next to the sqlite MLflow DB.",
    )
    log_samples: bool = Field(
        True,
        description="Log lm-eval's per-sample results (validated eval rows, model outputs, per-sample scores) "
        "to MLflow with each eval run.",
    )

    @model_validator(mode="after")
    def _assertions_are_run(self) -> EvalConfig:
        if self.assertions and "assertions" not in self.tasks:
            raise ValueError("eval.assertions is set but eval.tasks does not list 'assertions': they would never run")
        if "assertions" in self.tasks and not self.assertions:
            raise ValueError("eval.tasks lists 'assertions' but eval.assertions is empty")
        names = [a.name for a in self.assertions]
        if len(set(names)) != len(names):
            raise ValueError(f"eval.assertions: names must be unique, got {names}")
        return self


class GateRule(_Section):
    task: str = Field(description="lm-eval task name, e.g. tunegate_domain.")
    metric: str = Field(description="Metric of that task, e.g. token_f1.")
    higher_is_better: bool | None = Field(
        None, description="Direction of the metric; None takes what the lm-eval task declares."
    )
    max_drop: float = Field(
        0.0,
        ge=0,
        description="Largest allowed move in the bad direction against the champion (metric units). A larger move "
        "blocks only when the paired test says it is not noise; an improvement is claimed on the same terms.",
    )
    min_score: float | None = Field(None, description="Absolute floor (higher-is-better metrics).")
    max_score: float | None = Field(None, description="Absolute ceiling (lower-is-better metrics).")
    test: Literal["auto", "mcnemar", "bootstrap"] = Field(
        "auto",
        description="Paired test on per-sample scores. auto: McNemar (exact) when every score is 0 or 1, "
        "paired bootstrap otherwise.",
    )
    tier: Literal["critical", "supporting", "advisory"] = Field(
        "critical",
        description="critical: a regression blocks. supporting: a regression asks a person to review (needs_review). "
        "advisory: reported only.",
    )


class GateConfig(_Section):
    rules: list[GateRule] = Field(
        default_factory=lambda: [
            GateRule(task="tunegate_domain", metric="token_f1", max_drop=0.02),
            GateRule(task="tunegate_general", metric="bits_per_byte", higher_is_better=False, max_drop=0.05),
        ],
        description="Per-task promotion rules. A candidate passes only when every rule passes.",
    )
    alpha: float = Field(
        0.05, gt=0, lt=1, description="Significance level: a change is noise unless its two-sided p-value is below."
    )
    n_bootstrap: int = Field(5000, ge=100, description="Paired-bootstrap resamples per rule.")
    seed: int = Field(0, description="Seed of the bootstrap resampling, so a decision can be reproduced.")
    power: float = Field(
        0.8, gt=0, lt=1,
        description="Power at which each rule's minimal detectable effect (MDE) is reported: the smallest drop its "
        "paired test finds with this probability at alpha, given its n and variance.",
    )
    block_uninformative: bool = Field(
        False,
        description="Block when a rule's metric is constant over every sample of both models (it cannot tell the "
        "models apart). Off: such a rule is listed as uninformative in the decision, loudly, but does not block.",
    )
    answer_drift_f1: float = Field(
        0.5, gt=0, le=1,
        description="An eval prompt's answer has drifted when the token F1 between the candidate's and the "
        "baseline's answers is below this (generation tasks).",
    )
    max_answer_drift: float | None = Field(
        None, ge=0, le=1,
        description="Block when the share of drifted answers exceeds this, against a champion (not against the base "
        "model: a first model is meant to answer differently). None: report the drift only.",
    )
    answer_drift_examples: int = Field(5, ge=0, description="The most changed answers listed in the decision.")
    review_ci_width: float | None = Field(
        None, gt=0,
        description="needs_review when a critical or supporting rule that did not regress has a delta interval wider "
        "than this (metric units): the eval cannot tell whether it dropped. None: off.",
    )
    judge_max_no_verdict: float = Field(
        0.2, ge=0, le=1,
        description="needs_review when the pairwise judge gave no verdict on more than this share of pairs.",
    )
    review_timeout_s: int | None = Field(
        None, ge=1,
        description="On needs_review, pause the flow run for a person's decision in the Prefect UI (approve or reject, "
        "with a reason) for at most this long; no decision in time rejects. None: no pause, the run ends needing "
        "review and a person promotes with `tunegate promote VERSION --override --reason ...`.",
    )


def sqlite_db(tracking_uri: str) -> Path | None:
    """The database file of an embedded sqlite store (relative to the working folder, or absolute with ////);
    None for a tracking server shared by a team."""
    return Path(tracking_uri.removeprefix("sqlite:///")) if tracking_uri.startswith("sqlite:///") else None


def embedded(tracking_uri: str) -> bool:
    return sqlite_db(tracking_uri) is not None


# Read once, at import: mlflow.set_tracking_uri() writes this variable too, so a later read would see the last
# store this process connected to instead of the one its user chose.
ENV_TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI")


class TrackingConfig(_Section):
    tracking_uri: str = Field(
        default_factory=lambda: ENV_TRACKING_URI or "sqlite:///mlruns/mlflow.db",
        description="MLflow tracking URI: sqlite:///mlruns/mlflow.db embedded, or a tracking server "
        "(http://...). Default: $MLFLOW_TRACKING_URI when set, as in MLflow itself.")
    artifact_root: str = Field("mlruns/artifacts", description="Artifact folder for new experiments in an embedded "
                               "sqlite store; a tracking server decides its own (mlflow server --artifacts-destination).")
    experiment: str = Field("tunegate", description="MLflow experiment name.")
    registered_model: str = Field("tunegate-model", description="Registered model name in the MLflow registry.")
    ui_url: str | None = Field(None, description="Where people open the MLflow UI; the gate report and the review "
                               "form link into it. Default: the tracking server itself, or http://127.0.0.1:5000 "
                               "(where `tunegate ui` starts it) for the embedded sqlite store.")

    def ui(self) -> str:
        """The MLflow UI's base URL for links."""
        if self.ui_url:
            return self.ui_url.rstrip("/")
        return "http://127.0.0.1:5000" if embedded(self.tracking_uri) else self.tracking_uri.rstrip("/")


class JudgeConfig(_Section):
    """A pairwise LLM judge over any OpenAI-compatible endpoint (tasks/judge.py); off when the section is absent."""

    base_url: str = Field(description="The endpoint's base URL, e.g. http://127.0.0.1:8000/v1 or a hosted API.")
    model: str = Field(description="The judge model's name at that endpoint.")
    api_key_env: str | None = Field(None, description="Environment variable holding the API key; never the key.")
    rubric: str = Field(
        "You compare two answers by an AI assistant to the same question. Judge correctness first, then "
        "helpfulness and clarity. Ignore length and the order in which the answers are shown.",
        description="What the judge is told to judge by; part of the cache key.")
    max_concurrency: int = Field(4, ge=1, le=64, description="Requests to the judge at once.")
    timeout_s: float = Field(60, gt=0, description="Per request; a reply later than this counts as no verdict.")
    max_tokens: int = Field(128, ge=16, description="Room for the judge's JSON reply.")
    structured_output: bool = Field(True, description="Send the verdict's JSON schema as response_format, so a server "
                                    "with structured outputs (vLLM, OpenAI, tunegate serve-model) decodes under it; "
                                    "an endpoint that refuses it (HTTP 400) is asked without it from then on.")


class CanaryConfig(_Section):
    """A passed candidate serves a share of traffic on alias `candidate` before it may become the champion."""

    share: float = Field(gt=0, lt=1, description="Share of users whose requests the candidate answers (sticky per "
                         "user: a hash of the request's `user`, else of its first user message).")
    min_ratings: int = Field(30, ge=1, description="Rater votes each arm needs before the live guard decides; "
                             "fewer is 'not yet'.")
    max_hours: float = Field(48, gt=0, description="Hours on the candidate alias without enough votes, after which "
                             "the guard discards the candidate.")


class GuardConfig(_Section):
    """The live guard (flows/guard.py): the champion's downvote rate on served traffic against its predecessor's."""

    min_ratings: int = Field(30, ge=1, description="Rater votes each side needs (one per rater and request); "
                             "fewer is 'not yet', never a rollback.")
    max_increase: float = Field(0.05, ge=0, lt=1, description="Allowed absolute increase of the downvote rate; a "
                                "larger one that is also significant rolls back (or discards a canary).")
    alpha: float = Field(0.05, gt=0, lt=0.5, description="Significance level of the one-sided Fisher exact test "
                         "'the new version is downvoted more'.")
    lookback_days: float = Field(7, gt=0, description="How far before the champion's promotion the previous "
                                 "version's traffic is read.")
    top_traces: int = Field(5, ge=0, le=50, description="Trace ids with the most downvotes named in the record.")
    max_votes_per_rater: int | None = Field(
        None, ge=1, description="Count at most this many votes of one rater per version (their latest requests), so a "
        "few accounts rating many answers cannot decide alone. None: no cap.")


class ServeConfig(_Section):
    """How `tunegate serve-model` records the requests it answers (serve/tracing.py)."""

    tracing: bool = Field(True, description="Record every request as an MLflow trace (experiment "
                          "<tracking.experiment>-serving); users' feedback attaches to these traces.")
    redact_pii: bool = Field(True, description="Replace personal data and secrets in traced messages, answers and "
                             "corrections with placeholders (<EMAIL>, ...), using the data checks' PII detector.")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="What serve-model decodes in. auto: the faster of bf16 and fp32 by the same matmul "
        "measurement sft.precision uses (once per machine, cached; fp32 unless bf16 is at least 1.1x faster).")
    max_batch_size: int = Field(8, ge=1, le=64, description="Requests decoded together, at most: in transformers' "
                                "continuous batching (serve/continuous.py) or one left-padded batch "
                                "(serve/batching.py); 1 decodes them one at a time.")
    continuous_batching: bool = Field(True, description="Greedy requests without response_format go to "
                                      "transformers' ContinuousBatchingManager (requests join a running batch); "
                                      "sampled and structured ones, and all of them when false, to padded batches.")
    kv_cache_tokens: int = Field(8192, ge=256, description="Continuous batching's paged KV cache, in tokens, per "
                                 "served version (SmolLM2-135M: about 46 KB a token in fp32); a request whose "
                                 "prompt plus max_tokens exceeds it takes the padded path.")
    batch_wait_ms: float = Field(50, ge=0, le=2000, description="How long a batch waits, at most, for as many "
                                 "requests as the last batch had before it starts; a lone request never waits.")
    engine: Literal["inprocess", "openai"] = Field(
        "inprocess", description="Who decodes. inprocess: serve-model itself (transformers, batched). openai: an "
        "OpenAI-compatible engine at serve.engine_url (vLLM, SGLang, TGI, transformers serve); serve-model stays "
        "the gateway that validates, traces, takes feedback and follows the alias (serve/engine.py).")
    engine_url: str | None = Field(None, description="The engine's OpenAI-compatible base URL, e.g. "
                                   "http://127.0.0.1:8001/v1 (serve.engine: openai).")
    engine_api_key_env: str | None = Field(None, description="Environment variable holding the engine's API key.")
    engine_load: Literal["lora", "path", "command"] = Field(
        "path", description="How a new champion gets onto the engine. lora: vLLM's runtime LoRA loading "
        "(adapters); path: the engine loads the merged weights by their path on request (transformers serve); "
        "command: serve.engine_reload is run (e.g. restart vLLM on the merged weights).")
    engine_dir: str = Field("outputs/engine", description="Where a version's files are put for the engine to read: "
                            "a folder the engine shares.")
    engine_model: str = Field("{name}-v{version}", description="The model name requests use on the engine in lora "
                              "and command modes ({name}, {version} filled in); path mode uses the folder's path.")
    engine_reload: list[str] = Field(
        default_factory=list, description="command mode: the argv that puts a version on the engine; {merged}, "
        "{adapter}, {name}, {version} and {model} are filled in. It may return before the engine is up: the probe "
        "waits for it.")
    engine_timeout_s: float = Field(600, gt=0, description="How long loading and probing a version on the engine "
                                    "may take before the old one keeps serving.")
    canary: CanaryConfig | None = Field(None, description="None: a passed candidate becomes the champion at once. "
                                        "Set: it goes on alias `candidate` and answers serve.canary.share of users "
                                        "until the live guard promotes or discards it.")

    @model_validator(mode="after")
    def _engine_settings(self) -> ServeConfig:
        if self.engine == "openai" and not self.engine_url:
            raise ValueError("serve.engine=openai needs serve.engine_url, the engine's base URL (.../v1)")
        if self.engine == "openai" and self.engine_load == "command" and not self.engine_reload:
            raise ValueError("serve.engine_load=command needs serve.engine_reload, the command that loads a version")
        if self.canary is not None and self.engine == "openai" and self.engine_load == "command":
            # Command mode restarts the one engine on a version: the candidate would replace the champion there.
            raise ValueError("serve.canary needs both versions on the engine at once: serve.engine_load lora or "
                             "path, not command")
        return self


# Read once, at import, like MLFLOW_TRACKING_URI above: the database of a team's sweeps (make team-up prints it).
ENV_SWEEP_STORAGE = os.environ.get("TUNEGATE_SWEEP_STORAGE")


class FloatRange(_Section):
    """A float a sweep searches between low and high: uniformly, or uniformly in its logarithm."""

    low: float = Field(description="Smallest value a trial may get.")
    high: float = Field(description="Largest value a trial may get.")
    log: bool = Field(False, description="Sample uniformly in log space (learning rates, beta); needs low > 0.")

    @model_validator(mode="after")
    def _is_a_range(self) -> FloatRange:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low:g}) must be below high ({self.high:g}); to fix a value, set it in its "
                             "config section and leave it out of sweep.space")
        if self.log and self.low <= 0:
            raise ValueError(f"log needs low > 0, got low={self.low:g}")
        return self


class IntRange(_Section):
    """An integer a sweep searches from low to high, both included."""

    low: int = Field(description="Smallest value a trial may get.")
    high: int = Field(description="Largest value a trial may get.")
    step: int = Field(1, ge=1, description="Spacing of the values tried.")

    @model_validator(mode="after")
    def _is_a_range(self) -> IntRange:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high}); to fix a value, set it in its "
                             "config section and leave it out of sweep.space")
        if (self.high - self.low) % self.step:
            raise ValueError(f"high - low ({self.high - self.low}) must be a multiple of step ({self.step})")
        return self


class SweepSpace(_Section):
    """What a sweep searches. Each field sets one config value per trial; a field left out keeps the config's value."""

    TARGETS: ClassVar[dict[str, str]] = {
        "learning_rate": "sft.learning_rate", "lora_r": "sft.lora_r", "lora_alpha_ratio": "sft.lora_alpha",
        "lora_dropout": "sft.lora_dropout", "num_epochs": "sft.num_epochs", "warmup_steps": "sft.warmup_steps",
        "dpo_beta": "dpo.beta", "dpo_learning_rate": "dpo.learning_rate"}
    learning_rate: FloatRange | None = Field(
        None, description="sft.learning_rate, e.g. {low: 1.0e-4, high: 3.0e-3, log: true}.")
    lora_r: list[int] | None = Field(None, description="sft.lora_r, one of these ranks, e.g. [4, 8, 16, 32].")
    lora_alpha_ratio: list[float] | None = Field(
        None, description="sft.lora_alpha as a multiple of the trial's rank (alpha = ratio x r, rounded), one of "
        "these, e.g. [1, 2, 4].")
    lora_dropout: FloatRange | None = Field(None, description="sft.lora_dropout, within [0, 1).")
    num_epochs: FloatRange | None = Field(None, description="sft.num_epochs; needs sft.max_steps -1 (steps win).")
    warmup_steps: IntRange | None = Field(None, description="sft.warmup_steps, from 1 up.")
    dpo_beta: FloatRange | None = Field(
        None, description="dpo.beta, e.g. {low: 0.02, high: 0.5, log: true}. With a dpo field, trials run DPO after "
        "SFT and the objective is measured on the DPO weights; without one, trials train SFT only.")
    dpo_learning_rate: FloatRange | None = Field(None, description="dpo.learning_rate; trials then run DPO too.")

    def searched(self) -> dict:
        """The fields this space searches, by name: a FloatRange, an IntRange or a list of choices each."""
        return {name: value for name, value in self if value is not None}

    @model_validator(mode="after")
    def _each_field_in_its_domain(self) -> SweepSpace:
        for name in ("learning_rate", "num_epochs", "dpo_beta", "dpo_learning_rate"):
            value = getattr(self, name)
            if value is not None and value.low <= 0:
                raise ValueError(f"sweep.space.{name}: low must be > 0, got {value.low:g}")
        if self.lora_dropout is not None and not (0 <= self.lora_dropout.low and self.lora_dropout.high < 1):
            raise ValueError("sweep.space.lora_dropout: must lie within [0, 1)")
        if self.warmup_steps is not None and self.warmup_steps.low < 1:
            raise ValueError("sweep.space.warmup_steps: low must be >= 1 (sft.warmup_steps 0 diverges; see "
                             "sft.warmup_steps)")
        for name, choices in (("lora_r", self.lora_r), ("lora_alpha_ratio", self.lora_alpha_ratio)):
            if choices is None:
                continue
            if not choices or len(set(choices)) != len(choices):
                raise ValueError(f"sweep.space.{name}: give one or more distinct choices, got {choices}")
            if min(choices) <= 0:
                raise ValueError(f"sweep.space.{name}: every choice must be > 0, got {choices}")
        return self


class SweepConfig(_Section):
    """Hyperparameter search (`tunegate sweep`, flows/sweep.py): Optuna trials; the best one is gated like any run."""

    trials: int = Field(8, ge=1, description="Trials the study runs to an end (completed, pruned or failed); a "
                        "resumed study counts the ones it already has.")
    parallel: int = Field(
        2, ge=1, description="Trials at once when the sweep runs from a deployment and sweep.storage is a database "
        "server: each trial is then a flow run of the sweep-trial deployment, taken by any free worker of the pool. "
        "Otherwise trials run one after another in the sweep's own process.")
    objective: str = Field(
        "eval_loss", description="What the search optimizes: eval_loss (the trial's loss on the held-out domain "
        "split, minimized), or a metric of the eval suite as <task>/<metric>, e.g. tunegate_domain/token_f1 (its "
        "direction taken from the task). Only the search uses it: the best trial still goes through the gate.")
    space: SweepSpace = Field(
        default_factory=lambda: SweepSpace(learning_rate=FloatRange(low=1e-4, high=3e-3, log=True),
                                           warmup_steps=IntRange(low=1, high=8)),
        description="The values to search and their ranges; see each field.")
    first_trials: list[dict[str, float]] = Field(
        default_factory=list, description="Parameter sets tried first, before the sampler chooses (Optuna "
        "enqueue_trial), e.g. [{learning_rate: 1.0e-3, warmup_steps: 3}] for the config's own values; names from "
        "sweep.space, the ones left out sampled.")
    eval_steps: int = Field(
        4, ge=1, description="During a trial, the eval loss on the held-out split every N optimizer steps, reported "
        "to the pruner (sft.eval_steps instead when that is set).")
    prune: bool = Field(True, description="Stop a trial whose eval loss at a step is worse than the median of the "
                        "finished trials at that step (Optuna's MedianPruner); it ends as pruned.")
    pruner_startup_trials: int = Field(2, ge=0, description="Trials that must finish before the pruner prunes any.")
    sampler_startup_trials: int = Field(
        4, ge=1, description="Random trials before the TPE sampler models the results (Optuna's default of 10 would "
        "leave a short CPU sweep random throughout).")
    seed: int = Field(0, description="The sampler's seed; a resumed study goes on with seed + its trial count.")
    trial_threads: int | None = Field(
        None, ge=1, description="torch CPU threads per trial; None: torch's default. For trials side by side on one "
        "machine: its cores / sweep.parallel.")
    study: str | None = Field(None, description="Optuna study name; the name of an existing study resumes it (its "
                              "finished trials are kept, not repeated). Default: the run name.")
    storage: str | None = Field(
        default_factory=lambda: ENV_SWEEP_STORAGE,
        description="Where the study lives, an SQLAlchemy URL. Default: $TUNEGATE_SWEEP_STORAGE, else optuna.db next "
        "to the sqlite MLflow DB. With a tracking server, the team's database (make team-up: postgresql://.../optuna). "
        "Keep credentials in ~/.pgpass or PG* variables: this URL shows in the form and on the MLflow run.")

    @model_validator(mode="after")
    def _space_and_first_trials(self) -> SweepConfig:
        searched = self.space.searched()
        if not searched:
            raise ValueError("sweep.space is empty: name at least one value to search, e.g. "
                             "{learning_rate: {low: 1.0e-4, high: 3.0e-3, log: true}}")
        for i, values in enumerate(self.first_trials):
            for name, value in values.items():
                domain = searched.get(name)
                if domain is None:
                    raise ValueError(f"sweep.first_trials[{i}]: {name} is not searched; sweep.space has {sorted(searched)}")
                inside = value in domain if isinstance(domain, list) else domain.low <= value <= domain.high
                if not inside:
                    raise ValueError(f"sweep.first_trials[{i}]: {name}={value:g} is outside sweep.space.{name}")
        return self


class RewardConfig(_Section):
    """The reward model learned from the preference store (tasks/reward.py); off when the section is absent."""

    base_model: str | None = Field(
        None, description="Base model of the reward model (a scalar head is put on it); None: the pipeline's "
        "base_model. It must load with AutoModelForSequenceClassification.")
    method: Literal["lora", "full"] = Field("lora", description="lora: adapters plus the scalar head train; full: "
                                            "every weight.")
    lora_r: int = Field(8, ge=1, description="LoRA rank.")
    target_modules: list[str] | Literal["all-linear"] = Field("all-linear", description="Modules that get adapters.")
    learning_rate: float = Field(5e-4, gt=0, description="Peak learning rate (linear decay after warmup).")
    max_steps: int = Field(8, ge=1, description="Optimizer steps of TRL's RewardTrainer.")
    batch_size: int = Field(4, ge=1, description="Pairs per step.")
    max_length: int = Field(256, ge=16, description="Tokens of prompt + answer; longer pairs are left out.")
    max_pairs: int | None = Field(None, description="Train on the first N pairs of the store (keeps demos short).")
    holdout_fraction: float = Field(0.25, gt=0, lt=1, description="Share of the store's prompts held out: every pair "
                                    "of a held-out prompt is scored, none trains (split by prompt).")
    min_holdout_pairs: int = Field(4, ge=1, description="Fewer held-out pairs than this: the store is too small to "
                                   "tell whether the model learned anything, and the stage refuses before training.")
    min_accuracy: float = Field(0.7, ge=0, le=1, description="The reward model may gate, train RL and judge raters "
                                "only when its held-out pairwise accuracy is at least this; below it the gate's "
                                "reward rule is uninformative and says why.")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: the faster of bf16 and fp32 on "
                                                       "this CPU by measurement (as sft); bf16 on GPUs.")
    score_batch_size: int = Field(16, ge=1, description="Answers scored per forward pass.")
    seed: int = Field(0, description="Seed of the head's initialization, the split and the pair order.")


class RLConfig(_Section):
    """RL against the reward model after DPO (tasks/rl.py): TRL's GRPOTrainer or RLOOTrainer; off without it."""

    method: Literal["grpo", "rloo"] = Field("grpo", description="grpo: group-normalised advantages; rloo: "
                                            "leave-one-out baseline (REINFORCE).")
    max_steps: int = Field(4, ge=1, description="Optimizer steps.")
    learning_rate: float = Field(5e-5, gt=0, description="Peak learning rate of the policy's adapter.")
    beta: float = Field(0.04, ge=0, description="KL penalty against the reference (the DPO/SFT weights).")
    num_generations: int = Field(4, ge=2, description="Answers sampled per prompt; advantages compare them.")
    prompts_per_step: int = Field(2, ge=1, description="Prompts per optimizer step.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling.")
    max_completion_length: int = Field(32, ge=1, description="Tokens per sampled answer.")
    max_prompts: int = Field(64, ge=1, description="Train-split prompts RL samples from.")
    reward_model_weight: float = Field(1.0, ge=0, description="Weight of the registered reward model's score.")
    key_facts_weight: float = Field(1.0, ge=0, description="Weight of the key-fact check (share of the reference "
                                    "answer's key facts the sample states; evals/tunegate_metrics.py).")
    no_forbidden_weight: float = Field(1.0, ge=0, description="Weight of the forbidden-term check (1 when the "
                                       "sample says none of must_not_include).")
    must_not_include: list[str] = Field(default_factory=list, description="Terms a sampled answer must not say, "
                                        "e.g. [ChatGPT, OpenAI] (as eval.key_facts).")
    seed: int = Field(0, description="Sampling and prompt-order seed.")


class ModelRef(_Section):
    """The base model as the data stages need it: which one, and the token budget of a row."""

    base_model: str
    trust_remote_code: bool = False
    max_length: int | None = None


class RunPaths(_Section):
    """The folders of one pipeline run: <output_dir>/<run_name>/<stage>; checkpoints are shared by runs."""

    STAGES: ClassVar[tuple[str, ...]] = ("data", "eval", "sft", "dpo", "rl", "baseline", "export")
    run: str
    data: str
    eval: str
    sft: str
    dpo: str
    rl: str
    baseline: str
    export: str
    checkpoints: str


class PipelineParams(_Section):
    """Everything one fine-tuning run needs."""

    name: str = Field("tunegate", description="Run name prefix, shown in Prefect and MLflow.")
    run_name: str | None = Field(None, description="Name of this run's folder and MLflow run; default: name + time.")
    base_model: str = Field(
        "bundled:smollm2-135m-instruct",
        description="bundled:smollm2-135m-instruct (offline default), tiny (test model), a hub id or a local path.",
    )
    trust_remote_code: bool = Field(False, description="Allow model code from the hub. Off unless you need it.")
    output_dir: str = Field("outputs", description="Where run folders (data, adapters, eval files) are written.")
    data: DataConfig
    sft: SFTConfig = Field(default_factory=SFTConfig)
    dpo: DPOConfig = Field(default_factory=DPOConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    guard: GuardConfig = Field(default_factory=GuardConfig, description="The live guard's test on served ratings "
                               "(flows/guard.py, `tunegate guard`).")
    judge: JudgeConfig | None = Field(None, description="Pairwise LLM judge of candidate vs champion answers; "
                                      "gate on it with a rule {task: judge, metric: win_rate, ...}.")
    feedback: FeedbackConfig = Field(
        default_factory=lambda: FeedbackConfig(),
        description="Where production feedback comes from and how far it was trained on (retrain-from-feedback, "
        "`tunegate retrain`, `tunegate feedback status`).")
    sweep: SweepConfig = Field(default_factory=SweepConfig, description="Hyperparameter search over this config "
                               "(`tunegate sweep`, the sweep deployment); `tunegate run` does not read it.")
    reward: RewardConfig | None = Field(None, description="A reward model trained on the preference store, scored "
                                        "on candidate vs champion answers; gate on it with a rule {task: reward, "
                                        "metric: win_rate, ...}.")
    rl: RLConfig | None = Field(None, description="RL (GRPO or RLOO) against the reward model after DPO; needs a "
                                "reward section.")

    @property
    def model(self) -> ModelRef:
        return ModelRef(base_model=self.base_model, trust_remote_code=self.trust_remote_code,
                        max_length=self.sft.max_length)

    def named(self, deployment_name: str | None = None) -> PipelineParams:
        """These params with run_name fixed: given, else <deployment>-<name>-<time> or <name>-<time>."""
        if self.run_name:
            return self
        prefix = f"{deployment_name}-{self.name}" if deployment_name else self.name
        return self.model_copy(update={"run_name": f"{prefix}-{datetime.now():%Y%m%d-%H%M%S}"})

    def paths(self) -> RunPaths:
        """Where this (named) run writes."""
        if not self.run_name:
            raise ValueError("paths() needs a run_name: call named() first")
        root = Path(self.output_dir).resolve()
        run = root / self.run_name
        return RunPaths(run=str(run), **{stage: str(run / stage) for stage in RunPaths.STAGES},
                        checkpoints=str(root / "checkpoints"))

    @model_validator(mode="after")
    def _gate_rules_name_eval_tasks(self) -> PipelineParams:
        known = {f"tunegate_{t}" for t in self.eval.tasks} | set(self.eval.lm_eval_tasks) | (
            {"judge"} if self.judge is not None else set()) | ({"reward"} if self.reward is not None else set())
        unknown = [r.task for r in self.gate.rules if r.task not in known]
        if unknown:
            raise ValueError(f"gate.rules name tasks that eval.tasks does not run: {unknown}; known: {sorted(known)}")
        return self

    @model_validator(mode="after")
    def _sweep_fits_the_pipeline(self) -> PipelineParams:
        sweep, searched = self.sweep, self.sweep.space.searched()
        if sweep.objective != "eval_loss":
            task_name, sep, metric = sweep.objective.partition("/")
            known = {f"tunegate_{t}" for t in self.eval.tasks} | set(self.eval.lm_eval_tasks)
            if not (sep and metric) or task_name not in known:
                raise ValueError(f"sweep.objective {sweep.objective!r}: use eval_loss or <task>/<metric> of a task "
                                 f"eval.tasks runs, one of {sorted(known)} (the judge compares a candidate with the "
                                 "champion and does not score trials)")
        lora = sorted({"lora_r", "lora_alpha_ratio", "lora_dropout"} & set(searched))
        if lora and self.sft.method == "full":
            raise ValueError(f"sweep.space searches {lora}, but sft.method is full: there are no adapters")
        if "num_epochs" in searched and self.sft.max_steps > 0:
            raise ValueError("sweep.space searches num_epochs, but sft.max_steps is set and overrides epochs: set "
                             "sft.max_steps=-1 or leave num_epochs out of the space")
        dpo = sorted({"dpo_beta", "dpo_learning_rate"} & set(searched))
        pairs = self.data.preference_files or self.data.feedback_preference_files
        if dpo and not (self.dpo.enabled and pairs):
            raise ValueError(f"sweep.space searches {dpo}, but DPO does not run (" + (
                "dpo.enabled is false)" if not self.dpo.enabled else "the data has no preference_files)"))
        return self

    @model_validator(mode="after")
    def _rl_needs_a_reward_model(self) -> PipelineParams:
        if self.rl is not None and self.reward is None:
            raise ValueError("rl: RL trains against a reward model, and this config has no `reward:` section to "
                             "train one; add `reward: {}` (the defaults train it on the preference store) or drop rl")
        return self


class FeedbackConfig(_Section):
    """Where production feedback is read from and how far it has been trained on (flows/retrain_from_feedback.py)."""

    logs: str | None = Field(
        None, description="Glob of feedback JSONL logs (format: README), for frontends that log exchanges themselves. "
        "None: feedback comes from the served traces only (data/feedback/ holds example logs; name them to use them).")
    watermark_file: str = Field(
        "outputs/feedback/watermark.json",
        description="Newest feedback timestamp already trained on; advanced only after a run reaches its gate decision.",
    )
    work_dir: str = Field("outputs/feedback", description="Where each window's SFT and preference files are written.")
    min_records: int = Field(1, ge=1, description="Skip the run when the window has fewer feedback records.")
    traces: bool = Field(
        True, description="Also read users' ratings and corrections on the served champion's MLflow traces "
        "(experiment <tracking.experiment>-serving), next to the JSONL logs.")
    trace_lookback_days: float = Field(
        30, gt=0, description="How old a served trace may be and still have new feedback read from it.")
    approved_window: str | None = Field(
        None,
        description="The label of a window that stopped for review (the watermark's `pending`): approve it, and "
        "its rows that conflict with curated data train. Needs review_note.",
    )
    rejected_window: str | None = Field(
        None,
        description="The label of a window that stopped for review: reject it, and its lines are marked read "
        "without training. Needs review_note.",
    )
    production_rules: list[GateRule] = Field(
        default_factory=lambda: [
            GateRule(task="tunegate_production", metric="key_facts", max_drop=0.05),
            GateRule(task="tunegate_production", metric="no_forbidden", max_drop=0.0),
        ],
        description="Gate rules on the production regression set, added to gate.rules when the set has prompts.",
    )
    max_answer_drift: float | None = Field(
        None, ge=0, le=1,
        description="For feedback retrains: block when more than this share of eval answers differs materially from "
        "the champion's (sets gate.max_answer_drift for the run). None: report the drift only.",
    )
    review_note: str | None = Field(
        None, description="'<reviewer>: <reason>' for approved_window or rejected_window; recorded in the watermark "
        "and, on approval, on the MLflow run (data.checks.conflicts_approved).",
    )

    @model_validator(mode="after")
    def _review_needs_a_note(self) -> FeedbackConfig:
        if (self.approved_window or self.rejected_window) and not (self.review_note or "").strip():
            raise ValueError("feedback.approved_window / rejected_window need feedback.review_note: "
                             "'<reviewer>: <reason>' is recorded with the decision")
        if self.approved_window and self.approved_window == self.rejected_window:
            raise ValueError("feedback: a window is either approved or rejected, not both")
        return self


PipelineParams.model_rebuild()  # its `feedback` field names FeedbackConfig, defined after it


class QuantizeConfig(_Section):
    """`tunegate quantize VERSION`: a quantized variant of a registered version, gated against the champion
    like any candidate (tasks/quantize.py, flows/quantize.py)."""

    method: Literal["int8", "int8-dynamic", "gguf"] = Field(
        "int8",
        description="int8: weight-only int8 (torchao Int8WeightOnlyConfig, per-row scales; activations stay fp32). "
        "int8-dynamic: int8 weights and per-token int8 activations (torchao Int8DynamicActivationInt8WeightConfig; "
        "int8 matmuls). gguf: refused; llama.cpp's converter is not an installable PyPI package (tasks/quantize.py).",
    )


def _set_dotted(tree: dict, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ValueError(f"--set {dotted}: '{key}' is not a section")
    node[leaf] = value


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> PipelineParams:
    """Read a YAML config, apply `key=value` overrides (values parsed as YAML), validate."""
    path = Path(path)
    tree = yaml.safe_load(path.read_text()) or {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects key=value, got '{item}'")
        _set_dotted(tree, key.strip(), yaml.safe_load(raw))
    try:
        return PipelineParams.model_validate(tree)
    except ValidationError as err:
        raise ValueError(f"{path}: invalid config\n{err}") from None


def overrides_from_argv(argv: list[str]) -> tuple[str, list[str]]:
    """A module's command line `CONFIG [--set key=value ...]` -> (config path, overrides), for load_config."""
    parser = argparse.ArgumentParser(description="Load a tunegate config with overrides.")
    parser.add_argument("config", help="YAML config, e.g. configs/demo.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, parsed as YAML (repeatable)")
    args = parser.parse_args(argv)
    return args.config, args.set


if __name__ == "__main__":
    print(yaml.safe_dump(load_config(*overrides_from_argv(sys.argv[1:])).model_dump(), sort_keys=False))
