"""The tunegate command line.

    tunegate run configs/demo.yaml [--set sft.max_steps=3 ...]   # run the gated pipeline
    tunegate run configs/demo.yaml --local-judge bundled:smollm2-135m-instruct   # ... with a judge on this machine
    tunegate validate FILE [FILE ...] [--preferences FILE ...]   # data checks only (suites: tasks/validate.py)
    tunegate promote VERSION [--override --reason "..."]          # make a version the champion
    tunegate rollback [--to VERSION] [--reason "..."]             # champion <- previous (or VERSION)
    tunegate serve-model [--config CFG] [--port 8000]            # OpenAI-compatible server on the champion
    tunegate serve-model --model-dir DIR [--port 8001]           # ... on a local checkpoint (e.g. a judge)
    tunegate traffic [--url http://127.0.0.1:8000]               # simulated users rate the server's real answers
    tunegate ui                                                  # Prefect server + MLflow UI, prints both URLs
    tunegate serve [--config configs/demo.yaml]                  # the finetune, retrain and monitor deployments
    tunegate retrain [--config CFG] [--approve|--reject LABEL --note "..."]   # retrain from feedback, or settle
    tunegate feedback status [--config CFG]                      # watermark, pending review, new feedback, prod set
    tunegate monitor [--config CFG] [--day 2026-12-01]           # served traffic per model version (default: today)
    tunegate preferences VERSION [--config CFG]                  # reviewers' A/B preferences on a version's answers
    tunegate quantize VERSION [--method int8] [--config CFG]     # an int8 variant, gated against the champion
    tunegate sweep configs/demo.yaml --trials 8 [--study NAME]   # Optuna search; the best trial gated like a run
    tunegate guard [--config CFG]                                # roll back a worse champion, settle a canary

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
# A first run migrates a fresh Prefect database; Prefect's 20 s start limit is too short on a busy 2-core box.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
# The Makefile's DO_NOT_TRACK=1 does not reach Prefect's server-side telemetry, which logs an ERROR offline.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


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
    verdict = {"passed": "PASSED: promoted to champion", "needs_review": "NEEDS REVIEW: not promoted, a person decides",
               "blocked": f"BLOCKED on {', '.join(s['regressed'])}"}[s["gate"]]
    if s.get("review"):  # a person decided a needs_review candidate in the Prefect UI
        verdict = f"NEEDS REVIEW, {s['review']}" + (": promoted to champion" if s["promoted"] else "")
    if s.get("judge"):  # summaries of runs without a judge (or older ones) have none
        lines.append(f"  judge:  {judge_line(s['judge'])}")
    if s.get("reward"):
        lines.append(f"  reward: {reward_line(s['reward'])}")
    if s.get("preferences"):
        p = s["preferences"]
        lines.append(f"  review: {p['reviewers']} reviewer(s) preferred candidate {p['candidate']}, baseline "
                     f"{p['baseline']}, tie {p['tie']} on {p['prompts']} prompt(s)")
    lines += [
        f"  gate:   {verdict} (model version {s['model_version']})",
        f"  mlflow: run {s['mlflow_run_id']}",
        f"  browse: {s['mlflow_ui']}",
        "  stages: " + ", ".join(f"{name} {sec:.0f}s" for name, sec in stages),
        "=" * 72,
    ]
    return "\n".join(lines)


def judge_line(j: dict) -> str:
    """The pairwise judge's result in one line: win rate, interval, counts, sign test, position bias."""
    if not j["pairs"]:
        rate = "nothing to judge (no generation task answered by both models)"
    elif j["win_rate"] is None:
        rate = "no win rate (no verdict on any pair)"
    else:
        rate = f"win rate {j['win_rate']:.3f} [{j['ci_low']:.3f}, {j['ci_high']:.3f}]"
    bias = "n/a" if j["position_bias"] is None else f"{j['position_bias']:.0%}"
    return (f"{rate} by {j['judge']} over {j['pairs']} pairs: {j['wins']} wins, {j['ties']} ties, {j['losses']} "
            f"losses, {j['no_verdict']} no verdict; sign test p={j['sign_test_p']:.3g}, position bias {bias}")


