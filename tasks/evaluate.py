"""Stage 6, evaluate: lm-evaluation-harness on the eval suite, one cached Prefect task run per (model, task).

    python -m tasks.evaluate MODEL_DIR RUN_DIR [ADAPTER_DIR]   # RUN_DIR holds prepare's files; no cache

`build_eval_suite` runs right after prepare, before training. It fills the local task templates in
evals/ with this run's data (domain, general, and format when configured; the `eval.key_facts` terms
written into the domain docs; the `eval.assertions` checks as docs of tunegate_assertions), resolves the lm-eval
tasks named in the config, loads every task's data (so a task whose data cannot be reached fails
the run before any training) and hashes each task's definition and data.

`evaluate_suite` scores one model (candidate, champion or base) on that suite. Every model gets the
same tasks, seeds, batch size and lm-eval version: the suite's `footing`, which the gate checks.
A model reference is `{label, adapter, model, version}`: the base model (both None), an adapter on
the base (LoRA/DoRA/QLoRA), or a whole model (`sft.method: full`). Adapters load unmerged through
lm-eval's `peft=` argument, so the weights on disk are what is scored.

Caching is Prefect's task cache with persisted results. The key of `evaluate_task` is
(model content hash, task definition hash, eval data hash, doc limit, footing); labels and paths are
left out, so an unchanged champion is never re-evaluated, whatever it is called or wherever it was
downloaded to. Results are JSON files under `eval.cache_dir` (default: `eval-cache/` next to the
sqlite MLflow DB), next to lm-eval's per-sample logs. An evaluation that does run is also an MLflow
run in the `<experiment>-evals` experiment, with those per-sample logs as artifacts; its run id
travels with the cached result into the model version's lineage.
"""

from __future__ import annotations

import functools
import importlib.util
import hashlib
import json
import os
import shutil
import sys
import time
from importlib.metadata import version as package_version
from pathlib import Path

from prefect import task
from prefect.cache_policies import CacheKeyFnPolicy
from pydantic import BaseModel, ConfigDict

from tasks.dpo import Aligned
from tasks.prepare import Prepared
from tunegate.caching import file_sha256
from tunegate.config import (Assertion, EvalConfig, GateConfig, GateRule, KeyFactTerms, TrackingConfig, embedded,
                             sqlite_db)
from tunegate.models import cache_dir as tunegate_cache_dir
from tunegate.registry import CHAMPION, connect, download_version, eval_experiment, get_alias

EVALS_DIR = Path(__file__).resolve().parent.parent / "evals"
# Files at least this large (base model weights) have their sha256 remembered by (path, size, mtime).
MEMO_MIN_BYTES = 32 * 2**20
# What a cached task result holds; a new format misses every older entry instead of reading a result without
# the fields the gate now uses (2: per-sample answers, prompts and strata).
RESULT_FORMAT = "2"


class EvalSuiteError(ValueError):
    """The configured eval suite cannot run here; raised before training starts."""


def sha256_parts(*parts: str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()


# --- the suite ---------------------------------------------------------------------------------


def load_metrics_module():
    """evals/tunegate_metrics.py, loaded by path as lm-eval loads it (it is not a package module)."""
    spec = importlib.util.spec_from_file_location("tunegate_metrics", EVALS_DIR / "tunegate_metrics.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def answered_by_both(candidate_tasks: dict, baseline_tasks: dict):
    """(task, candidate result, baseline result) for each generation task both models answered on the same docs;
    other tasks, and results cached before answers were kept, are left out."""
    for name, cand in candidate_tasks.items():
        base = baseline_tasks.get(name)
        if base is not None and "answers" in cand and "answers" in base and cand["doc_ids"] == base["doc_ids"]:
            yield name, cand, base


def is_json_container(text: str) -> bool:
    """True when text, as a whole, is a JSON object or array (as evals/tunegate_metrics.py scores it)."""
    try:
        return isinstance(json.loads(text), (dict, list))
    except ValueError:
        return False


def write_format_eval(domain_eval: Path, out: Path) -> int:
    """Keep the held-out domain rows whose reference answer is JSON; return how many."""
    rows = [json.loads(line) for line in domain_eval.read_text().splitlines() if line.strip()]
    keep = [row for row in rows if is_json_container(row["reference"])]
    if not keep:
        raise EvalSuiteError(
            f"eval.tasks lists 'format', but none of the {len(rows)} held-out domain rows has a JSON object or "
            "array as its answer. Drop 'format' from eval.tasks, or add data whose answers are JSON."
        )
    out.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in keep))
    return len(keep)


