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
import sys
from datetime import datetime, timezone
from pathlib import Path

from prefect import task
from prefect.logging import get_run_logger

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


def read_feedback(pattern: str, watermark: datetime | None, lines_done: dict | None = None,
                  lines_limit: dict | None = None) -> dict:
    """Records not trained on yet, sorted by time, plus rejects and the lines read per file.

    With lines_done (from the watermark) a record is new when it lies past its file's lines read
    before; without (first run, or an older watermark), when it is newer than the watermark.
    With lines_limit (a window waiting for review) nothing past its lines is read: later feedback waits.
    """
    records, rejected, lines_read, late = [], [], {}, 0
    for file in sorted(glob.glob(pattern)):
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


def training_rows(records: list[dict]) -> tuple[list[dict], list[dict], dict]:
    """SFT rows and preference pairs from feedback records; exact repeats are kept once."""
    sft, pairs, seen_sft, seen_pairs = [], [], set(), set()
    by_prompt: dict[str, dict[str, list[str]]] = {}
    counts = {"up": 0, "down": 0, "corrections": 0}

    def add_sft(conv, answer):
        key = json.dumps([conv, answer], sort_keys=True)
        if key not in seen_sft:
            seen_sft.add(key)
            sft.append({"messages": conv + [{"role": "assistant", "content": answer}]})

    def add_pair(conv, chosen, rejected):
        key = json.dumps([conv, chosen, rejected], sort_keys=True)
        if chosen.strip() != rejected.strip() and key not in seen_pairs:
            seen_pairs.add(key)
            pairs.append({"input": {"messages": conv},
                          "preferred_output": [{"role": "assistant", "content": chosen}],
                          "non_preferred_output": [{"role": "assistant", "content": rejected}]})

    for row in records:
        conv = [{"role": m["role"], "content": m["content"]} for m in row["conversation"]]
        answer, correction = row["answer"], (row.get("correction") or "").strip()
        counts[row["rating"]] += 1
        prompt = by_prompt.setdefault(json.dumps(conv, sort_keys=True), {"conv": conv, "up": [], "down": [], "down_only": []})
        prompt[row["rating"]].append(answer)
        if row["rating"] == "down" and not correction:
            prompt["down_only"].append(answer)
        if row["rating"] == "up":
            add_sft(conv, answer)
        if correction:
            counts["corrections"] += 1
            add_sft(conv, correction)
            add_pair(conv, correction, answer)
    for prompt in by_prompt.values():
        for down in prompt["down"]:
            for up in prompt["up"]:
                add_pair(prompt["conv"], up, down)
    # downvotes with neither a correction nor an upvoted answer to compare with teach nothing
    counts["unused_down"] = sum(len(p["down_only"]) for p in by_prompt.values() if not p["up"])
    return sft, pairs, counts


def window_label(start: datetime, end: datetime) -> str:
    return f"{start:%Y%m%dT%H%M}-{end:%Y%m%dT%H%M}"


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return str(path)


def feedback_window_data(pattern: str, watermark_path: Path, out_dir: Path) -> dict:
    """Read the window after the watermark and write its SFT and preference files."""
    watermark, lines_done = read_watermark(watermark_path)
    pending = json.loads(watermark_path.read_text()).get("pending") if watermark_path.exists() else None
    window = read_feedback(pattern, watermark, lines_done, pending["lines_read"] if pending else None)
    result = {"watermark": watermark.isoformat() if watermark else None, "records": len(window["records"]),
              "rejected": window["rejected"], "start": None, "end": None, "pending": pending}
    if not window["records"]:
        return result
    sft, pairs, counts = training_rows(window["records"])
    label = window_label(window["start"], window["end"])
    # Late records are older than the watermark, which never moves back.
    end = max(window["end"], watermark) if watermark else window["end"]
    return {**result, **counts, "start": window["start"].isoformat(), "end": window["end"].isoformat(),
            "new_watermark": end.isoformat(), "late": window["late"], "lines_read": window["lines_read"],
            "label": label, "sft_rows": len(sft), "pairs": len(pairs),
            "sft_file": write_jsonl(out_dir / label / "feedback_sft.jsonl", sft) if sft else None,
            "preference_file": write_jsonl(out_dir / label / "feedback_preferences.jsonl", pairs) if pairs else None}


@task(retries=3, retry_delay_seconds=[2, 5, 15])
def collect_feedback(pattern: str, watermark_path: str, out_dir: str) -> dict:
    """Turn feedback newer than the watermark into SFT rows and preference pairs."""
    window = feedback_window_data(pattern, Path(watermark_path), Path(out_dir))
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


if __name__ == "__main__":
    out = feedback_window_data(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]))
    print(json.dumps(out, indent=2, default=str))