def reward_line(r: dict) -> str:
    """The reward model's held-out accuracy and its scores of both models, in one line."""
    low, high = r["accuracy_ci"]
    model = (f"{r['reward_model']}, held-out accuracy {r['accuracy']:.3f} [{low:.3f}, {high:.3f}] on "
             f"{r['heldout_pairs']} pairs" if r["accuracy"] is not None else r["reward_model"])
    if not r["pairs"]:
        return f"{model}: nothing scored (no reward model, or no generation task answered by both models)"
    weak = "" if r["informative"] else f" (below reward.min_accuracy {r['min_accuracy']}: shown, never gates)"
    m_low, m_high = r["margin_ci"]
    return (f"{model}{weak}: win rate {r['win_rate']:.3f} over {r['pairs']} prompts ({r['wins']} wins, {r['ties']} ties, "
            f"{r['losses']} losses; sign test p={r['sign_test_p']:.3g}), mean margin {r['mean_margin']:+.3f} "
            f"[{m_low:+.3f}, {m_high:+.3f}], {r['ms_per_pair']:.0f} ms a pair scored "
            f"(+{r.get('load_seconds', 0):.1f} s loading the reward model)")


def cmd_run(args) -> int:
    import time

    from flows.finetune import finetune_pipeline
    from tunegate.config import load_config

    params = load_config(args.config, args.set)
    if params.run_name is None:
        params.run_name = f"{params.name}-{datetime.now():%Y%m%d-%H%M%S}"
    summary_path = Path(params.output_dir).resolve() / params.run_name / "summary.json"
    start = time.perf_counter()
    if args.local_judge:
        from cli.serving import local_judge
        from tunegate.config import JudgeConfig

        with local_judge(args.local_judge, summary_path.parent / "local-judge.log") as endpoint:
            # the config's judge section (rubric, max_tokens, ...) stays; only where the judge is changes
            params.judge = JudgeConfig(**{**(params.judge.model_dump() if params.judge else {}), **endpoint})
            state = finetune_pipeline(params, return_state=True)
    else:
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
        from tunegate.models import load_chat_tokenizer
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
        out = rollback(tracking, args.reason, to=args.to)
    except PromotionRefused as err:
        print(f"tunegate: rollback refused: {err}", file=sys.stderr)
        return 1
    print(f"{tracking.registered_model}: champion -> version {out['champion']} "
          f"(rolled back from {out['rolled_back']}; no previous until the next promotion)")
    return 0


def cmd_serve_model(args) -> int:
    import logging

    from serve.server import serve_champion
    from tunegate.config import load_config

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    params = load_config(args.config, args.set)
    if args.model_dir:
        from serve.server import serve_checkpoint
        from tunegate.models import resolve_base_model

        serve_checkpoint(Path(resolve_base_model(args.model_dir)).expanduser(), args.served_name, args.host,
                         args.port, args.max_tokens, args.threads, params.trust_remote_code, params.serve)
        return 0
    serve_champion(params.tracking, params.serve, args.host, args.port, args.poll_seconds, args.served_name,
                   args.max_tokens, args.threads)
    return 0


def cmd_traffic(args) -> int:
    from serve.traffic import IDENTITY, general_topics, simulate_users

    print(json.dumps(simulate_users(args.url, args.model, [IDENTITY, *general_topics()], args.requests, args.seed),
                     indent=2))
    return 0


def cmd_serve(args) -> int:
    from deployments.serve import serve_deployments
    from tunegate.config import FeedbackConfig

    feedback = FeedbackConfig(logs=args.feedback_logs, watermark_file=args.watermark_file,
                              work_dir=args.feedback_work_dir)
    serve_deployments(args.config, args.set, args.cron, args.timezone, feedback, paused=args.paused)
    return 0