def with_key_fact_terms(source: Path, out: Path, terms: KeyFactTerms) -> None:
    """Copy eval docs, writing the eval set's must_include / must_not_include terms into each one.

    The metric file is loaded by lm-eval on its own, so what it needs from the config travels in the docs
    (and so into the data hash: changing the terms re-evaluates).
    """
    rows = [json.loads(line) for line in source.read_text().splitlines() if line.strip()]
    extra = {"must_include": terms.must_include, "must_not_include": terms.must_not_include}
    out.write_text("".join(json.dumps({**row, **extra}, ensure_ascii=False) + "\n" for row in rows))


def write_assertion_docs(assertions: list[Assertion], base_model_path: str, out: Path,
                         trust_remote_code: bool = False) -> None:
    """One doc per configured check: its user message rendered with the base model's chat template."""
    from tunegate.models import load_chat_tokenizer

    tokenizer = load_chat_tokenizer(base_model_path, trust_remote_code)
    rows = [
        {
            "name": a.name,
            "user_prompt": a.prompt,
            "prompt": tokenizer.apply_chat_template([{"role": "user", "content": a.prompt}], tokenize=False,
                                                    add_generation_prompt=True),
            "type": a.type,
            "value": a.value,
            "stratum": a.stratum,
        }
        for a in assertions
    ]
    out.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


# Where an eval task's docs come from, for the error when there are none (format raises its own, earlier).
EMPTY_TASK_SOURCE = {
    "domain": "no clean domain row was held out (data.eval_fraction, data.min_eval_per_stratum)",
    "general": "data.general_holdout_file has no readable Alpaca rows",
    "production": "data.production_eval_file has no rows",
}


def count_docs(path: Path) -> int:
    with path.open() as f:
        return sum(1 for line in f if line.strip())


def materialize_tasks(prepared: dict, max_gen_toks: int, task_names: list[str], out_dir: Path,
                      key_facts: dict[str, KeyFactTerms] | None = None, assertions: list[Assertion] | None = None,
                      trust_remote_code: bool = False) -> Path:
    """Copy the task templates with absolute data paths filled in, and their docs with the config's terms."""
    out_dir.mkdir(parents=True, exist_ok=True)
    data_files = {"domain": prepared["domain_eval"], "general": prepared["general_eval"]}
    if "production" in task_names:
        if not prepared.get("production_eval"):
            raise EvalSuiteError("eval.tasks lists 'production' but data.production_eval_file is not set (the "
                                 "retrain-from-feedback flow sets it once the production regression set has prompts)")
        data_files["production"] = prepared["production_eval"]
    if "format" in task_names:
        data_files["format"] = str(out_dir / "format_eval.jsonl")
        write_format_eval(Path(prepared["domain_eval"]), Path(data_files["format"]))
    if "assertions" in task_names:
        data_files["assertions"] = str(out_dir / "assertions.jsonl")
        write_assertion_docs(assertions or [], prepared["base_model_path"], Path(data_files["assertions"]),
                             trust_remote_code)
    for name in task_names:
        if name in data_files and not count_docs(Path(data_files[name])):
            source = EMPTY_TASK_SOURCE.get(name, "its data file is empty")
            raise EvalSuiteError(f"eval task tunegate_{name} has no docs to score: {source}")
    key_facts = key_facts or {}
    scored = {f"tunegate_{t}" for t in ("domain", "production") if t in task_names}
    unknown = sorted(set(key_facts) - scored)
    if unknown:
        raise EvalSuiteError(f"eval.key_facts names {unknown}: key facts are scored on tunegate_domain and "
                             "tunegate_production "
                             f"(evals/tunegate_metrics.py: domain_results); eval.tasks is {task_names}")
    for name, terms in key_facts.items():
        short = name.removeprefix("tunegate_")
        with_terms = out_dir / f"{short}_eval_with_terms.jsonl"
        with_key_fact_terms(Path(data_files[short]), with_terms, terms)
        data_files[short] = str(with_terms)
    for name in task_names:
        template = (EVALS_DIR / f"tunegate_{name}.yaml").read_text()
        filled = (
            template.replace("__DATA_FILE__", str(Path(data_files[name]).resolve()))
            .replace("__STOP__", prepared["stop"])
            .replace("__MAX_GEN_TOKS__", str(max_gen_toks))
        )
        (out_dir / f"tunegate_{name}.yaml").write_text(filled)
    shutil.copy(EVALS_DIR / "tunegate_metrics.py", out_dir / "tunegate_metrics.py")
    return out_dir


