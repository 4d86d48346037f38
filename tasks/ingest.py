"""Stage 1, ingest: dataset files -> canonical records that remember their file and line.

    python -m tasks.ingest data/llamafactory/glaive_toolcall_en_demo.json   # print the first record

Files: JSON (an array), JSON Lines, CSV (a header row; JSON-valued cells such as `messages` are
parsed) and Parquet. `source.line` is the 1-based line where the row starts; for Parquet, which
has no lines, it is the 1-based row number.

Formats, detected per row unless the config names one per file (`data.file_formats`, with a
column mapping `{canonical name: column in the file}`):

| format | keys |
|---|---|
| alpaca | instruction, input, output, optional system and history ([[user, assistant], ...]) |
| sharegpt | conversations: [{from, value}] or [{role, content}], optional system, tools |
| openai | messages: [{role, content, tool_calls?}], optional tools |
| prompt_completion | prompt, completion: strings or message lists (TRL's two forms) |
| kto | messages or conversations plus a boolean label (kept on the record as `label`) |
| preference | prompt/chosen/rejected (TRL, explicit or implicit prompt); ShareGPT conversations + chosen + rejected; OpenAI DPO input/preferred_output/non_preferred_output |

Canonical records, one JSON object a line:

- SFT (`records.jsonl`): `{"id", "messages": [message...], "source": {"file", "line"}}`, plus
  optional `"tools"` (function schemas, OpenAI style `{"type": "function", "function": {...}}`)
  and optional `"label"` (KTO's desirable flag; prepare trains SFT only on rows not labelled false).
- preference (`preferences.jsonl`): `{"id", "prompt": [message...], "chosen": message,
  "rejected": message, "source"}`, plus optional `"tools"`, and `"rejected_prompt"` when the
  source gave the rejected answer a different conversation than the chosen one (the preference
  suite quarantines those).
- message: `{"role": "system"|"user"|"assistant"|"tool", "content": str}`. A tool call (ShareGPT
  `function_call`) is an assistant message with `"tool_calls": [{"type": "function", "function":
  {"name", "arguments": {...}}}]` and empty content; a tool result (ShareGPT `observation`) is a
  `tool` message. That is the shape Hugging Face chat templates with tool support read.

A row that cannot be read or converted is not dropped: it is written to `ingest_rejected.jsonl`
with the format rule it breaks and the reason, and ends up in the quarantine file. Blank lines are
written there too (`kind: blank`), so the report counts them with their lines.

No raw PII in what ingest writes: every PII value (data_checks/pii.py, all types) is replaced by
its typed placeholder before a record or rejected row is written, and the record keeps
`pii_redacted: {type: count}` so the validate stage applies each type's policy (reject or redact)
to what was there. The user's input file is the only place the raw value stays.
"""

from __future__ import annotations

import csv
import io
import json
import re
import sys
from pathlib import Path
from typing import Iterator

from prefect import task
from pydantic import BaseModel, ConfigDict

from data_checks import pii
from tunegate.caching import STAGE_CACHE
from tunegate.config import DataConfig

MAX_ROW_BYTES = 16 * 2**20
SHAREGPT_ROLES = {
    "system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
    "model": "assistant", "function_call": "function_call", "observation": "tool", "tool": "tool",
    "function": "tool", "ipython": "tool",
}
# Keys whose values may arrive as JSON text (CSV cells, LLaMA-Factory's `tools` string).
JSON_VALUED = ("messages", "conversations", "chosen", "rejected", "prompt", "completion", "history",
               "preferred_output", "non_preferred_output", "tools")
_ESCAPED_BYTES = re.compile("[\udc80-\udcff]")


class DataInputError(ValueError):
    """A listed data file that cannot be used at all: missing, or without a single row. Retrying cannot help."""

    def __init__(self, file: str, problem: str):
        super().__init__(f"{file}: {problem}")
        self.file, self.problem = str(file), problem


class RowError(ValueError):
    """A row that cannot become a canonical record; `rule` names the format rule it breaks."""

    def __init__(self, rule: str, message: str):
        super().__init__(message)
        self.rule = rule


