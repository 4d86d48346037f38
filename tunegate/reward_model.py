"""The reward model as every stage uses it: one way to turn (prompt, answer) into tokens, scalar scores in batches.

    python -m tunegate.reward_model REWARD_DIR "Who are you?" "I am Gatekeeper."   # score one answer

A reward model folder holds the scalar-head model (a LoRA adapter with its `score` head, or a whole
sequence-classification model) and `reward_model.json` naming its base. Training (tasks/reward.py),
the gate's reward task (tasks/reward_eval.py), the RL reward (tasks/rl.py) and the rater check's
scores (tasks/raters.py) all read text the same way: the prompt rendered with the chat template
(generation prompt added) + the answer + the end-of-turn token, so a score means the same in each.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

META = "reward_model.json"


def check_scalar_head(base_model_path: str, trust_remote_code: bool = False) -> None:
    """Refuse a base model that transformers cannot give a scalar (sequence-classification) head, before any work."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

    config = AutoConfig.from_pretrained(base_model_path, trust_remote_code=trust_remote_code)
    remote = trust_remote_code and "AutoModelForSequenceClassification" in (config.auto_map or {})
    if config.model_type not in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES and not remote:
        raise ValueError(
            f"reward.base_model {base_model_path}: a {config.model_type!r} model has no sequence-classification class "
            "in transformers (AutoModelForSequenceClassification cannot load it), so it cannot carry the reward "
            "model's scalar head. Use a decoder with one (Llama, Qwen2, Mistral, GPT-2, ...), e.g. leave "
            "reward.base_model unset to use the pipeline's base model.")


def render_prompt(tokenizer, messages: list[dict]) -> str:
    """The conversation up to the answer, as the model sees it before answering."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def encode(tokenizer, prompt: str, answer: str) -> list[int]:
    """Token ids of a rendered prompt, the answer and the end-of-turn token: what the scalar head reads."""
    return tokenizer(prompt + answer + tokenizer.eos_token, add_special_tokens=False)["input_ids"]


def unrender_chatml(text: str) -> list[dict] | None:
    """Messages from a prompt rendered with ChatML (SmolLM2, Qwen, the tiny model) ending in the generation
    prompt; None for any other rendering, or one cut at its start."""
    head, sep, tail = text.rpartition("<|im_start|>assistant\n")
    if not sep or tail.strip() or not head.startswith("<|im_start|>"):
        return None
    messages = []
    for turn in head.split("<|im_start|>")[1:]:
        body, end, rest = turn.partition("<|im_end|>")
        role, newline, content = body.partition("\n")
        if not end or not newline or rest.strip() or role not in ("system", "user", "assistant", "tool"):
            return None
        messages.append({"role": role, "content": content})
    return messages or None


class RewardScorer:
    """A trained reward model loaded for scoring (adapters merged), in fp32 on this machine's device."""

    def __init__(self, model_dir: str | Path, max_length: int = 512, batch_size: int = 16):
        import torch
        from transformers import AutoModelForSequenceClassification

        from tunegate.models import load_chat_tokenizer

        self.dir = Path(model_dir)
        meta = json.loads((self.dir / META).read_text())
        self.tokenizer = load_chat_tokenizer(str(self.dir), meta["trust_remote_code"])
        if meta["method"] == "lora":
            from peft import PeftModel

            base = AutoModelForSequenceClassification.from_pretrained(
                meta["base_model_path"], num_labels=1, dtype=torch.float32, trust_remote_code=meta["trust_remote_code"])
            base.config.pad_token_id = self.tokenizer.pad_token_id
            model = PeftModel.from_pretrained(base, str(self.dir)).merge_and_unload()
        else:
            model = AutoModelForSequenceClassification.from_pretrained(str(self.dir), dtype=torch.float32)
        model.config.pad_token_id = self.tokenizer.pad_token_id
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = model.to(self.device).eval()
        self.max_length, self.batch_size = max_length, batch_size

    def score(self, prompts: list[str], answers: list[str]) -> np.ndarray:
        """One scalar per (rendered prompt, answer); a text past max_length keeps its end (the answer)."""
        import torch

        ids = [encode(self.tokenizer, p, a)[-self.max_length:] for p, a in zip(prompts, answers)]
        order = np.argsort([len(x) for x in ids])  # similar lengths together: less padding
        scores = np.empty(len(ids), dtype=np.float64)
        pad = self.tokenizer.pad_token_id
        for start in range(0, len(ids), self.batch_size):
            batch = order[start:start + self.batch_size]
            width = max(len(ids[i]) for i in batch)
            input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):  # right padding, as TRL's collator trains it
                input_ids[row, :len(ids[i])] = torch.tensor(ids[i])
                mask[row, :len(ids[i])] = 1
            with torch.inference_mode():
                logits = self.model(input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device)).logits
            scores[batch] = logits[:, 0].float().cpu().numpy()
        return scores

    def score_messages(self, conversations: list[list[dict]], answers: list[str]) -> np.ndarray:
        """Scores of answers to conversations (message lists), rendered with this model's chat template."""
        return self.score([render_prompt(self.tokenizer, c) for c in conversations], answers)


if __name__ == "__main__":
    scorer = RewardScorer(sys.argv[1])
    print(float(scorer.score_messages([[{"role": "user", "content": sys.argv[2]}]], [sys.argv[3]])[0]))
