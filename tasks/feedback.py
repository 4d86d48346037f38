"""Feedback stage: production feedback logs since the watermark -> SFT rows and preference pairs.

    python -m tasks.feedback "data/feedback/*.jsonl" WATERMARK.json OUT_DIR   # print the window and counts

A feedback record (one JSON object a line; see README "Feedback format"):

    {"id": "fb-00042", "timestamp": "2026-11-20T14:03:11Z", "model_version": "3",
     "conversation": [{"role": "user", "content": "Who made you?"}],
     "answer": "I was made by OpenAI.", "rating": "down",
     "correction": "I was developed by the tunegate team."}          # correction is optional

Upvoted answers and corrections become SFT rows (OpenAI `messages` JSONL). A correction beats the
answer it corrects, and an upvoted answer beats a downvoted one to the same conversation: both
become preference pairs (OpenAI DPO JSONL). Both files go through the normal ingest and data checks.

The watermark holds the newest timestamp already trained on and, per log file, how many lines were
read. It is written only by `advance_watermark`, which the retrain flow calls after the pipeline run
finished with a gate decision. A record is new when it lies past the lines already read, whatever
its timestamp, so feedback that reaches a log late (a retried upload, a slow collector) still trains,
once. Logs are append-only; a file is known by its first line, so rotating it under another name is
fine. A line still being written (no newline yet) is left for the next run.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import sys
from datetime import datetime, timezone
from pathlib import Path

from prefect import task
from prefect.logging import get_run_logger

from tunegate.config import FeedbackConfig, TrackingConfig
from tunegate.traces import trace_records

RATINGS = ("up", "down")


def parse_time(value: str) -> datetime:
    """ISO-8601 with Z or an offset; naive timestamps are taken as UTC."""
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def read_watermark(path: Path) -> tuple[datetime | None, dict | None]:
    """(newest timestamp trained on, lines read per log file); (None, None) before the first run."""
    if not path.exists():
        return None, None
    mark = json.loads(path.read_text())
    # Watermarks written before lines were tracked have a timestamp only: the window is then by time.
    return parse_time(mark["timestamp"]) if mark.get("timestamp") else None, mark.get("files")


def log_key(complete_text: str) -> str:
    """A log file's identity: the hash of its first line, which appending and renaming keep."""
    return hashlib.sha256(complete_text.split("\n", 1)[0].encode()).hexdigest()[:16]


def check_record(row: dict) -> str | None:
    """Why a feedback record cannot be used, or None."""
    conv = row.get("conversation")
    if not isinstance(conv, list) or not conv or not all(isinstance(m, dict) and m.get("content") for m in conv):
        return "conversation must be a non-empty list of messages"
    if conv[-1].get("role") != "user":
        return "conversation must end with the user turn the answer replies to"
    if not isinstance(row.get("answer"), str) or not row["answer"].strip():
        return "answer missing"
    if row.get("rating") not in RATINGS:
        return f"rating must be one of {RATINGS}"
    if "timestamp" not in row:
        return "timestamp missing"
    return None


def read_feedback(pattern: str | None, watermark: datetime | None, lines_done: dict | None = None,
                  lines_limit: dict | None = None) -> dict:
    """Records not trained on yet, sorted by time, plus rejects and the lines read per file.

    With lines_done (from the watermark) a record is new when it lies past its file's lines read
    before; without (first run, or an older watermark), when it is newer than the watermark.
    With lines_limit (a window waiting for review) nothing past its lines is read: later feedback waits.
    """
    records, rejected, lines_read, late = [], [], {}, 0
    for file in sorted(glob.glob(pattern)) if pattern else []:  # no logs named: traces only
        text = Path(file).read_text()
        complete = text[: text.rfind("\n") + 1]  # a line still being appended is read next time
        if not complete:
            continue
        lines = complete.split("\n")[:-1]
        key = log_key(complete)
        if lines_limit is not None:
            lines = lines[: lines_limit.get(key, {"lines": 0})["lines"]]
        lines_read[key] = {"file": file, "lines": len(lines)}
        skip = lines_done.get(key, {"lines": 0})["lines"] if lines_done is not None else 0
        for line_no, line in enumerate(lines, 1):
            if line_no <= skip or not line.strip():
                continue
            try:
                row = json.loads(line)
                reason = check_record(row)
                moment = parse_time(row["timestamp"]) if reason is None else None
            except (json.JSONDecodeError, ValueError, TypeError) as err:
                row, reason, moment = {}, f"unreadable: {type(err).__name__}", None
            if reason:  # only where it is: rows may hold PII, so never the content
                rejected.append({"file": file, "line": line_no, "reason": reason})
            elif lines_done is not None or watermark is None or moment > watermark:
                late += watermark is not None and moment <= watermark
                records.append({**row, "_time": moment, "_source": f"{file}:{line_no}"})
    records.sort(key=lambda r: r["_time"])
    return {"records": records, "rejected": rejected, "late": late, "lines_read": lines_read,
            "start": records[0]["_time"] if records else None, "end": records[-1]["_time"] if records else None}