# ---------------------------------------------------------------- reading files


def read_rows(path: Path, max_row_bytes: int = MAX_ROW_BYTES) -> Iterator[tuple[int, object | None, RowError | None]]:
    """Yield (line, row, error) for every row of a JSON, JSONL, CSV or Parquet file; line is 1-based."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        yield from _read_parquet(path)
    elif suffix in (".csv", ".tsv"):
        yield from _read_csv(path, max_row_bytes, delimiter="\t" if suffix == ".tsv" else ",")
    else:
        with path.open("rb") as f:
            head = f.read(4096).lstrip()
        if head.startswith(b"["):
            yield from _read_json_array(path.read_bytes().decode("utf-8", "surrogateescape"), max_row_bytes)
        else:
            yield from _read_jsonl(path, max_row_bytes)


def _read_jsonl(path: Path, max_row_bytes: int):
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if len(raw) > max_row_bytes:
                yield line_no, None, _too_large(len(raw), max_row_bytes)
                continue
            if not raw.strip():
                yield line_no, None, RowError("blank_line", "blank line")
                continue
            try:
                text = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as err:
                yield line_no, None, RowError("format_invalid_utf8", f"not valid UTF-8: byte {err.start} is 0x{raw[err.start]:02x}")
                continue
            try:
                yield line_no, json.loads(text), None
            except json.JSONDecodeError as err:
                yield line_no, None, RowError("format_invalid_json", f"invalid JSON: {err.msg} (column {err.colno})")


def _too_large(size: int, limit: int) -> RowError:
    return RowError("format_row_too_large", f"row is {size / 2**20:.1f} MB, over the {limit / 2**20:.0f} MB limit")


def _read_json_array(text: str, max_row_bytes: int):
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    line = text.count("\n", 0, pos) + 1
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            if text[pos] == "\n":
                line += 1
            pos += 1
        if pos >= len(text) or text[pos] == "]":
            return
        try:
            row, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            # Pretty-printed arrays start every element at the same indent: resume at the next one.
            indent = text[text.rfind("\n", 0, pos) + 1 : pos]
            resume = text.find("\n" + indent + text[pos], pos + 1) if indent.strip() == "" and indent else -1
            where = f"(line {err.lineno}, column {err.colno})"
            if resume < 0:
                yield line, None, RowError("format_invalid_json", f"invalid JSON: {err.msg} {where}; rest of file skipped")
                return
            yield line, None, RowError("format_invalid_json", f"invalid JSON: {err.msg} {where}")
            line += text.count("\n", pos, resume + 1)
            pos = resume + 1
            continue
        if (end - pos) > max_row_bytes:
            yield line, None, _too_large(len(text[pos:end].encode("utf-8", "surrogateescape")), max_row_bytes)
        elif _ESCAPED_BYTES.search(text, pos, end):
            yield line, None, RowError("format_invalid_utf8", "not valid UTF-8 (undecodable bytes inside the row)")
        else:
            yield line, row, None
        line += text.count("\n", pos, end)
        pos = end


def _read_csv(path: Path, max_row_bytes: int, delimiter: str):
    csv.field_size_limit(max_row_bytes)
    text = path.read_bytes().decode("utf-8", "surrogateescape")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header, prev_end = None, 0
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            start, prev_end = prev_end + 1, reader.line_num
            rule = "format_row_too_large" if "field larger" in str(err) else "format_invalid_json"
            yield start, None, RowError(rule, f"unreadable CSV row: {err}")
            continue
        start, prev_end = prev_end + 1, reader.line_num
        if header is None:
            header = cells
            continue
        if not cells:
            yield start, None, RowError("blank_line", "blank line")
            continue
        if any(_ESCAPED_BYTES.search(c) for c in cells):
            yield start, None, RowError("format_invalid_utf8", "not valid UTF-8 (undecodable bytes in the row)")
        elif len(cells) != len(header):
            yield start, None, RowError("format_invalid_json", f"CSV row has {len(cells)} fields, the header {len(header)}")
        else:
            yield start, dict(zip(header, cells)), None


def _read_parquet(path: Path):
    import pyarrow.parquet as pq

    row_no = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=10_000):
        for row in batch.to_pylist():
            row_no += 1
            yield row_no, row, None


# ---------------------------------------------------------------- converting rows


def _parse_json_values(row: dict) -> dict:
    """Parse structured fields that arrive as JSON text; plain text that merely starts with '[' stays text."""
    out = dict(row)
    for key in JSON_VALUED:
        value = out.get(key)
        if not (isinstance(value, str) and value.lstrip()[:1] in ("[", "{")):
            continue
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as err:
            if key in ("tools", "messages", "conversations"):
                raise RowError("format_wrong_type", f"'{key}' is not valid JSON: {err.msg}") from None
            continue
        if key in ("tools", "history") or isinstance(parsed, dict) or (
                isinstance(parsed, list) and parsed and all(isinstance(p, dict) for p in parsed)):
            out[key] = parsed
    return out


def _string(row: dict, key: str, required: bool = True) -> str:
    value = row.get(key)
    if value is None:
        if required:
            raise RowError("format_missing_field", f"'{key}' is missing")
        return ""
    if not isinstance(value, str):
        raise RowError("format_wrong_type", f"'{key}' must be a string, got {type(value).__name__}")
    return value


def _tools(row: dict) -> list[dict]:
    tools = row.get("tools")
    if tools in (None, "", []):
        return []
    if isinstance(tools, dict):
        tools = [tools]
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise RowError("format_wrong_type", "'tools' must be a list of function schemas")
    return [t if t.get("type") == "function" and "function" in t else {"type": "function", "function": t} for t in tools]


def _tool_calls(value) -> list[dict]:
    """A ShareGPT function_call value (JSON text of one call or a list of calls) -> OpenAI tool_calls."""
    try:
        calls = json.loads(value) if isinstance(value, str) else value
    except json.JSONDecodeError as err:
        raise RowError("format_wrong_type", f"function_call is not valid JSON: {err.msg}") from None
    calls = calls if isinstance(calls, list) else [calls]
    if not all(isinstance(c, dict) and isinstance(c.get("name"), str) for c in calls):
        raise RowError("format_wrong_type", "function_call must be {name, arguments} or a list of them")
    return [{"type": "function", "function": {"name": c["name"], "arguments": c.get("arguments", {})}} for c in calls]


def _message(turn: dict, index: int, role_key: str, content_key: str) -> dict:
    role = turn.get(role_key)
    role = SHAREGPT_ROLES.get(role, role) if isinstance(role, str) else role
    content = turn.get(content_key)
    if role == "function_call":
        return {"role": "assistant", "content": "", "tool_calls": _tool_calls(content)}
    msg = {"role": role, "content": content}
    if content is None and turn.get("tool_calls"):
        msg["content"] = ""
    if content is not None and not isinstance(content, str):
        if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
            msg["content"] = "".join(p.get("text", "") for p in content)  # OpenAI content parts, text only
        else:
            raise RowError("format_wrong_type", f"message {index}: content must be a string, got {type(content).__name__}")
    if turn.get("tool_calls"):
        if not isinstance(turn["tool_calls"], list):
            raise RowError("format_wrong_type", f"message {index}: tool_calls must be a list")
        msg["tool_calls"] = [_openai_tool_call(c) for c in turn["tool_calls"]]
    for key in ("name", "tool_call_id"):
        if isinstance(turn.get(key), str):
            msg[key] = turn[key]
    return msg


def _openai_tool_call(call) -> dict:
    if not isinstance(call, dict):
        raise RowError("format_wrong_type", "tool_calls entries must be objects")
    fn = call.get("function", call)
    args = fn.get("arguments", {})
    if isinstance(args, str):  # OpenAI sends arguments as JSON text; templates want the object
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            raise RowError("format_wrong_type", "tool call arguments are not valid JSON") from None
    out = {"type": "function", "function": {"name": fn.get("name"), "arguments": args}}
    if call.get("id"):
        out["id"] = call["id"]
    return out


def _turns(value, key: str) -> list[dict]:
    """Messages from a list of ShareGPT (from/value) or OpenAI (role/content) turns."""
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise RowError("format_wrong_type", f"'{key}' must be a list of message objects")
    return [_one_turn(t, i) for i, t in enumerate(value)]


def _one_turn(turn: dict, index: int) -> dict:
    if "from" in turn or "value" in turn:
        return _message(turn, index, "from", "value")
    return _message(turn, index, "role", "content")


def _as_messages(value, key: str, default_role: str) -> list[dict]:
    """A prompt/completion/chosen value: a string, one message, or a list of messages."""
    if isinstance(value, str):
        return [{"role": default_role, "content": value}]
    if isinstance(value, dict):
        return [_one_turn(value, 0)]
    if value is None:
        raise RowError("format_missing_field", f"'{key}' is missing")
    return _turns(value, key)


def _with_system(row: dict, messages: list[dict]) -> list[dict]:
    system = _string(row, "system", required=False)
    if system and not (messages and messages[0]["role"] == "system"):
        return [{"role": "system", "content": system}, *messages]
    return messages


def detect_format(row: dict) -> str:
    """The format of one row, from its keys."""
    if "chosen" in row and "rejected" in row:
        return "preference"
    if "preferred_output" in row and "non_preferred_output" in row:
        return "preference"
    if "label" in row and ("messages" in row or "conversations" in row or "completion" in row):
        return "kto"
    if "messages" in row:
        return "openai"
    if "conversations" in row:
        return "sharegpt"
    if "instruction" in row and "output" in row:
        return "alpaca"
    if "prompt" in row and "completion" in row:
        return "prompt_completion"
    raise RowError(
        "format_missing_field",
        f"unknown format: keys {sorted(row)[:8]}; expected messages, conversations, instruction/output, "
        "prompt/completion or prompt/chosen/rejected",
    )


def convert_row(row: object, fmt: str = "auto", columns: dict[str, str] | None = None) -> tuple[str, dict]:
    """One row -> ("sft", {messages, tools?, label?}) or ("preference", {prompt, chosen, rejected, ...})."""
    if not isinstance(row, dict):
        raise RowError("format_missing_field", f"row is a {type(row).__name__}, expected an object")
    if columns:
        row = {**{k: v for k, v in row.items() if k not in columns.values()},
               **{canon: row.get(col) for canon, col in columns.items()}}
    row = _parse_json_values(row)
    fmt = detect_format(row) if fmt == "auto" else fmt
    tools = _tools(row)
    extra = {"tools": tools} if tools else {}
    if fmt == "preference":
        return "preference", {**_preference(row), **extra}
    if fmt == "alpaca":
        messages = _alpaca(row)
    elif fmt in ("openai", "sharegpt", "kto") and ("messages" in row or "conversations" in row):
        key = "messages" if "messages" in row else "conversations"
        messages = _with_system(row, _turns(row[key], key))
    elif fmt in ("prompt_completion", "kto"):
        messages = _as_messages(row.get("prompt"), "prompt", "user") + _as_messages(
            row.get("completion"), "completion", "assistant")
    else:
        raise RowError("format_missing_field", f"row does not hold the fields of format '{fmt}'")
    if fmt == "kto":
        if not isinstance(row.get("label"), bool):
            raise RowError("format_wrong_type", f"'label' must be true or false, got {row.get('label')!r}")
        extra["label"] = row["label"]
    return "sft", {"messages": messages, **extra}


def _alpaca(row: dict) -> list[dict]:
    instruction, query = _string(row, "instruction"), _string(row, "input", required=False)
    messages = []
    history = row.get("history") or []
    if not isinstance(history, list) or not all(isinstance(h, list) and len(h) == 2 for h in history):
        raise RowError("format_wrong_type", "'history' must be a list of [user, assistant] pairs")
    for user, assistant in history:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    messages += [{"role": "user", "content": f"{instruction}\n{query}" if query else instruction},
                 {"role": "assistant", "content": _string(row, "output")}]
    return _with_system(row, messages)


def _preference(row: dict) -> dict:
    if "preferred_output" in row:  # OpenAI DPO
        inp = row.get("input")
        if isinstance(inp, str) and inp.startswith("{"):
            inp = json.loads(inp)
        if not isinstance(inp, dict) or "messages" not in inp:
            raise RowError("format_missing_field", "'input' must be an object with 'messages'")
        prompt = _turns(inp["messages"], "input.messages")
        chosen = _as_messages(row["preferred_output"], "preferred_output", "assistant")
        rejected = _as_messages(row["non_preferred_output"], "non_preferred_output", "assistant")
        if inp.get("tools"):
            row = {**row, "tools": inp["tools"]}
    elif "conversations" in row:  # ShareGPT preference, as LLaMA-Factory's dpo_en_demo
        prompt = _turns(row["conversations"], "conversations")
        chosen = _as_messages(row["chosen"], "chosen", "assistant")
        rejected = _as_messages(row["rejected"], "rejected", "assistant")
    elif "prompt" in row:  # TRL explicit prompt
        prompt = _as_messages(row["prompt"], "prompt", "user")
        chosen = _as_messages(row["chosen"], "chosen", "assistant")
        rejected = _as_messages(row["rejected"], "rejected", "assistant")
    else:  # TRL implicit prompt: chosen and rejected are whole conversations
        chosen_conv = _as_messages(row["chosen"], "chosen", "assistant")
        rejected_conv = _as_messages(row["rejected"], "rejected", "assistant")
        prompt, chosen, rejected = chosen_conv[:-1], chosen_conv[-1:], rejected_conv[-1:]
        if rejected_conv[:-1] != prompt:
            return {"prompt": _with_system(row, prompt), "chosen": chosen[0], "rejected": rejected[0],
                    "rejected_prompt": rejected_conv[:-1]}
    for name, answer in (("chosen", chosen), ("rejected", rejected)):
        if len(answer) != 1:
            raise RowError("format_wrong_type", f"'{name}' must be one answer message, got {len(answer)}")
    out = {"prompt": _with_system(row, prompt), "chosen": chosen[0], "rejected": rejected[0]}
    if "tools" in row:
        out["tools"] = row["tools"]
    return out


def to_messages(row: object) -> list[dict]:
    """Chat messages of one SFT row of any known format, or raise ValueError naming the problem."""
    kind, rec = convert_row(row)
    if kind != "sft":
        raise RowError("format_missing_field", "a preference pair, not an SFT row")
    return rec["messages"]


# ---------------------------------------------------------------- the stage


def ingest_files(
    files: list[str],
    out_dir: Path,
    preference_files: list[str] = (),
    formats: dict[str, dict] | None = None,
    max_row_bytes: int = MAX_ROW_BYTES,
) -> dict:
    """Convert every file; write records.jsonl, preferences.jsonl and ingest_rejected.jsonl under out_dir.

    `formats` maps a file to {"format": ..., "columns": {...}}; other files are detected per row.
    Rows of `files` must be SFT rows, rows of `preference_files` preference pairs.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {k: out_dir / f"{k}.jsonl" for k in ("records", "preferences", "ingest_rejected")}
    counts = {"records": 0, "preferences": 0, "rejected": 0, "rejected_per_rule": {}, "per_file": {},
              "blank_lines": 0, "pii_redacted_rows": 0}
    formats = formats or {}
    with paths["records"].open("w") as rec_out, paths["preferences"].open("w") as pref_out, \
            paths["ingest_rejected"].open("w") as rej_out:
        pending: dict[str, list[dict]] = {"sft": [], "preference": []}

        def flush(kind: str) -> None:
            """Write buffered records with PII redacted: the vectorised triggers want many rows at once."""
            rows = pii.redact_records(pending[kind])
            counts["pii_redacted_rows"] += sum("pii_redacted" in r for r in rows)
            (rec_out if kind == "sft" else pref_out).writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
            pending[kind] = []

        for file, wanted in [(f, "sft") for f in files] + [(f, "preference") for f in preference_files]:
            path = Path(file)
            if not path.exists():
                raise DataInputError(file, "data file not found")
            spec = formats.get(str(file)) or {}
            kept, any_row = 0, False
            for line, row, error in read_rows(path, max_row_bytes):
                source = {"file": str(file), "line": line}
                if error is not None and error.rule == "blank_line":  # not a row: counted, with its line
                    rej_out.write(json.dumps({"source": source, "kind": "blank", "rule": error.rule,
                                              "reasons": [f"{error.rule}: {error}"], "row": None}) + "\n")
                    counts["blank_lines"] += 1
                    continue
                any_row = True
                if error is None:
                    try:
                        kind, rec = convert_row(row, spec.get("format", "auto"), spec.get("columns"))
                        if kind != wanted:
                            raise RowError("format_missing_field", f"a {kind} row in a file listed as {wanted} data")
                    except RowError as err:
                        error = err
                if error is not None:
                    rej_out.write(json.dumps({"source": source, "kind": wanted, "rule": error.rule,
                                              "reasons": [f"{error.rule}: {error}"], "row": pii.redact_value(row)},
                                             ensure_ascii=False) + "\n")
                    counts["rejected"] += 1
                    counts["rejected_per_rule"][error.rule] = counts["rejected_per_rule"].get(error.rule, 0) + 1
                    continue
                pending[kind].append({"id": f"{path.stem}-{line}", **rec, "source": source})
                if len(pending[kind]) >= 20_000:
                    flush(kind)
                counts["records" if kind == "sft" else "preferences"] += 1
                kept += 1
            if kept == 0 and not any_row:
                raise DataInputError(file, "no rows (an empty file, an empty JSON array or only blank lines); "
                                     "fill it or remove it from the config")
            counts["per_file"][str(file)] = kept
        flush("sft")
        flush("preference")
    return {"records": str(paths["records"]), "preferences": str(paths["preferences"]),
            "rejected": str(paths["ingest_rejected"]), "counts": counts}