def cmd_retrain(args) -> int:
    """Retrain from the feedback since the watermark, or settle a window that waits for review first."""
    from flows.retrain_from_feedback import retrain_from_feedback
    from tunegate.config import load_config

    params = load_config(args.config, args.set)
    decision = {"approved_window": args.approve, "rejected_window": args.reject, "review_note": args.note}
    if args.approve or args.reject:
        if not (args.note or "").strip():
            print("tunegate retrain: --approve/--reject need --note '<reviewer>: <reason>' (recorded with the "
                  "decision)", file=sys.stderr)
            return 2
        params = params.model_copy(update={"feedback": params.feedback.model_copy(update=decision)})
    state = retrain_from_feedback(params, return_state=True)
    if state.is_failed():  # a window stopped for review, or a run failed before its gate decision
        print(f"\ntunegate: retrain failed: {state.message}\n`tunegate feedback status` shows what waits.",
              file=sys.stderr)
        return 1
    result = state.result()
    print(json.dumps(result, indent=2, default=str))
    return 0 if result["status"] in ("promoted", "canary", "no_new_feedback", "rejected") else 1


def status_text(s: dict) -> str:
    """`tunegate feedback status` for people: the watermark, what waits for review, what is new, the production set."""
    mark, new, prod = s["watermark"], s["since_watermark"], s["production_set"]
    lines = [f"feedback sources: traces {'on' if s['sources']['traces'] else 'off'}, logs "
             f"{s['sources']['logs'] or 'none (served traces only)'}; watermark file {s['sources']['watermark_file']}",
             (f"watermark: {mark['timestamp']} (run {mark['run']}, {mark['outcome']}, written {mark['written_at']})"
              if mark and mark.get("timestamp") else "watermark: none yet (nothing trained on feedback)")]
    if s["pending"]:
        p = s["pending"]
        lines += [f"PENDING REVIEW: window {p['label']} ({p['start']} .. {p['end']}), stopped by run {p['run']} "
                  f"since {p['since']}; later feedback waits behind it.",
                  "  why: " + p["reason"].replace("\n", "\n  "),
                  f"  approve: tunegate retrain --approve {p['label']} --note '<reviewer>: <reason>'",
                  f"  reject:  tunegate retrain --reject {p['label']} --note '<reviewer>: <reason>'"]
    lines.append(f"{'in the pending window' if s['pending'] else 'since the watermark'}: {new['records']} records"
                 + (f" ({new['up']} up, {new['down']} down, {new['corrections']} corrections) -> {new['sft_rows']} SFT "
                    f"rows, {new['pairs']} preference pairs; {new['start']} .. {new['end']}" if new["records"] else "")
                 + (f"; {new['unusable']} unusable" if new["unusable"] else ""))
    lines.append(f"production regression set: version {prod['version']}, {prod['rows']} prompts"
                 + (f" (MLflow run {prod['run_id']})" if prod["run_id"] else ""))
    return "\n".join(lines)


def cmd_feedback(args) -> int:
    from tasks.feedback import feedback_status
    from tunegate.config import load_config

    params = load_config(args.config, args.set)
    status = feedback_status(params.feedback, params.tracking)
    print(json.dumps(status, indent=2, default=str) if args.json else status_text(status))
    return 0


def cmd_monitor(args) -> int:
    from datetime import date, datetime, timezone

    from flows.monitor_serving import monitor_serving
    from tasks.monitor import report_markdown
    from tunegate.config import load_config

    tracking = load_config(args.config, args.set).tracking
    # By hand the question is usually "how is it going today"; the daily deployment reports yesterday.
    day = date.fromisoformat(args.day) if args.day else datetime.now(timezone.utc).date()
    report = monitor_serving(tracking, day)
    print("\n" + report_markdown(report))
    if report.runs:
        print(f"\nMLflow: experiment {tracking.experiment}-monitoring, runs {', '.join(report.runs)}; "
              f"select them and Compare to see the versions side by side (`tunegate ui`).")
    return 0