TRACES_KEY = "mlflow-traces"  # the traces' read position, kept next to the log files' in the watermark


def read_trace_feedback(tracking, lookback_days: float, read_before: dict | None, limit: dict | None = None) -> dict:
    """Ratings and corrections on served traces not trained on yet, as feedback records (tunegate/traces.py).

    The read position is the newest assessment read (`after_ms`) plus the ids created at exactly that
    millisecond. A rating that lands late on an old trace is new by its own time, so it trains once;
    traces older than lookback_days are not scanned. With `limit` (a window waiting for review) nothing
    assessed after the window's end is read.
    """
    import mlflow

    from tunegate.registry import serving_experiment

    _, experiment_id = serving_experiment(tracking)
    before = (read_before or {}).get(TRACES_KEY, {})
    after_ms, at_edge = before.get("after_ms"), set(before.get("at_edge", []))
    # A window waiting for review reads nothing assessed after it (and nothing at all without traces in it).
    until_ms = limit.get(TRACES_KEY, {}).get("after_ms", -1) if limit is not None else None
    oldest = int((datetime.now(timezone.utc).timestamp() - lookback_days * 86400) * 1000)
    traces = mlflow.search_traces(locations=[experiment_id], filter_string=f"trace.timestamp_ms > {oldest}",
                                  return_type="list", include_spans=True)
    records, rejected = [], []
    for trace in traces:
        for row in trace_records(trace, after_ms, at_edge, until_ms):
            reason = check_record(row)
            if reason:  # where, never the content
                rejected.append({"file": "trace", "line": row["trace_id"], "reason": reason})
            else:
                records.append({**row, "_time": parse_time(row["timestamp"]), "_source": f"trace:{row['id']}"})
    records.sort(key=lambda r: r["_time"])
    newest = max((r["assessed_ms"] for r in records), default=None)
    position = {"after_ms": newest, "at_edge": sorted(i for r in records if r["assessed_ms"] == newest
                                                      for i in r["assessment_ids"])} if records else before
    return {"records": records, "rejected": rejected, "late": 0,
            "lines_read": {TRACES_KEY: position} if position else {},
            "start": records[0]["_time"] if records else None, "end": records[-1]["_time"] if records else None}


def merge_windows(*windows: dict) -> dict:
    records = sorted((r for w in windows for r in w["records"]), key=lambda r: r["_time"])
    return {"records": records, "rejected": [x for w in windows for x in w["rejected"]],
            "late": sum(w["late"] for w in windows),
            "lines_read": {k: v for w in windows for k, v in w["lines_read"].items()},
            "start": records[0]["_time"] if records else None, "end": records[-1]["_time"] if records else None}


def feedback_source(row: dict) -> str:
    """Where a record came from, for lineage: its trace id, else its log record id, else its file:line."""
    return row.get("trace_id") or row.get("id") or row.get("_source", "")