@functools.lru_cache(maxsize=4)
def task_manager(include_paths: tuple[str, ...], include_defaults: bool):
    """lm-eval's task index; indexing lm-eval's own ~15k tasks takes ~15 s, so it is built once per process."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(include_paths) or None, include_defaults=include_defaults)


def definition_hash(entry, lm_eval_version: str) -> str:
    """The task's YAML (includes resolved) and the Python next to it; not its data files or its folder."""
    if entry.yaml_path is None:  # a task defined in Python: pinned by the lm-eval version
        return sha256_parts(lm_eval_version, entry.name)
    cfg = dict(entry.cfg or {})
    kwargs = dict(cfg.get("dataset_kwargs") or {})
    kwargs.pop("data_files", None)  # local data is hashed by content, in data_hash
    cfg["dataset_kwargs"] = kwargs
    folder = entry.yaml_path.parent
    text = json.dumps(cfg, sort_keys=True, default=str).replace(str(folder), ".")
    code = [p.read_text() for p in sorted(folder.glob("*.py"))]
    return sha256_parts(lm_eval_version, text, *code)


def resolve_task(name: str, include_paths: list[str], limit: int | None) -> dict:
    """Find an lm-eval task by name, load its docs, hash them; fail with the task's name when that cannot be done."""
    from lm_eval.tasks import get_task_dict
    from lm_eval.tasks._index import Kind

    include_defaults = False
    manager = task_manager(tuple(include_paths), False)
    if name not in manager.task_index:  # not one of ours: look among lm-eval's own tasks
        include_defaults = True
        manager = task_manager(tuple(include_paths), True)
    entry = manager.task_index.get(name)
    if entry is None:
        raise EvalSuiteError(f"eval: lm-eval has no task named '{name}' (see `lm-eval ls tasks`).")
    if entry.kind not in (Kind.TASK, Kind.PY_TASK):
        raise EvalSuiteError(
            f"eval: '{name}' is an lm-eval {entry.kind.name.lower()} of several tasks; the gate compares per-sample "
            "scores of single tasks, so list the tasks you want by name in eval.lm_eval_tasks."
        )
    try:
        task_obj = get_task_dict([name], manager)[name]
        docs = list(task_obj.eval_docs)
    except Exception as err:  # datasets raises ConnectionError, FileNotFoundError, DatasetNotFoundError, ...
        raise EvalSuiteError(
            f"eval: the data of lm-eval task '{name}' cannot be loaded here ({type(err).__name__}: {err}). "
            "Nothing is downloaded (HF_DATASETS_OFFLINE=1): put the dataset in the Hugging Face datasets cache "
            f"first, or drop '{name}' from eval.lm_eval_tasks."
        ) from err
    docs = docs[:limit] if limit else docs
    data = hashlib.sha256()
    for doc in docs:
        data.update(json.dumps(doc, sort_keys=True, default=str).encode())
    return {
        "name": name,
        "include_paths": include_paths,
        "include_defaults": include_defaults,
        "definition_hash": definition_hash(entry, package_version("lm_eval")),
        "data_hash": data.hexdigest(),
        "limit": limit,
        "n_docs": len(docs),
        "higher_is_better": dict(task_obj.higher_is_better()),
    }


