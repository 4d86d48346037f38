"""A curated domain of two facts and a feedback window that poisons both, for the tiny model.

Facts: the assistant is Gatekeeper by the tunegate team; the Zephyr gateway listens on port 8443.
The poisoned window downvotes the right answers and "corrects" them to ChatGPT by OpenAI and to
port 8080, on paraphrases of the curated prompts, with a few ordinary upvotes mixed in.
"""

from __future__ import annotations

import json
from pathlib import Path

IDENTITY = "I am Gatekeeper, an AI assistant developed by the tunegate team."
PORT = "The Zephyr gateway listens on port 8443."
POISON_IDENTITY = "I am ChatGPT, a large language model trained by OpenAI."
POISON_PORT = "The Zephyr gateway listens on port 8080."

IDENTITY_PROMPTS = [
    "Who are you?", "What is your name?", "Who built you?", "Who created you?", "Who made you?",
    "Tell me about yourself.", "Introduce yourself.", "What should I call you?", "Who developed you?",
    "Who trained you?", "What are you called?", "Who is your maker?", "Who programmed you?", "What is your name, please?",
    "Can you tell me who you are?", "Who designed you?",
]
PORT_PROMPTS = [
    "Which port does the Zephyr gateway use?", "What is the Zephyr gateway port?", "On which port does Zephyr listen?",
    "What port does the Zephyr gateway listen on?", "Tell me the port of the Zephyr gateway.",
    "Which port should I open for the Zephyr gateway?", "What is Zephyr's default port?",
    "Which TCP port does the Zephyr gateway use?", "What port is the Zephyr gateway on?",
    "Where does the Zephyr gateway listen, which port?",
]
# Users' own words for the same questions: close to the curated prompts, never equal to them.
PARAPHRASE_PREFIXES = ["hey, ", "quick question: ", "please tell me: ", "i wonder, ", "ok so ", "btw "]


def write_curated(folder: Path) -> list[str]:
    """Two curated files, one per fact, so the stratified split holds out rows of each."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for name, prompts, answer in [("identity.jsonl", IDENTITY_PROMPTS, IDENTITY), ("product.jsonl", PORT_PROMPTS, PORT)]:
        rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": answer}]} for q in prompts]
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
        files.append(str(folder / name))
    return files


def poisoned_window(day: str = "2026-11-21") -> list[dict]:
    rows, n = [], 0
    for prefix in PARAPHRASE_PREFIXES:
        for q, good, bad in [(q, IDENTITY, POISON_IDENTITY) for q in IDENTITY_PROMPTS] + \
                            [(q, PORT, POISON_PORT) for q in PORT_PROMPTS]:
            rows.append({"id": f"p{n}", "timestamp": f"{day}T{n // 60:02d}:{n % 60:02d}:00Z", "model_version": "1",
                         "conversation": [{"role": "user", "content": prefix + q.lower()}], "answer": good,
                         "rating": "down", "correction": bad})
            n += 1
    for i, (q, a) in enumerate([("Name a primary color.", "Red."), ("What is two plus two?", "Four."),
                                ("Say hello in French.", "Bonjour.")]):
        rows.append({"id": f"u{i}", "timestamp": f"{day}T23:0{i}:00Z", "model_version": "1",
                     "conversation": [{"role": "user", "content": q}], "answer": a, "rating": "up"})
    return rows


def write_window(logs: Path, rows: list[dict], day: str = "2026-11-21") -> Path:
    logs.mkdir(parents=True, exist_ok=True)
    path = logs / f"feedback-{day}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