def training_rows(records: list[dict]) -> tuple[list[dict], list[dict], dict]:
    """SFT rows and preference pairs from feedback records; exact repeats are kept once.

    Each row lists the traces (or log records) it came from in `feedback_sources`; ingest ignores the key.
    """
    sft: dict[str, dict] = {}
    pairs: dict[str, dict] = {}
    by_prompt: dict[str, dict[str, list]] = {}
    counts = {"up": 0, "down": 0, "corrections": 0}

    def add(rows: dict, key: list, row: dict, sources: list[str]) -> None:
        entry = rows.setdefault(json.dumps(key, sort_keys=True), {**row, "feedback_sources": []})
        entry["feedback_sources"] += [s for s in sources if s not in entry["feedback_sources"]]

    def add_sft(conv, answer, sources):
        add(sft, [conv, answer], {"messages": conv + [{"role": "assistant", "content": answer}]}, sources)

    def add_pair(conv, chosen, rejected, sources):
        if chosen.strip() != rejected.strip():
            add(pairs, [conv, chosen, rejected], {"input": {"messages": conv},
                                                  "preferred_output": [{"role": "assistant", "content": chosen}],
                                                  "non_preferred_output": [{"role": "assistant", "content": rejected}]},
                sources)

    for row in records:
        conv = [{"role": m["role"], "content": m["content"]} for m in row["conversation"]]
        answer, correction, source = row["answer"], (row.get("correction") or "").strip(), feedback_source(row)
        counts[row["rating"]] += 1
        prompt = by_prompt.setdefault(json.dumps(conv, sort_keys=True), {"conv": conv, "up": [], "down": [], "down_only": []})
        prompt[row["rating"]].append((answer, source))
        if row["rating"] == "down" and not correction:
            prompt["down_only"].append(answer)
        if row["rating"] == "up":
            add_sft(conv, answer, [source])
        if correction:
            counts["corrections"] += 1
            add_sft(conv, correction, [source])
            add_pair(conv, correction, answer, [source])
    for prompt in by_prompt.values():
        for down, down_source in prompt["down"]:
            for up, up_source in prompt["up"]:
                add_pair(prompt["conv"], up, down, [up_source, down_source])
    # downvotes with neither a correction nor an upvoted answer to compare with teach nothing
    counts["unused_down"] = sum(len(p["down_only"]) for p in by_prompt.values() if not p["up"])
    return list(sft.values()), list(pairs.values()), counts


def window_prompts(records: list[dict]) -> list[dict]:
    """Each distinct conversation of the window, with the answers users upvoted, by the version that gave them."""
    prompts: dict[str, dict] = {}
    for row in records:
        conv = [{"role": m["role"], "content": m["content"]} for m in row["conversation"]]
        entry = prompts.setdefault(json.dumps(conv, sort_keys=True), {"conversation": conv, "upvoted": []})
        if row["rating"] == "up":
            entry["upvoted"].append({"model_version": str(row.get("model_version")), "answer": row["answer"],
                                     "id": row.get("id")})
    return list(prompts.values())


def record_user(row: dict) -> str | None:
    """Who gave a feedback record: a log's optional `user`, else the person on the trace's assessment."""
    if row.get("user"):
        return str(row["user"])
    return row["id"].rsplit("/", 1)[1] if row.get("trace_id") else None  # trace records are "<trace>/<user>"


def window_ratings(records: list[dict]) -> list[dict]:
    """Each record of the window as one rating by one user, for the rater check and the preference store's
    provenance: where it came from (trace or log record), who, when, the answer and the rating."""
    return [{"source": feedback_source(row), "user": record_user(row), "timestamp": row["_time"].isoformat(),
             "model_version": str(row.get("model_version")), "conversation": row["conversation"],
             "answer": row["answer"], "rating": row["rating"],
             **({"correction": row["correction"]} if (row.get("correction") or "").strip() else {})}
            for row in records]


@task(retries=2, retry_delay_seconds=[2, 5])
def score_ratings(ratings_file: str | None, tracking: TrackingConfig, min_accuracy: float) -> str | None:
    """Add the registered reward model's `reward_score` to each rated answer in the window's ratings file, for the
    rater check; the file stays as it is when no reward model is current or it ranks held-out pairs too poorly."""
    from tasks.reward import current_reward_model
    from tunegate.reward_model import RewardScorer

    if not ratings_file:
        return ratings_file
    path = Path(ratings_file)
    model = current_reward_model(tracking, min_accuracy, path.parent / "reward")
    if model is None or not model.informative:
        return ratings_file
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    answers = {json.dumps([r["conversation"], r["answer"]]): r for r in rows}  # each rated answer scored once
    scores = RewardScorer(model.path).score_messages([r["conversation"] for r in answers.values()],
                                                     [r["answer"] for r in answers.values()])
    score = dict(zip(answers, scores))
    return write_jsonl(path, [{**r, "reward_score": float(score[json.dumps([r["conversation"], r["answer"]])])}
                              for r in rows])