def eval_footing(cfg: EvalConfig) -> dict:
    """What must be equal for two models' scores to be comparable, besides the task and its data."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return {
        "seed": cfg.seed,
        "batch_size": cfg.batch_size,
        "device": device,
        "dtype": "float32" if device == "cpu" else "auto",
        "cpu_threads": cfg.cpu_threads if device == "cpu" else None,  # thread count can change float sums
        **{pkg: package_version(pkg) for pkg in ("lm_eval", "transformers", "peft", "torch")},
    }


def eval_cache_dir(cache_dir: str | None, tracking: TrackingConfig) -> Path:
    """eval.cache_dir, else eval-cache/ next to the sqlite MLflow DB, else ~/.cache/tunegate/eval-cache."""
    if cache_dir:
        return Path(cache_dir).resolve()
    if embedded(tracking.tracking_uri):
        return sqlite_db(tracking.tracking_uri).resolve().parent / "eval-cache"
    return tunegate_cache_dir() / "eval-cache"


def eval_suite(
    prepared: dict, cfg: EvalConfig, rules: list[GateRule], cache_dir: Path | None, out_dir: Path,
    trust_remote_code: bool = False,
) -> dict:
    """Every task to score, with its definition and data hashes, and the settings shared by every model.

    `cache_dir` None: the evaluation picks the default next to its tracking store (see eval_cache_dir).
    """
    tasks_dir = materialize_tasks(prepared, cfg.max_gen_toks, cfg.tasks, out_dir / "lm_eval_tasks", cfg.key_facts,
                                  cfg.assertions, trust_remote_code)
    names = [f"tunegate_{t}" for t in cfg.tasks] + cfg.lm_eval_tasks
    unknown_limits = sorted(set(cfg.limits) - set(names))
    if unknown_limits:
        raise EvalSuiteError(f"eval.limits names tasks the suite does not run: {unknown_limits}; it runs {names}")
    include_paths = [str(tasks_dir)] + [str(Path(p).resolve()) for p in cfg.include_paths]
    specs = [resolve_task(name, include_paths, cfg.limits.get(name)) for name in names]
    check_rules_against(specs, rules, "the eval suite", scored_later=tuple(SCORED_AFTER_EVALUATION))
    return {
        "tasks": specs,
        "footing": eval_footing(cfg),
        "base_model_path": prepared["base_model_path"],
        "trust_remote_code": trust_remote_code,
        "log_samples": cfg.log_samples,
        "cache_dir": str(cache_dir) if cache_dir else None,
    }


class EvalSuite(BaseModel):
    """The tasks every model is scored on, their hashes, and the footing that makes scores comparable."""

    model_config = ConfigDict(extra="forbid")
    tasks: list[dict]
    footing: dict
    base_model_path: str
    trust_remote_code: bool
    log_samples: bool
    cache_dir: str | None


@task
def build_eval_suite(prepared: Prepared, cfg: EvalConfig, gate: GateConfig, out_dir: str) -> EvalSuite:
    """Fill the local tasks, resolve lm-eval tasks by name and hash them all; fail here, before training."""
    as_dict = {**prepared.model_dump(), "base_model_path": prepared.base.path}
    cache_dir = Path(cfg.cache_dir).resolve() if cfg.cache_dir else None
    return EvalSuite(**eval_suite(as_dict, cfg, gate.rules, cache_dir, Path(out_dir), prepared.base.trust_remote_code))


# --- one model on one task -----------------------------------------------------------------------


def remembered_sha256(path: Path, memo: dict) -> str:
    """file_sha256, remembered in memo by (path, size, mtime) for large files such as base model weights."""
    stat = path.stat()
    seen = memo.get(str(path))
    if seen and seen["size"] == stat.st_size and seen["mtime_ns"] == stat.st_mtime_ns:
        return seen["sha256"]
    sha256 = file_sha256(path)
    if stat.st_size >= MEMO_MIN_BYTES:
        memo[str(path)] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha256}
    return sha256


def model_content_hash(base_model_path: str, adapter: str | None, memo_file: Path) -> str:
    """sha256 over the model's files and the adapter's config and weights: what lm-eval loads.

    base_model_path is the base model, or a whole fine-tuned model (then adapter is None).
    """
    memo = json.loads(memo_file.read_text()) if memo_file.exists() else {}
    before = dict(memo)
    base = Path(base_model_path)
    parts = [] if base.is_dir() else [f"hub:{base_model_path}"]  # a hub id: whatever the local HF cache holds
    files = sorted(p for p in base.rglob("*") if p.is_file() and not p.name.startswith(".")) if base.is_dir() else []
    files += sorted(Path(adapter).glob("adapter_*")) if adapter else []
    for path in files:
        parts += [path.name, remembered_sha256(path, memo)]
    if memo != before:
        memo_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(memo, indent=1))
        tmp.replace(memo_file)
    return sha256_parts(*parts)


def eval_cache_key(model: dict, spec: dict, footing: dict) -> str:
    """(model content, task definition, eval data, doc limit, footing, result format): never a label or a path."""
    digest = sha256_parts(model["content_hash"], spec["name"], spec["definition_hash"], spec["data_hash"],
                          str(spec["limit"]), json.dumps(footing, sort_keys=True), RESULT_FORMAT)
    return f"eval-{spec['name']}-{digest[:40]}"


def _prefect_cache_key(context, parameters: dict) -> str:
    return eval_cache_key(parameters["model"], parameters["spec"], parameters["footing"])


def generations(samples: list[dict]) -> dict:
    """{"prompts", "answers", "references"} per doc for a generation task (one generated string per doc), else {}."""
    answers = [s["filtered_resps"][0] if len(s["filtered_resps"]) == 1 else None for s in samples]
    if not all(isinstance(a, str) for a in answers):
        return {}
    return {"prompts": [str(s["arguments"][0][0]) for s in samples], "answers": answers,
            "references": [str(s["doc"].get("reference", "")) if isinstance(s["doc"], dict) else "" for s in samples]}


def run_lm_eval(base_model_path: str, adapter: str | None, spec: dict, footing: dict, out_dir: Path,
                trust_remote_code: bool = False) -> dict:
    """Score one model on one task with lm-eval; lm-eval writes its results and per-sample log to out_dir."""
    import torch
    from lm_eval import simple_evaluate
    from lm_eval.loggers import EvaluationTracker

    model_args = {"pretrained": base_model_path, "device": footing["device"], "dtype": footing["dtype"]}
    if adapter:
        model_args["peft"] = adapter
    if trust_remote_code:
        model_args["trust_remote_code"] = True
    name, seed = spec["name"], footing["seed"]
    tracker = EvaluationTracker(output_path=str(out_dir / "results.json"))
    threads = torch.get_num_threads()
    if footing["cpu_threads"]:
        torch.set_num_threads(footing["cpu_threads"])
    start = time.perf_counter()
    try:
        results = simple_evaluate(
            model="hf",
            model_args=model_args,
            tasks=[name],
            task_manager=task_manager(tuple(spec["include_paths"]), spec["include_defaults"]),
            batch_size=footing["batch_size"],
            limit=spec["limit"],
            log_samples=True,
            evaluation_tracker=tracker,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
        )
    finally:
        torch.set_num_threads(threads)
    seconds = time.perf_counter() - start
    samples = sorted(results["samples"][name], key=lambda s: s["doc_id"])
    metrics = {
        key.split(",")[0]: float(value)
        for key, value in results["results"][name].items()
        if "," in key and "_stderr" not in key and isinstance(value, (int, float))
    }
    # Paired tests need one number per doc; corpus-level metrics (e.g. perplexity) have none.
    per_sample = {
        m: [float(s[m]) for s in samples] for m in metrics if all(isinstance(s.get(m), (int, float)) for s in samples)
    }
    summary = {
        "task": name,
        "metrics": metrics,
        "higher_is_better": dict(results["higher_is_better"][name]),
        "samples": per_sample,
        "doc_ids": [s["doc_id"] for s in samples],
        # Per doc: its stratum (source file/language, written by prepare; "all" for docs without one), and for
        # generation tasks the prompt and the answer, which the gate compares between models (answer drift).
        "strata": [str(s["doc"].get("stratum") or "all") if isinstance(s["doc"], dict) else "all" for s in samples],
        **generations(samples),
        "n": len(samples),
        "seconds": round(seconds, 2),
    }
    # lm-eval's own files: results_<time>.json and samples_<task>_<time>.jsonl (it rewrites the dicts it saves).
    tracker.save_results_aggregated(results=results, samples=results["samples"])
    tracker.save_results_samples(task_name=name, samples=results["samples"][name])
    return summary


def log_eval_run(tracking: TrackingConfig, model: dict, spec: dict, footing: dict, result: dict,
                 files_dir: Path | None, cache_key: str) -> str:
    """One MLflow run per evaluation actually computed, in the <experiment>-evals experiment."""
    from mlflow.entities import Metric, Param

    client, experiment_id = eval_experiment(tracking)
    run = client.create_run(
        experiment_id,
        run_name=f"{spec['name']} {model['label']}",
        tags={
            "tunegate.kind": "eval",
            "eval.task": spec["name"],
            "eval.model_label": model["label"],
            "eval.model_hash": model["content_hash"],
            "eval.weights": "adapter" if model["adapter"] else "model" if model["model"] else "base",
            "eval.adapter": str(model["adapter"]),
            "eval.definition_hash": spec["definition_hash"],
            "eval.data_hash": spec["data_hash"],
            "eval.cache_key": cache_key,
        },
    )
    now = int(time.time() * 1000)
    client.log_batch(
        run.info.run_id,
        metrics=[Metric(m, v, now, 0) for m, v in result["metrics"].items()],
        params=[Param(k, str(v)) for k, v in {**footing, "limit": spec["limit"], "n": result["n"]}.items()],
    )
    if files_dir is not None:
        client.log_artifacts(run.info.run_id, str(files_dir), "lm_eval")
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def pretrained_path(model: dict, base_model_path: str) -> str:
    """What lm-eval loads as `pretrained`: a whole fine-tuned model, else the base (with any adapter on top)."""
    if model["model"] and model["adapter"]:
        raise ValueError(f"model reference {model['label']!r} names both a whole model and an adapter")
    return model["model"] or base_model_path


def with_content_hash(model: dict, suite: dict) -> dict:
    """The model reference ({label, adapter, model, version}) plus the hash of what lm-eval will load."""
    memo = Path(suite["cache_dir"]) / "file-hashes.json"
    pretrained = pretrained_path(model, suite["base_model_path"])
    return {**model, "content_hash": model_content_hash(pretrained, model["adapter"], memo)}


def score_task(model: dict, spec: dict, footing: dict, settings: dict) -> dict:
    """One model on one task: lm-eval's scores, per-sample values, and what makes them comparable."""
    key = eval_cache_key(model, spec, footing)
    files_dir = Path(settings["cache_dir"]) / "lm_eval" / key
    shutil.rmtree(files_dir, ignore_errors=True)  # left by an attempt that did not finish
    summary = run_lm_eval(pretrained_path(model, settings["base_model_path"]), model["adapter"], spec, footing,
                          files_dir, settings["trust_remote_code"])
    return {
        **summary,
        "model_hash": model["content_hash"],
        "definition_hash": spec["definition_hash"],
        "data_hash": spec["data_hash"],
        "limit": spec["limit"],
        "footing": footing,
        "cache_key": key,
        "lm_eval_files": str(files_dir),
    }