def cmd_guard(args) -> int:
    """Run the live guard once and print both verdicts; exit 0 whatever it decided (a rollback is not an error)."""
    from flows.guard import live_guard
    from tasks.guard import verdict_markdown
    from tunegate.config import load_config

    params = load_config(args.config, args.set)
    report = live_guard(params.tracking, params.guard, params.serve.canary)
    print("\n" + verdict_markdown(report.champion) + "\n\n" + verdict_markdown(report.canary))
    return 0


def cmd_preferences(args) -> int:
    from tasks.gate import reviewer_preferences
    from tunegate.config import load_config
    from tunegate.registry import connect

    tracking = load_config(args.config, args.set).tracking
    client, _ = connect(tracking)
    run_id = client.get_model_version(tracking.registered_model, args.version).run_id
    prefs = reviewer_preferences(tracking, run_id)
    if prefs is None:
        print(f"{tracking.registered_model} version {args.version}: no reviewer preferences yet (MLflow feedback "
              f"`preference` on the traces of run {run_id})")
    else:
        print(f"{tracking.registered_model} version {args.version}: {json.dumps(prefs)}")
    return 0


def format_variant_summary(s: dict, seconds: float) -> str:
    """`tunegate quantize`'s end: the variant, its size, its eval against the champion, the gate."""
    verdict = {"passed": "PASSED: promoted to champion", "needs_review": "NEEDS REVIEW: not promoted, a person decides",
               "blocked": f"BLOCKED on {', '.join(s['regressed'])}"}[s["gate"]]
    if s["stale"]:
        verdict = f"PASSED, not promoted: {s['stale']}"
    lines = ["", "=" * 72, f"tunegate quantize finished in {seconds / 60:.1f} min",
             f"  source:  {s['model_name']} version {s['source_version']}, {s['source_bytes'] / 2**20:.1f} MiB safetensors",
             f"  variant: {s['method']} by {s['library']}: {s['int8_layers']} of {s['linear_layers']} linear layers "
             f"int8, {s['bytes'] / 2**20:.1f} MiB ({s['bytes'] / s['source_bytes']:.2f}x)",
             f"  eval:    variant vs {s['baseline']}" + (f" (from cache: {', '.join(s['eval_cache_hits']['baseline'])})"
                                                        if s["eval_cache_hits"]["baseline"] else "")]
    for task, scores in s["eval"].items():
        for metric, cand in scores["candidate"].items():
            lines.append(f"           {task}/{metric}: {scores['baseline'][metric]:.4f} -> {cand:.4f}")
    lines += [f"  gate:    {verdict} (model version {s['model_version']})", f"  mlflow:  run {s['mlflow_run_id']}",
              f"  browse:  {s['mlflow_ui']}", "=" * 72]
    return "\n".join(lines)


def cmd_quantize(args) -> int:
    import time

    from flows.quantize import quantize_version
    from tasks.quantize import QuantizeRefused, check_request
    from tunegate.config import QuantizeConfig, load_config

    params = load_config(args.config, args.set)
    cfg = QuantizeConfig(method=args.method)
    try:  # before the flow: a refused request starts no Prefect server and changes nothing
        check_request.fn(args.version, cfg, params.tracking)
    except QuantizeRefused as err:
        print(f"tunegate: quantize refused: {err}", file=sys.stderr)
        return 1
    if params.run_name is None:
        params.run_name = f"quantize-v{args.version}-{args.method}-{datetime.now():%Y%m%d-%H%M%S}"
    summary_path = Path(params.output_dir).resolve() / params.run_name / "summary.json"
    start = time.perf_counter()
    state = quantize_version(args.version, cfg, params, return_state=True)
    if state.is_failed():
        print(f"\ntunegate: quantize failed: {state.message}", file=sys.stderr)
    if summary_path.exists():
        print(format_variant_summary(json.loads(summary_path.read_text()), time.perf_counter() - start))
    return 0 if state.is_completed() else 1