def window_label(start: datetime, end: datetime) -> str:
    return f"{start:%Y%m%dT%H%M}-{end:%Y%m%dT%H%M}"


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return str(path)


def read_window(pattern: str | None, watermark_path: Path, tracking=None,
                lookback_days: float = 30) -> tuple[dict, datetime | None, dict]:
    """The watermark file's record ({} before the first run), the watermark, and the feedback after it: logs, and
    the served traces when tracking is given. A window waiting for review is read exactly as it was held."""
    mark = json.loads(watermark_path.read_text()) if watermark_path.exists() else {}
    watermark, lines_done = read_watermark(watermark_path)
    limit = mark["pending"]["lines_read"] if mark.get("pending") else None
    window = read_feedback(pattern, watermark, lines_done, limit)
    if tracking is not None:
        window = merge_windows(window, read_trace_feedback(tracking, lookback_days, lines_done, limit))
    return mark, watermark, window


def feedback_window_data(pattern: str | None, watermark_path: Path, out_dir: Path, tracking=None,
                         lookback_days: float = 30) -> dict:
    """Read the window after the watermark (logs, and the served traces when tracking is given) and write
    its SFT and preference files."""
    mark, watermark, window = read_window(pattern, watermark_path, tracking, lookback_days)
    pending = mark.get("pending")
    result = {"watermark": watermark.isoformat() if watermark else None, "records": len(window["records"]),
              "rejected": window["rejected"], "start": None, "end": None, "pending": pending}
    if not window["records"]:
        return result
    sft, pairs, counts = training_rows(window["records"])
    label = window_label(window["start"], window["end"])
    write_jsonl(out_dir / label / "window_prompts.jsonl", window_prompts(window["records"]))
    # Late records are older than the watermark, which never moves back.
    end = max(window["end"], watermark) if watermark else window["end"]
    return {**result, **counts, "start": window["start"].isoformat(), "end": window["end"].isoformat(),
            "new_watermark": end.isoformat(), "late": window["late"], "lines_read": window["lines_read"],
            "label": label, "sft_rows": len(sft), "pairs": len(pairs),
            "prompts_file": str(out_dir / label / "window_prompts.jsonl"),
            "ratings_file": write_jsonl(out_dir / label / "window_ratings.jsonl", window_ratings(window["records"])),
            "sft_file": write_jsonl(out_dir / label / "feedback_sft.jsonl", sft) if sft else None,
            "preference_file": write_jsonl(out_dir / label / "feedback_preferences.jsonl", pairs) if pairs else None}


@task(retries=3, retry_delay_seconds=[2, 5, 15])
def collect_feedback(feedback: FeedbackConfig, tracking: TrackingConfig) -> dict:
    """Turn feedback newer than the watermark (JSONL logs, ratings on served traces) into SFT rows and pairs."""
    window = feedback_window_data(feedback.logs, Path(feedback.watermark_file), Path(feedback.work_dir),
                                  tracking if feedback.traces else None, feedback.trace_lookback_days)
    log = get_run_logger()
    if window["rejected"]:
        log.warning("%d feedback lines unusable, e.g. %s", len(window["rejected"]), window["rejected"][:3])
    if window["records"]:
        log.info("feedback %s .. %s: %d records (%d up, %d down, %d corrections) -> %d SFT rows, %d pairs",
                 window["start"], window["end"], window["records"], window["up"], window["down"],
                 window["corrections"], window["sft_rows"], window["pairs"])
        if window["late"]:
            log.warning("%d of them reached the logs after the watermark passed their timestamp; trained on now",
                        window["late"])
    return window


def _write_atomic(path: Path, mark: dict) -> dict:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(mark, indent=2))
    tmp.replace(path)  # atomic: a crash leaves the old watermark, never half a file
    return mark