class Ingested(BaseModel):
    """ingest's files: canonical SFT records, preference pairs, unreadable rows; and the counts."""

    model_config = ConfigDict(extra="forbid")
    records: str
    preferences: str
    rejected: str
    counts: dict


def listed_as(data: DataConfig, file: str) -> str:
    """The config field that lists a data file, for error messages."""
    fields = ("domain_files", "general_files", "feedback_files", "preference_files", "feedback_preference_files")
    return next((f"data.{name}" for name in fields if file in getattr(data, name)), "data")


def retry_unless_bad_input(task, task_run, state) -> bool:
    """Retry I/O hiccups, not a file that is missing or empty: a second read finds it the same."""
    return not isinstance(state.result(raise_on_failure=False), DataInputError)


@task(retries=2, retry_delay_seconds=[2, 5], retry_condition_fn=retry_unless_bad_input, cache_policy=STAGE_CACHE,
      persist_result=True)
def ingest(data: DataConfig, out_dir: str) -> Ingested:
    """Read the dataset files into canonical SFT records and preference pairs."""
    try:
        return Ingested(**ingest_files(data.domain_files + data.general_files + data.feedback_files, Path(out_dir),
                                       data.preference_files + data.feedback_preference_files,
                                       {f: spec.model_dump() for f, spec in data.file_formats.items()},
                                       int(data.checks.max_row_mb * 2**20)))
    except DataInputError as err:
        raise DataInputError(err.file, f"{err.problem} (listed in {listed_as(data, err.file)})") from None


if __name__ == "__main__":
    for _, row, err in read_rows(Path(sys.argv[1])):
        print(json.dumps(convert_row(row) if err is None else str(err), indent=2, ensure_ascii=False))
        break
