"""Stage 3, prepare: train/eval files as validate split them, chat template, eval task data, data hash.

The split is validate's decision (data_checks/split.py: stratified by source file and language);
each clean row carries it, with its stratum and key facts, which the eval docs keep for the
key-fact metric and the per-stratum gate table. General rows all train; the general holdout file
feeds the regression eval.
Eval prompts are rendered here with the base model's own chat template, once, so every model
is scored on the same text.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from pathlib import Path

from prefect import task
from pydantic import BaseModel, ConfigDict

from data_checks.split import language
from tasks.ingest import read_rows, to_messages
from tasks.validate import Validated
from tunegate.caching import STAGE_CACHE
from tunegate.config import DataConfig
from tunegate.models import ResolvedModel, load_chat_tokenizer

log = logging.getLogger(__name__)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def eval_doc(tokenizer, messages: list[dict], **extra) -> dict:
    """Prompt = the conversation up to the last assistant turn, rendered; reference = that turn."""
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    return {"prompt": prompt, "reference": messages[-1]["content"], **extra}


def sft_rows(records: list[dict]) -> list[dict]:
    """prompt/completion rows: TRL then computes the loss on the final answer only."""
    return [{"prompt": r["messages"][:-1], "completion": r["messages"][-1:], "id": r["id"]} for r in records]


def prepare_data(
    clean_path: Path, general_holdout_file: str, base_model_path: str, out_dir: Path, trust_remote_code: bool = False,
    production_file: str | None = None,
) -> dict:
    """Write train/eval rows and eval docs from validate's clean rows, which carry the split decision."""
    out_dir.mkdir(parents=True, exist_ok=True)
    train, domain_eval = [], []
    with clean_path.open() as f:
        for line in f:
            rec = json.loads(line)
            if rec.get("label") is False:  # a KTO row marked undesirable: never an SFT target
                continue
            (domain_eval if rec.get("split") == "eval" else train).append(rec)
    if not domain_eval:
        raise ValueError(f"{clean_path}: no clean row is held out for evaluation (validate decides the split: "
                         "raise data.eval_fraction or data.min_eval_per_stratum, or add domain data)")

    tokenizer = load_chat_tokenizer(base_model_path, trust_remote_code)
    holdout_name = Path(general_holdout_file).name
    general_holdout = [to_messages(row) for _, row, err in read_rows(Path(general_holdout_file)) if err is None]

    paths = {
        "train": out_dir / "train.jsonl",
        "eval": out_dir / "eval.jsonl",
        "domain_eval": out_dir / "domain_eval.jsonl",
        "general_eval": out_dir / "general_eval.jsonl",
    }
    _write_jsonl(paths["train"], sft_rows(train))
    _write_jsonl(paths["eval"], sft_rows(domain_eval))
    _write_jsonl(paths["domain_eval"], [eval_doc(tokenizer, r["messages"], facts=r.get("facts", []),
                                                 stratum=r.get("stratum", "all")) for r in domain_eval])
    _write_jsonl(paths["general_eval"], [
        eval_doc(tokenizer, m, stratum=f"{holdout_name}/{language(' '.join(x['content'] for x in m))}")
        for m in general_holdout])

    if production_file:  # prompts seen in production, with references fixed when they were first seen
        production = [json.loads(x) for x in Path(production_file).read_text().splitlines() if x.strip()]
        paths["production_eval"] = out_dir / "production_eval.jsonl"
        _write_jsonl(paths["production_eval"], [
            eval_doc(tokenizer, r["conversation"] + [{"role": "assistant", "content": r["reference"]}],
                     facts=r["facts"], stratum=f"production/{language(r['reference'])}") for r in production])

    data_hash = hashlib.sha256()
    for key in paths:
        data_hash.update(paths[key].read_bytes())
    return {
        **{k: str(v) for k, v in paths.items()},
        "base_model_path": base_model_path,
        "stop": tokenizer.eos_token,
        "data_hash": data_hash.hexdigest(),
        "counts": {"train": len(train), "domain_eval": len(domain_eval), "general_eval": len(general_holdout),
                   "domain_eval_strata": dict(Counter(r.get("stratum", "all") for r in domain_eval))},
    }


class Prepared(BaseModel):
    """The data as training and eval read it, the base model it was rendered for, and what it came from."""

    model_config = ConfigDict(extra="forbid")
    train: str
    eval: str
    domain_eval: str
    general_eval: str
    production_eval: str | None = None
    base: ResolvedModel
    stop: str
    data_hash: str
    counts: dict
    validated: Validated


@task(cache_policy=STAGE_CACHE, persist_result=True)
def prepare(validated: Validated, data: DataConfig, model: ResolvedModel, out_dir: str) -> Prepared:
    """Split the clean records as validate decided, render eval prompts with the base model's chat template, hash."""
    out = prepare_data(Path(validated.clean), data.general_holdout_file, model.path, Path(out_dir),
                       model.trust_remote_code, data.production_eval_file)
    return Prepared(**{k: v for k, v in out.items() if k != "base_model_path"}, base=model, validated=validated)