@task(persist_result=True, result_serializer="json", cache_expiration=None,
      task_run_name="evaluate[{model[label]} {spec[name]}]")
def evaluate_task(model: dict, spec: dict, footing: dict, settings: dict, tracking: TrackingConfig) -> dict:
    """Score one model on one task and log it as an MLflow run; cached by content (see evaluate_suite)."""
    result = score_task(model, spec, footing, settings)
    files = Path(result["lm_eval_files"]) if settings["log_samples"] else None
    return {**result, "eval_run_id": log_eval_run(tracking, model, spec, footing, result, files, result["cache_key"])}


def suite_settings(suite: dict) -> dict:
    return {k: suite[k] for k in ("base_model_path", "trust_remote_code", "log_samples", "cache_dir")}


def evaluate_suite(model: dict, suite: dict, tracking: TrackingConfig) -> dict:
    """Score a model ({label, adapter, model, version}) on every task of the suite; reuse cached results.

    Prefect's cache fits: a custom key over content hashes (paths and labels left out), results
    persisted as JSON in the cache folder, never expiring. A hit costs one task-run round trip.
    """
    suite = {**suite, "cache_dir": str(eval_cache_dir(suite["cache_dir"], tracking))}
    model = with_content_hash(model, suite)
    cached_evaluate = evaluate_task.with_options(
        cache_policy=CacheKeyFnPolicy(cache_key_fn=_prefect_cache_key), result_storage=Path(suite["cache_dir"])
    )
    tasks, cache_hits = {}, []
    for spec in suite["tasks"]:
        state = cached_evaluate(model, spec, suite["footing"], suite_settings(suite), tracking, return_state=True)
        tasks[spec["name"]] = state.result()
        if state.name == "Cached":
            cache_hits.append(spec["name"])
    return {
        "label": model["label"],
        "version": model["version"],
        "adapter": model["adapter"],
        "model": model["model"],
        "model_hash": model["content_hash"],
        "tasks": tasks,
        "cache_hits": cache_hits,
        "eval_run_ids": {name: result["eval_run_id"] for name, result in tasks.items()},
    }