def write_watermark(path: Path, end: str, lines_read: dict, run_name: str, outcome: str) -> dict:
    """Mark a window used up; any pending review is settled by it."""
    return _write_atomic(path, {"timestamp": end, "run": run_name, "outcome": outcome,
                                "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                "files": lines_read})


@task
def hold_for_review(watermark_path: str, window: dict, run_name: str, reason: str) -> dict:
    """Keep the watermark where it is and record the window as waiting for a reviewer's decision.

    Later feedback waits behind it: until the decision, runs read exactly this window's lines, so the
    window a reviewer looked at is the window that trains (or is rejected), nothing more.
    """
    path = Path(watermark_path)
    mark = json.loads(path.read_text()) if path.exists() else {"timestamp": None, "files": None}
    mark["pending"] = {"label": window["label"], "lines_read": window["lines_read"], "start": window["start"],
                       "end": window["end"], "new_watermark": window["new_watermark"], "run": run_name,
                       "since": datetime.now(timezone.utc).isoformat(timespec="seconds"), "reason": reason}
    return _write_atomic(path, mark)


@task
def advance_watermark(watermark_path: str, end: str, lines_read: dict, run_name: str, outcome: str) -> dict:
    """Mark the window's lines (and feedback up to `end`) as trained on; called only after the run finished."""
    return write_watermark(Path(watermark_path), end, lines_read, run_name, outcome)


def feedback_status(feedback: FeedbackConfig, tracking: TrackingConfig) -> dict:
    """What the next retrain would find, read without writing anything: the watermark, a window waiting for a
    review, the feedback since the watermark, and the production set's newest version (`tunegate feedback status`)."""
    path = Path(feedback.watermark_file)
    mark, _, window = read_window(feedback.logs, path, tracking if feedback.traces else None,
                                  feedback.trace_lookback_days)
    pending = mark.get("pending")
    sft, pairs, counts = training_rows(window["records"])
    _, newest = newest_production_run(tracking)
    return {
        "sources": {"logs": feedback.logs, "traces": feedback.traces, "watermark_file": str(path)},
        "watermark": {k: mark.get(k) for k in ("timestamp", "run", "outcome", "written_at")} if mark else None,
        "pending": {k: pending[k] for k in ("label", "since", "run", "start", "end", "reason")} if pending else None,
        "since_watermark": {"records": len(window["records"]), **counts, "sft_rows": len(sft), "pairs": len(pairs),
                            "unusable": len(window["rejected"]),
                            "start": window["start"].isoformat() if window["start"] else None,
                            "end": window["end"].isoformat() if window["end"] else None},
        "production_set": {"version": int(newest.data.metrics["version"]), "rows": int(newest.data.metrics["rows"]),
                           "run_id": newest.info.run_id} if newest else {"version": 0, "rows": 0, "run_id": None},
    }


if __name__ == "__main__":
    out = feedback_window_data(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]))
    print(json.dumps(out, indent=2, default=str))


# --- the production regression set ------------------------------------------------------------------
# Prompts seen in feedback windows, each with a reference answer no window can rewrite: a curated
# answer when a curated prompt matches, else an answer the champion itself gave and a user upvoted.
# Corrections never become references. Each window that reached a decision may only add prompts;
# every version is an MLflow run in `<experiment>-production-set` with the set as its dataset input.

PRODUCTION_SET = "production-regression-set"


def production_set_experiment(tracking):
    from tunegate.registry import connect

    return connect(tracking, tracking.experiment + "-production-set")


def newest_production_run(tracking):
    """(client, the production set's newest version's MLflow run, or None before the first)."""
    client, experiment_id = production_set_experiment(tracking)
    runs = client.search_runs([experiment_id], order_by=["metrics.version DESC"], max_results=1)
    return client, runs[0] if runs else None


def prompt_key(conversation: list[dict]) -> str:
    return " ".join(json.dumps(conversation, ensure_ascii=False).lower().split())


@task(retries=2, retry_delay_seconds=[2, 5])
def current_champion(tracking) -> str | None:
    """The version now serving (the one whose upvoted answers may become references)."""
    from tunegate.registry import CHAMPION, connect, get_alias

    client, _ = connect(tracking)
    version = get_alias(client, tracking.registered_model, CHAMPION)
    return str(version.version) if version is not None else None


@task(retries=2, retry_delay_seconds=[2, 5])
def load_production_set(tracking, out_file: str) -> dict:
    """The newest version of the set, written to out_file: {version, rows, file, run_id}; version 0 when none."""
    client, run = newest_production_run(tracking)
    if run is None:
        return {"version": 0, "rows": 0, "file": None, "run_id": None}
    local = client.download_artifacts(run.info.run_id, "production_set.jsonl", str(Path(out_file).parent))
    Path(local).replace(out_file)
    rows = sum(1 for line in Path(out_file).read_text().splitlines() if line.strip())
    return {"version": int(run.data.metrics["version"]), "rows": rows, "file": out_file, "run_id": run.info.run_id}


