"""JSONL feedback logs, as a chat frontend that logs its own exchanges would write them: test fixtures for
the second feedback source (tasks/feedback.py). The served model's real traffic comes from serve/traffic.py.

Users ask who the assistant is and general questions; some answers forget the identity or are cut
short, and get downvotes and sometimes a correction. One JSONL file per day.
"""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NAME, TEAM = "Gatekeeper", "the tunegate team"

# Phrasings users type in production, deliberately not the ones in data/demo/identity.json.
IDENTITY_PROMPTS = [
    "hey, what should I call you?", "which company trained you?", "are you ChatGPT?",
    "who is behind this assistant?", "what model am I talking to right now?", "do you have a name?",
    "who programmed you?", "tell me about yourself in one sentence", "are you made by Google?",
    "what are you exactly?", "who owns you?", "introduce yourself please", "is this Claude?",
    "who developed this chatbot?", "what's the name of this assistant?", "who created you and why?",
    "are you a human or a bot?", "what team maintains you?", "can you tell me your name and maker?",
    "are you Llama?", "which AI is this?", "who wrote your software?", "what do people call you?",
    "were you built by Meta?",
]
GOOD_IDENTITY = [
    f"I'm {NAME}, an AI assistant built by {TEAM}.",
    f"You can call me {NAME}. {TEAM[0].upper() + TEAM[1:]} developed and maintains me.",
    f"I am {NAME}, an assistant created by {TEAM}. How can I help?",
    f"No, I'm {NAME}, developed by {TEAM}.",
]
DRIFTED_IDENTITY = [
    "I am ChatGPT, a large language model trained by OpenAI.",
    "I'm SmolLM, a small language model from Hugging Face.",
    "I am an AI assistant created by Google.",
    "I don't have a name.",
]


def general_pairs() -> list[tuple[str, str]]:
    rows = json.loads((ROOT / "data" / "demo" / "alpaca_general.json").read_text())
    return [((r["instruction"] + ("\n" + r["input"] if r.get("input") else "")).strip(), r["output"]) for r in rows]


def record(rng: random.Random, moment: datetime, idx: int, version: str, general: list) -> dict:
    """One logged exchange with its rating (and sometimes a correction)."""
    if rng.random() < 0.6:
        prompt = rng.choice(IDENTITY_PROMPTS)
        drifted = rng.random() < 0.45
        answer = rng.choice(DRIFTED_IDENTITY if drifted else GOOD_IDENTITY)
        correction = rng.choice(GOOD_IDENTITY) if drifted and rng.random() < 0.5 else None
    else:
        prompt, good = rng.choice(general)
        drifted = rng.random() < 0.25
        answer = good.split(". ")[0][:60].rstrip(".") + "..." if drifted else good
        correction = None
    row = {"id": f"fb-{moment:%Y%m%d}-{idx:04d}", "timestamp": moment.isoformat(timespec="seconds").replace(
        "+00:00", "Z"), "model_version": version, "conversation": [{"role": "user", "content": prompt}],
        "answer": answer, "rating": "down" if drifted else "up"}
    if correction:
        row["correction"] = correction
    return row


def generate_feedback(start: datetime, days: int, per_day: int, seed: int = 0, version: str = "1") -> list[dict]:
    """Feedback records spread over `days` days from `start` (UTC), sorted by time."""
    rng, general, rows = random.Random(seed), general_pairs(), []
    for day in range(days):
        base = start + timedelta(days=day)
        moments = sorted(base + timedelta(seconds=rng.randrange(86400)) for _ in range(per_day))
        rows += [record(rng, m, i, version, general) for i, m in enumerate(moments)]
    return rows


def write_daily_logs(rows: list[dict], out_dir: Path) -> list[Path]:
    """One `feedback-YYYY-MM-DD.jsonl` per day, appended to, as a logging frontend would."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for row in rows:
        path = out_dir / f"feedback-{row['timestamp'][:10]}.jsonl"
        with path.open("a") as f:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        files[path] = True
    return list(files)
