"""The tunegate command line.

    tunegate run configs/demo.yaml [--set sft.max_steps=3 ...]   # run the gated pipeline
    tunegate validate FILE [FILE ...] [--preferences FILE ...]   # data checks only (suites: tasks/validate.py)
    tunegate promote VERSION [--override --reason "..."]          # make a version the champion
    tunegate rollback [--reason "..."]                            # champion <- previous

`run` exits 0 when the candidate was promoted, 1 when the gate blocked it or a stage failed.
`promote` and `rollback` read the tracking settings from --config (default configs/demo.yaml) and
its --set overrides; they exit 1 when the registry's state refuses the move.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def stage_seconds(flow_run_id) -> list[tuple[str, float]]:
    """Each task run's duration, read back from Prefect, in start order."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    runs = sorted((r for r in runs if r.start_time), key=lambda r: r.start_time)
    return [(r.name.rsplit("-", 1)[0], r.total_run_time.total_seconds()) for r in runs]


def format_summary(s: dict, seconds: float, stages: list[tuple[str, float]]) -> str:
    lines = [
        "",
        "=" * 72,
        f"tunegate run finished in {seconds / 60:.1f} min",
        f"  data:   {s['rows_kept']} rows kept, {s['rows_quarantined']} quarantined ({s['quarantine_file']})",
        f"  train:  {s['train_steps']} steps, mean train loss {s['train_loss']:.4f}",
        f"  eval:   candidate vs {s['baseline']}"
        + (f" (from cache: {', '.join(s['eval_cache_hits']['baseline'])})" if s["eval_cache_hits"]["baseline"] else ""),
    ]
    for task, scores in s["eval"].items():
        for metric, cand in scores["candidate"].items():
            lines.append(f"          {task}/{metric}: {scores['baseline'][metric]:.4f} -> {cand:.4f}")
    verdict = "PASSED: promoted to champion" if s["gate"] == "passed" else f"BLOCKED on {', '.join(s['regressed'])}"
    lines += [
        f"  gate:   {verdict} (model version {s['model_version']})",
        f"  mlflow: run {s['mlflow_run_id']}",
        f"  browse: {s['mlflow_ui']}",
        "  stages: " + ", ".join(f"{name} {sec:.0f}s" for name, sec in stages),
        "=" * 72,
    ]
    return "\n".join(lines)


def cmd_run(args) -> int:
    import time

    from flows.finetune import finetune_pipeline
    from tunegate.config import load_config

    params = load_config(args.config, args.set)
    if params.run_name is None:
        params.run_name = f"{params.name}-{datetime.now():%Y%m%d-%H%M%S}"
    summary_path = Path(params.output_dir).resolve() / params.run_name / "summary.json"
    start = time.perf_counter()
    state = finetune_pipeline(params, return_state=True)
    seconds = time.perf_counter() - start
    if state.is_failed():  # the flow already logged the traceback; say what failed, once
        print(f"\ntunegate: run failed: {state.message}", file=sys.stderr)
    if summary_path.exists():
        stages = stage_seconds(state.state_details.flow_run_id)
        print(format_summary(json.loads(summary_path.read_text()), seconds, stages))
    return 0 if state.is_completed() else 1


def cmd_validate(args) -> int:
    import tempfile

    from tasks.ingest import ingest_files
    from tasks.validate import report_markdown, validate_records

    work = Path(args.out or tempfile.mkdtemp(prefix="tunegate-validate-"))
    ingested = ingest_files(args.files, work, args.preferences)
    tokenizer = None
    if args.base_model:
        from tasks.prepare import load_chat_tokenizer
        from tunegate.models import resolve_base_model

        tokenizer = load_chat_tokenizer(resolve_base_model(args.base_model))
    report = validate_records(Path(ingested["records"]), Path(ingested["rejected"]), work,
                              args.max_rejected_fraction, args.pii_policy,
                              preferences_path=Path(ingested["preferences"]), tokenizer=tokenizer,
                              max_length=args.max_length, general_holdout_file=args.eval_file,
                              only=set(args.only) if args.only else None)
    print(report_markdown(report))
    print(f"\nclean rows: {report['clean']}\nclean preference pairs: {report['clean_preferences']}"
          f"\nquarantine: {report['quarantine']}\nreport: {work / 'report.json'}")
    return 0 if report["success"] else 1


def cmd_promote(args) -> int:
    from tasks.promote import PromotionRefused, promote_version
    from tunegate.config import load_config

    tracking = load_config(args.config, args.set).tracking
    try:
        out = promote_version(tracking, args.version, args.override, args.reason)
    except PromotionRefused as err:
        print(f"tunegate: promote refused: {err}", file=sys.stderr)
        return 1
    how = f"override: {args.reason!r}" if args.override else "gate passed"
    print(f"{tracking.registered_model}: champion -> version {out['version']} ({how}); "
          f"previous -> {out['previous'] or 'none'}")
    return 0


def cmd_rollback(args) -> int:
    from tasks.promote import PromotionRefused, rollback
    from tunegate.config import load_config

    tracking = load_config(args.config, args.set).tracking
    try:
        out = rollback(tracking, args.reason)
    except PromotionRefused as err:
        print(f"tunegate: rollback refused: {err}", file=sys.stderr)
        return 1
    print(f"{tracking.registered_model}: champion -> version {out['champion']} "
          f"(rolled back from {out['rolled_back']}; no previous until the next promotion)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tunegate", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the gated fine-tuning pipeline")
    run.add_argument("config", help="YAML config, e.g. configs/demo.yaml")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    run.set_defaults(func=cmd_run)
    val = sub.add_parser("validate", help="run the data checks on files")
    val.add_argument("files", nargs="*", help="SFT data files (JSON, JSONL, CSV, Parquet; format auto-detected)")
    val.add_argument("--preferences", nargs="+", default=[], metavar="FILE", help="preference-pair files")
    val.add_argument("--base-model", help="run the length suite with this model's tokenizer (e.g. tiny)")
    val.add_argument("--max-length", type=int, default=2048, help="token limit for the length suite")
    val.add_argument("--eval-file", help="run the leakage suite against the prompts of this eval file")
    val.add_argument("--only", action="append", metavar="SUITE",
                     choices=["format", "length", "duplicates", "pii", "leakage", "preference"],
                     help="run only this suite (repeatable); default: all that have their inputs")
    val.add_argument("--out", help="folder for clean.jsonl, quarantine.jsonl and report.json")
    val.add_argument("--max-rejected-fraction", type=float, default=0.2)
    val.add_argument("--pii-policy", choices=["reject", "redact"], default="reject")
    val.set_defaults(func=cmd_validate)
    for name, func, text in (("promote", cmd_promote, "make a model version the champion"),
                             ("rollback", cmd_rollback, "point champion back at previous")):
        cmd = sub.add_parser(name, help=text)
        if name == "promote":
            cmd.add_argument("version", help="registered model version, e.g. 7")
            cmd.add_argument("--override", action="store_true",
                             help="promote although the gate did not pass (needs --reason)")
        cmd.add_argument("--reason", help="why; recorded on the version with your user name and the time")
        cmd.add_argument("--config", default="configs/demo.yaml", help="config whose tracking settings to use")
        cmd.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
        cmd.set_defaults(func=func)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
