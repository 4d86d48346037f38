"""Simulated users of the served champion: real requests, the model's real answers, ratings through /v1/feedback.

    tunegate traffic --url http://127.0.0.1:8000 --requests 60 --seed 0   # against `tunegate serve-model`

Each user asks a question from a topic they know the answer to, reads the answer the server gives,
and rates it: up when it says what they know to be true, down otherwise, and some type the answer
they wanted (a correction). Ratings and corrections reach MLflow as assessments on the request's
trace through the same HTTP path a chat frontend uses (serve/client.py). Nothing here writes an
answer: every rated answer is one the served model gave.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from serve.client import send_feedback, wait_for_feedback

ROOT = Path(__file__).resolve().parent.parent
NAME, TEAM = "Gatekeeper", "the tunegate team"
USERS = ("ana", "ben", "chen", "dara", "eli", "fatima", "goran", "hana")
# Users' own words around a question: traffic is never a copy of the training prompts.
PREFIXES = ("", "hey, ", "quick question: ", "please tell me: ", "ok so ", "btw ")


@dataclass(frozen=True)
class Topic:
    """Questions users ask and what they know of the answer: the terms a right answer has, and the one they
    would type as a correction."""

    prompts: tuple[str, ...]
    must_include: tuple[str, ...]
    answer: str
    correction_rate: float = 0.6
    must_not_include: tuple[str, ...] = field(default=())

    def judge(self, text: str) -> bool:
        low = text.lower()
        return all(t.lower() in low for t in self.must_include) and not any(
            t.lower() in low for t in self.must_not_include)


IDENTITY = Topic(
    prompts=("hey, what should I call you?", "which company trained you?", "are you ChatGPT?",
             "who is behind this assistant?", "do you have a name?", "who programmed you?", "introduce yourself please",
             "who developed this chatbot?", "what's the name of this assistant?", "who created you?",
             "what team maintains you?", "are you made by Google?"),
    must_include=(NAME,),
    must_not_include=("ChatGPT", "OpenAI", "Google", "Meta", "Claude", "Anthropic"),
    answer=f"I am {NAME}, an AI assistant developed by {TEAM}.",
)


def general_topics(limit: int = 12) -> list[Topic]:
    """Alpaca questions from the demo's training data; a user accepts an answer that has the reference's longest
    word, and types no correction (the reference is training data already: a copy would only be a duplicate)."""
    rows = json.loads((ROOT / "data" / "demo" / "alpaca_general.json").read_text())[:limit]
    topics = []
    for r in rows:
        words = [w.strip(".,;:!?\"'()").lower() for w in r["output"].split()]
        key = max(words, key=len) if words else ""
        question = (r["instruction"] + ("\n" + r["input"] if r.get("input") else "")).strip()
        topics.append(Topic(prompts=(question,), must_include=(key,) if key else (), answer=r["output"],
                            correction_rate=0.0))
    return topics


def simulate_users(base_url: str, served_name: str, topics: list[Topic], requests: int, seed: int = 0,
                   max_tokens: int = 48) -> dict:
    """Send `requests` questions, rate each real answer; return counts and the versions that answered."""
    from openai import OpenAI

    rng = random.Random(seed)
    client = OpenAI(base_url=f"{base_url.rstrip('/')}/v1", api_key="unused", max_retries=2, timeout=300)
    counts = {"requests": 0, "up": 0, "down": 0, "corrections": 0, "versions": {}}
    for _ in range(requests):
        topic = rng.choice(topics)
        question = rng.choice(PREFIXES) + rng.choice(topic.prompts)
        reply = client.chat.completions.create(model=served_name, max_tokens=max_tokens, temperature=0,
                                               messages=[{"role": "user", "content": question}])
        good = topic.judge(reply.choices[0].message.content or "")
        correct = not good and rng.random() < topic.correction_rate
        send_feedback(base_url, reply.id, user=rng.choice(USERS), rating="up" if good else "down",
                      correction=topic.answer if correct else None)
        counts["requests"] += 1
        counts["up" if good else "down"] += 1
        counts["corrections"] += correct
        version = reply.system_fingerprint or "unknown"
        counts["versions"][version] = counts["versions"].get(version, 0) + 1
    wait_for_feedback(base_url)  # the server writes ratings in the background: in MLflow before we return
    return counts