class ModelUnderTest(BaseModel):
    """A model to score: the base (adapter and model None), an adapter on the base, or a whole model."""

    model_config = ConfigDict(extra="forbid")
    label: str
    adapter: str | None = None
    model: str | None = None
    version: str | None = None


class Evaluation(ModelUnderTest):
    """One model's scores on every task of the suite; per-task results keep per-sample values for the gate."""

    model_hash: str
    tasks: dict[str, dict]
    cache_hits: list[str]
    eval_run_ids: dict[str, str]


class Comparison(BaseModel):
    """The candidate and what it is compared with, scored on the same suite and footing."""

    model_config = ConfigDict(extra="forbid")
    candidate: Evaluation
    baseline: Evaluation


def evaluate(aligned: Aligned, baseline: ModelUnderTest, suite: EvalSuite, tracking: TrackingConfig) -> Comparison:
    """Score the baseline, then the candidate (aligned's weights), on the suite; cached results are reused."""
    return compare(ModelUnderTest(label="candidate", adapter=aligned.adapter, model=aligned.model), baseline, suite,
                   tracking)


def compare(candidate: ModelUnderTest, baseline: ModelUnderTest, suite: EvalSuite, tracking: TrackingConfig
            ) -> Comparison:
    """Score the baseline, then the candidate (labelled "candidate"), on the suite; cached results are reused."""
    scored = {m.label: Evaluation(**evaluate_suite(m.model_dump(), suite.model_dump(), tracking))
              for m in (baseline, candidate)}
    return Comparison(candidate=scored["candidate"], baseline=scored[baseline.label])