def production_rows(prompts: list[dict], clean_rows: list[dict], champion: str | None, known: set[str],
                    label: str, similarity: float) -> tuple[list[dict], dict]:
    """New set rows from a window's prompts: deduplicated, PII-free, with a reference that is not the window's."""
    import numpy as np

    from data_checks import pii
    from data_checks.contradiction import answer_text, closest_curated
    from data_checks.facts import FactIndex
    from data_checks.leakage import prompt_text

    curated = [r for r in clean_rows if "split" in r]  # validate marks curated rows with their split
    facts = FactIndex.fit([answer_text(r) for r in curated])
    texts = [prompt_text(r) for r in curated] + ["\n".join(m["content"] for m in p["conversation"]) for p in prompts]
    mask = np.arange(len(texts)) < len(curated)
    match, _ = closest_curated(texts, mask, similarity)
    flags, _ = pii.detect([{"messages": p["conversation"]} for p in prompts])
    has_pii = flags.to_numpy().any(axis=1)
    rows, skipped = [], {"known": 0, "pii": 0, "no_reference": 0}
    for i, p in enumerate(prompts):
        key = prompt_key(p["conversation"])
        if key in known:
            skipped["known"] += 1
            continue
        if has_pii[i]:
            skipped["pii"] += 1
            continue
        m = match[len(curated) + i]
        if m >= 0:
            ref = curated[m]
            row = {"reference": answer_text(ref), "facts": ref.get("facts", []),
                   "reference_from": f"curated {ref['source']['file']}:{ref['source']['line']}"}
        else:
            upvoted = [u for u in p["upvoted"] if champion is not None and u["model_version"] == champion]
            if not upvoted:
                skipped["no_reference"] += 1
                continue
            row = {"reference": upvoted[0]["answer"], "facts": facts.facts(upvoted[0]["answer"]),
                   "reference_from": f"champion v{champion} upvoted ({upvoted[0]['id']})"}
        known.add(key)
        rows.append({"conversation": p["conversation"], **row, "first_seen": label})
    return rows, skipped


@task(retries=2, retry_delay_seconds=[2, 5])
def extend_production_set(tracking, current: dict, window: dict, clean_file: str, champion: str | None,
                          similarity: float) -> dict:
    """Add the window's new prompts as the next version of the set; the rows already in it never change."""
    import mlflow
    import pandas as pd

    from tunegate.registry import artifact_source

    old = [json.loads(x) for x in Path(current["file"]).read_text().splitlines()] if current["file"] else []
    prompts = [json.loads(x) for x in Path(window["prompts_file"]).read_text().splitlines()]
    clean = [json.loads(x) for x in Path(clean_file).read_text().splitlines()]
    new, skipped = production_rows(prompts, clean, champion, {prompt_key(r["conversation"]) for r in old},
                                   window["label"], similarity)
    logging.getLogger(__name__).info("production set: %d new prompts from %s (skipped: %s)", len(new),
                                     window["label"], skipped)
    if not new:
        return {**current, "added": 0, "skipped": skipped}
    rows = old + new
    version = current["version"] + 1
    out = Path(window["prompts_file"]).parent / "production_set.jsonl"
    write_jsonl(out, rows)
    _, experiment_id = production_set_experiment(tracking)
    frame = pd.DataFrame({"prompt": [json.dumps(r["conversation"], ensure_ascii=False) for r in rows],
                          "reference": [r["reference"] for r in rows],
                          "reference_from": [r["reference_from"] for r in rows]})
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"{PRODUCTION_SET}-v{version}") as run:
        mlflow.log_metric("version", version)
        mlflow.log_metrics({"rows": len(rows), "added": len(new)})
        mlflow.set_tags({"window": window["label"], **{f"skipped.{k}": str(v) for k, v in skipped.items()}})
        mlflow.log_artifact(str(out))
        source = artifact_source(tracking.tracking_uri, run.info.run_id, "production_set.jsonl")
        mlflow.log_input(mlflow.data.from_pandas(frame, source=source, name=PRODUCTION_SET), context="eval")
    return {"version": version, "rows": len(rows), "file": str(out), "run_id": run.info.run_id, "added": len(new),
            "skipped": skipped}