def positive_int(text: str) -> int:
    """argparse type for counts that must be at least 1 (--trials)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}: a sweep runs one trial or more")
    return value


def format_sweep(result: dict, seconds: float) -> str:
    """The study's table, its best trial and where its MLflow run is, for the end of `tunegate sweep`."""
    n = result["counts"]
    lines = ["", "=" * 72, f"tunegate sweep finished in {seconds / 60:.1f} min: study {result['study']} "
             f"({result['storage']})",
             f"  objective: {result['objective']} ({result['direction']})",
             f"  trials: {n['finished']} finished: {n['complete']} complete, {n['pruned']} pruned, {n['fail']} failed",
             f"  {'#':>4}  {'state':9} {'objective':>10} {'seconds':>8}  values"]
    for t in result["trials"]:
        value = "-" if t["value"] is None or t["state"] != "COMPLETE" else f"{t['value']:.4f}"
        seconds_taken = "-" if t["seconds"] is None else f"{t['seconds']:.0f}"
        values = ", ".join(f"{k}={v:.4g}" for k, v in t["values"].items())
        lines.append(f"  {t['number']:>4}  {t['state']:9} {value:>10} {seconds_taken:>8}  {values}"
                     + (f"\n{'':>8}{t['reason']}" if t["reason"] else ""))
    best = result["best"]
    if best:
        lines.append(f"  best:   trial {best['number']}, {result['objective']} {best['value']:.4f}: "
                     + ", ".join(f"{k}={v:.4g}" for k, v in best["values"].items()))
    lines += [f"  mlflow: sweep run {result['parent_run_id']}: trials as child runs; table, best trial and Optuna's "
              "plots under sweep/", "=" * 72]
    return "\n".join(lines)


def cmd_sweep(args) -> int:
    import time

    from flows.sweep import sweep
    from tunegate.config import load_config

    sets = [*args.set, *([f"sweep.trials={args.trials}"] if args.trials else []),
            *([f"sweep.study={args.study}"] if args.study else [])]
    try:
        params = load_config(args.config, sets)
    except ValueError as err:  # a bad space or objective: say so before anything starts
        print(f"tunegate sweep: {err}", file=sys.stderr)
        return 2
    if params.run_name is None:
        params.run_name = f"{params.name}-{datetime.now():%Y%m%d-%H%M%S}"
    run_dir = Path(params.output_dir).resolve() / params.run_name
    start = time.perf_counter()
    state = sweep(params, return_state=True)
    seconds = time.perf_counter() - start
    if state.is_failed():
        print(f"\ntunegate: sweep failed: {state.message}", file=sys.stderr)
    if (run_dir / "sweep.json").exists():
        print(format_sweep(json.loads((run_dir / "sweep.json").read_text()), seconds))
    candidate = run_dir.parent / f"{params.run_name}-best" / "summary.json"
    if candidate.exists():  # the best trial's pipeline run reached its gate
        print(f"The best trial's pipeline run ({candidate.parent.name}):"
              + format_summary(json.loads(candidate.read_text()), seconds, []))
    return 0 if state.is_completed() else 1


def wait_http(url: str, proc, seconds: float) -> None:
    import time
    import urllib.request

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {seconds:.0f}s")


def start_uis(host: str, prefect_port: int, mlflow_port: int, tracking_uri: str, timeout: float = 120) -> list:
    """Start `prefect server` and `mlflow ui` on the local store; return the processes once both answer."""
    import subprocess

    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    prefect = subprocess.Popen([str(bin_dir / "prefect"), "server", "start", "--host", host, "--port",
                                str(prefect_port)], env=env, start_new_session=True)
    mlflow = subprocess.Popen([str(bin_dir / "mlflow"), "ui", "--backend-store-uri", tracking_uri, "--host", host,
                               "--port", str(mlflow_port)], env=env, start_new_session=True)
    procs = [prefect, mlflow]
    try:
        wait_http(f"http://{host}:{prefect_port}/api/health", prefect, timeout)
        wait_http(f"http://{host}:{mlflow_port}/health", mlflow, timeout)
    except BaseException:
        stop_uis(procs)
        raise
    return procs