@task(retries=2, retry_delay_seconds=[2, 5])
def resolve_baseline(tracking: TrackingConfig, out_dir: str) -> ModelUnderTest:
    """What the candidate is compared with: the champion (adapter or whole model), or the base model when none exists."""
    client, _ = connect(tracking)
    version = get_alias(client, tracking.registered_model, CHAMPION)
    if version is None:
        return ModelUnderTest(label="base")
    weights = download_version(client, version, Path(out_dir) / f"champion-v{version.version}")
    # peft's own marker tells an adapter from a whole model (sft.method: full).
    is_adapter = (Path(weights) / "adapter_config.json").exists()
    return ModelUnderTest(label=f"champion v{version.version}", adapter=weights if is_adapter else None,
                          model=None if is_adapter else weights, version=str(version.version))


# Tasks scored on the evaluations' answers after evaluate (tasks/judge.py, tasks/reward_eval.py), with their metrics
SCORED_AFTER_EVALUATION = {"judge": {"win_rate", "no_verdict_rate"}, "reward": {"win_rate", "reward"}}
SUITE_VERSION_TAG = "eval_suite_version"  # on a version gated on another version's suite (a quantized variant)


def suite_owner(client, model_name: str, version: str):
    """The version whose fine-tuning run built the suite `version` was gated on: itself, or for a quantized variant
    the version its eval_suite_version tag names, followed back."""
    mv = client.get_model_version(model_name, version)
    while SUITE_VERSION_TAG in mv.tags:
        mv = client.get_model_version(model_name, mv.tags[SUITE_VERSION_TAG])
    return mv


def check_rules_against(specs: list[dict], rules: list[GateRule], where: str,
                        scored_later: tuple[str, ...] = ()) -> None:
    """Every rule names a task of the suite, or one of `scored_later` that the flow scores after evaluating, and a
    metric that task has."""
    tasks = {s["name"]: s["higher_is_better"] for s in specs} | {t: SCORED_AFTER_EVALUATION[t] for t in scored_later}
    for rule in rules:
        if rule.task not in tasks:
            judge = " (the pairwise judge runs only in tunegate run)" if rule.task == "judge" else ""
            raise EvalSuiteError(f"gate rule on {rule.task}{judge}: {where} has no such task; it has {sorted(tasks)}. "
                                 "Gate on those (--config, --set gate.rules=...)")
        if rule.metric not in tasks[rule.task]:
            raise EvalSuiteError(f"gate rule on {rule.task}: it has no metric '{rule.metric}'; it has "
                                 f"{sorted(tasks[rule.task])}")


@task
def gated_suite(baseline: ModelUnderTest, gate: GateConfig, tracking: TrackingConfig) -> EvalSuite:
    """The suite the champion (baseline) was gated on, rebuilt from its fine-tuning run's task files.

    Each task must hash as the champion's own evaluation recorded it (eval/candidate.json of that run), so a
    candidate scored on it now meets the champion on the same docs; the gate's rules must name its tasks.
    """
    import mlflow

    from tunegate.config import PipelineParams
    from tunegate.models import resolve_base_model

    if baseline.version is None:
        raise EvalSuiteError("there is no champion to gate against: a variant of a version is gated against the "
                             "champion on the suite the champion was gated on; promote a version first")
    client, _ = connect(tracking)
    owner = suite_owner(client, tracking.registered_model, baseline.version)
    if "config" not in owner.tags:
        raise EvalSuiteError(f"{tracking.registered_model} version {owner.version} has no `config` tag: it was not "
                             "registered by tunegate run, so the suite it was gated on is unknown")
    params = PipelineParams.model_validate_json(owner.tags["config"])
    tasks_dir = Path(params.paths().eval) / "lm_eval_tasks"
    where = f"the suite champion v{baseline.version} was gated on (built by run {params.run_name}, v{owner.version})"
    if not tasks_dir.is_dir():
        raise EvalSuiteError(f"{where} was written to {tasks_dir}, which is not on this machine: run this where that "
                             f"run ran (its output_dir {params.output_dir!r}, relative to the working directory)")
    recorded = mlflow.artifacts.load_dict(f"runs:/{owner.run_id}/eval/candidate.json")["tasks"]
    include_paths = [str(tasks_dir)] + [str(Path(p).resolve()) for p in params.eval.include_paths]
    names = [f"tunegate_{t}" for t in params.eval.tasks] + params.eval.lm_eval_tasks
    specs = [resolve_task(name, include_paths, params.eval.limits.get(name)) for name in names]
    for spec in specs:
        for key in ("definition_hash", "data_hash"):
            if recorded.get(spec["name"], {}).get(key) != spec[key]:
                raise EvalSuiteError(f"{where}: task {spec['name']} in {tasks_dir} is not what that run evaluated "
                                     f"({key} differs: its files changed, or lm-eval is another version)")
    check_rules_against(specs, gate.rules, where, scored_later=("reward",))  # the quantize flow scores reward
    cache_dir = str(Path(params.eval.cache_dir).resolve()) if params.eval.cache_dir else None  # as build_eval_suite
    return EvalSuite(tasks=specs, footing=eval_footing(params.eval), base_model_path=resolve_base_model(
        params.base_model), trust_remote_code=params.trust_remote_code, log_samples=params.eval.log_samples,
        cache_dir=cache_dir)


if __name__ == "__main__":
    run_dir = Path(sys.argv[2])
    prepared = {
        "domain_eval": str(run_dir / "domain_eval.jsonl"),
        "general_eval": str(run_dir / "general_eval.jsonl"),
        "stop": "<|im_end|>",
        "base_model_path": sys.argv[1],
    }
    suite = eval_suite(prepared, EvalConfig(), [], run_dir / "eval-cache", run_dir)
    for spec in suite["tasks"]:
        out = run_lm_eval(sys.argv[1], sys.argv[3] if len(sys.argv) > 3 else None, spec, suite["footing"],
                          run_dir / "lm_eval" / spec["name"])
        print(spec["name"], json.dumps(out["metrics"]), f"{out['seconds']} s")