def stop_uis(procs: list) -> None:
    """Stop each server with its own process group (mlflow ui runs uvicorn workers under it)."""
    import signal
    import subprocess

    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def cmd_ui(args) -> int:
    import signal
    import time

    from tunegate.config import embedded, load_config, sqlite_db

    tracking_uri = args.tracking_uri or load_config(args.config).tracking.tracking_uri
    if not embedded(tracking_uri):  # team mode: the servers already run (make team-up)
        print(f"tunegate ui starts the UIs of the embedded store; {tracking_uri} is a tracking server: open it in a "
              "browser, and the Prefect UI at $PREFECT_API_URL without /api", file=sys.stderr)
        return 2
    sqlite_db(tracking_uri).parent.mkdir(parents=True, exist_ok=True)
    procs = start_uis(args.host, args.prefect_port, args.mlflow_port, tracking_uri)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill` stops both servers too, like Ctrl-C
    api = f"http://{args.host}:{args.prefect_port}/api"
    print(f"\nPrefect UI: http://{args.host}:{args.prefect_port}\nMLflow UI:  http://{args.host}:{args.mlflow_port}"
          f"  ({tracking_uri})\nStart the deployments in another shell:\n"
          f"  PREFECT_API_URL={api} tunegate serve\nCtrl-C stops both servers.", flush=True)
    try:
        while all(p.poll() is None for p in procs):
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        stop_uis(procs)
    return 0


def add_config_args(cmd) -> None:
    """--config and --set, for the commands that read the tracking settings from a config."""
    cmd.add_argument("--config", default="configs/demo.yaml", help="config whose tracking settings to use")
    cmd.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tunegate", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the gated fine-tuning pipeline")
    run.add_argument("config", help="YAML config, e.g. configs/demo.yaml")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    run.add_argument("--local-judge", metavar="MODEL", help="judge with MODEL served on this machine for the run "
                     "(tunegate serve-model --model-dir, structured outputs), e.g. bundled:smollm2-135m-instruct")
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
        else:
            cmd.add_argument("--to", metavar="VERSION", help="roll back to this version instead of `previous`")
        cmd.add_argument("--reason", help="why; recorded on the version with your user name and the time")
        add_config_args(cmd)
        cmd.set_defaults(func=func)
    srv = sub.add_parser("serve", help="serve the finetune, retrain-from-feedback, monitor-serving and live-guard "
                         "deployments "
                         "(no worker needed)")
    srv.add_argument("--config", default="configs/demo.yaml", help="the form's default parameters")
    srv.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    srv.add_argument("--cron", default="0 3 * * *", help="retrain-from-feedback schedule (default: nightly 03:00)")
    srv.add_argument("--timezone", default="Europe/Berlin", help="timezone of the cron schedule")
    srv.add_argument("--paused", action="store_true", help="register the schedules inactive: runs start only on "
                     "demand (the UI's Run button, the API) until a schedule is switched on in the UI")
    srv.add_argument("--feedback-logs", help="glob of feedback JSONL logs (default: none; feedback comes from the "
                     "served traces)")
    srv.add_argument("--watermark-file", default="outputs/feedback/watermark.json")
    srv.add_argument("--feedback-work-dir", default="outputs/feedback")
    srv.set_defaults(func=cmd_serve)
    sm = sub.add_parser("serve-model", help="OpenAI-compatible server on models:/NAME@champion; follows the alias")
    add_config_args(sm)
    sm.add_argument("--host", default="127.0.0.1")
    sm.add_argument("--port", type=int, default=8000)
    sm.add_argument("--poll-seconds", type=float, default=2.0, help="how often the champion alias is read")
    sm.add_argument("--served-name", help="the `model` clients ask for (default: the registered model name)")
    sm.add_argument("--max-tokens", type=int, default=256, help="answer length when a request sets none")
    sm.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    sm.add_argument("--model-dir", metavar="MODEL", help="serve this checkpoint (a folder, a Hugging Face id or "
                    "bundled:smollm2-135m-instruct) as it is instead of the champion, e.g. as the pairwise judge; no "
                    "registry, no tracing; --served-name defaults to its folder name")
    sm.set_defaults(func=cmd_serve_model)
    tr = sub.add_parser("traffic", help="simulated users: real requests to serve-model, ratings via /v1/feedback")
    tr.add_argument("--url", default="http://127.0.0.1:8000", help="the server of `tunegate serve-model`")
    tr.add_argument("--model", default="tunegate-model", help="served model name")
    tr.add_argument("--requests", type=int, default=60)
    tr.add_argument("--seed", type=int, default=0)
    tr.set_defaults(func=cmd_traffic)
    rt = sub.add_parser("retrain", help="retrain from the feedback since the watermark (or settle a window that "
                        "waits for review)")
    add_config_args(rt)
    rt.add_argument("--approve", metavar="LABEL", help="approve the window waiting for review: its rows train")
    rt.add_argument("--reject", metavar="LABEL", help="reject it: its lines are marked read, never trained")
    rt.add_argument("--note", help="'<reviewer>: <reason>', recorded with the decision")
    rt.set_defaults(func=cmd_retrain)
    fb = sub.add_parser("feedback", help="the feedback loop's state")
    fb_sub = fb.add_subparsers(dest="feedback_command", required=True)
    st = fb_sub.add_parser("status", help="the watermark, a window waiting for review, the feedback since the "
                           "watermark, the production set's version")
    add_config_args(st)
    st.add_argument("--json", action="store_true", help="print the status as JSON")
    st.set_defaults(func=cmd_feedback)
    mon = sub.add_parser("monitor", help="requests, feedback and downvote rates, latency per model version for a "
                         "UTC day of served traffic; logged to MLflow (<experiment>-monitoring)")
    add_config_args(mon)
    mon.add_argument("--day", metavar="YYYY-MM-DD", help="the UTC day to report (default: today so far)")
    mon.set_defaults(func=cmd_monitor)
    pref = sub.add_parser("preferences", help="count reviewers' A/B preferences (MLflow feedback `preference`) on "
                          "a version's side-by-side traces")
    pref.add_argument("version", help="registered model version, e.g. 7")
    add_config_args(pref)
    pref.set_defaults(func=cmd_preferences)
    gd = sub.add_parser("guard", help="live guard once: roll back a champion rated significantly worse than the "
                        "previous version; promote or discard a canary (serve.canary)")
    add_config_args(gd)
    gd.set_defaults(func=cmd_guard)
    ui = sub.add_parser("ui", help="start the Prefect server and the MLflow UI on the local store")
    ui.add_argument("--config", default="configs/demo.yaml", help="read the MLflow tracking URI from this config")
    ui.add_argument("--tracking-uri", help="MLflow store (default: the config's tracking.tracking_uri)")
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--prefect-port", type=int, default=4200)
    ui.add_argument("--mlflow-port", type=int, default=5000)
    ui.set_defaults(func=cmd_ui)
    qz = sub.add_parser("quantize", help="a quantized variant of a version, gated against the champion and "
                        "promoted only when nothing regresses (flows/quantize.py)")
    qz.add_argument("version", help="registered model version to quantize, e.g. 3")
    qz.add_argument("--method", choices=["int8", "int8-dynamic", "gguf"], default="int8",
                    help="int8: weight-only int8 (torchao); int8-dynamic: int8 weights and activations; gguf: "
                    "refused, with the reason and the manual route")
    add_config_args(qz)
    qz.set_defaults(func=cmd_quantize)
    sw = sub.add_parser("sweep", help="hyperparameter search: Optuna trials over sweep.space, then the best trial's "
                        "pipeline run, gated like any run")
    sw.add_argument("config", help="YAML config with a sweep section (or its defaults), e.g. configs/demo.yaml")
    sw.add_argument("--trials", type=positive_int, help="trials in the study (default: sweep.trials)")
    sw.add_argument("--study", help="Optuna study name; an existing study is resumed (default: the run name)")
    sw.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    sw.set_defaults(func=cmd_sweep)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
