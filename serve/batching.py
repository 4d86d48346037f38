"""Dynamic batching: requests that arrive together are decoded together, in one padded `model.generate`.

    batcher = Batcher(max_batch=8, wait_s=0.05)
    job = batcher.submit(loaded, inputs, sampling)   # serve/backend.py: LoadedVersion, prompt_ids, Sampling
    for piece in job.pieces(): ...                    # text pieces, then (completion tokens, finish_reason)

Which requests come here: with serve.continuous_batching (the default) only those transformers'
ContinuousBatchingManager cannot decode as they would be decoded alone: sampled ones (its
do_sample is one per manager) and response_format ones (it has no per-request logits hook for a
grammar mask); greedy plain requests go to serve/continuous.py, which says why (docs/benchmarks.md
"Issue 22"). One worker thread takes the waiting requests of one version (up to
`max_batch`) and decodes them as one batch through transformers' own hooks (inside `exclusive`,
which holds the version's manager off the model), each row keeping its own settings:
- a LogitsProcessor: the row's grammar mask (response_format), its temperature and top_p; a greedy
  row in a sampled batch keeps only its argmax, so it decodes as it would alone;
- a StoppingCriteria: the row's max_tokens, EOS (a grammar row: every EOS it may end on), stop strings;
- a streamer: each row's new text to its request, holding back what may still turn into a stop string.
A row that finishes early is padded until its batch ends; requests that arrive meanwhile form the
next batch (a wave, not continuous batching: one long answer holds its wave). The worker waits for
as many requests as the last wave had, at most `wait_s`, so steady concurrent traffic fills waves
and a lone request is not delayed.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from dataclasses import dataclass, field

from serve.backend import LoadedVersion, Sampling, eos_ids, generation_eos_ids, trim_stop
from serve.structured import disallowed

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Job:
    """One request in a batch: its prompt and settings, the tokens it got, and the events its reader takes."""

    loaded: LoadedVersion
    inputs: dict
    sampling: Sampling
    events: queue.Queue = field(default_factory=queue.Queue)
    ids: list[int] = field(default_factory=list)
    text: str = ""  # the decoded answer so far
    sent: str = ""  # the part of it handed to the reader
    consumed: int = 0  # tokens the grammar matcher has seen
    finish: str | None = None  # set when the row is done: stop | length
    error: str | None = None
    closed: bool = False

    def pieces(self):
        """Text pieces as they are decoded, then (completion tokens, finish_reason); raises what broke the row."""
        while True:
            item = self.events.get()
            if isinstance(item, BaseException):
                raise item
            yield item
            if isinstance(item, tuple):
                return

    def result(self) -> tuple[str, int, str]:
        """The whole answer: (text, completion tokens, finish_reason)."""
        parts = []
        for piece in self.pieces():
            if isinstance(piece, tuple):
                return "".join(parts), *piece
            parts.append(piece)
        raise RuntimeError("the batch ended without finishing this request")


def held_back(text: str, stops: tuple[str, ...]) -> str:
    """The text without a tail that could still grow into a stop string (OpenAI never sends part of one)."""
    for k in range(min(len(text), max((len(s) for s in stops), default=1) - 1), 0, -1):
        if any(s.startswith(text[-k:]) for s in stops):
            return text[:-k]
    return text


class Rows:
    """The per-row state of one batch, shared by its processor, stopping criterion and streamer."""

    def __init__(self, jobs: list[Job]):
        loaded = jobs[0].loaded
        self.jobs, self.tokenizer = jobs, loaded.tokenizer
        self.any_eos, self.default_eos = set(eos_ids(loaded)), set(generation_eos_ids(loaded))
        self.sampled = any(j.sampling.temperature for j in jobs)

    def eos_of(self, job: Job) -> set[int]:
        # Alone, a grammar reply stops on every EOS the grammar may end with, others on the model's own.
        return self.any_eos if job.sampling.matcher is not None else self.default_eos

    def advance(self, job: Job, token: int) -> None:
        """Take the row's next token; decide whether it is done and why."""
        job.ids.append(token)
        job.text = self.tokenizer.decode(job.ids, skip_special_tokens=True)
        if token in self.eos_of(job) or (job.sampling.stop and trim_stop(job.text, job.sampling.stop) != job.text):
            job.finish = "stop"
        elif len(job.ids) >= job.sampling.max_tokens:
            job.finish = "length"

    def flush(self, job: Job) -> None:
        """Hand the reader the text that is safe to send; on a done row, the rest and the counts."""
        if job.closed:
            return
        text = trim_stop(job.text, job.sampling.stop)
        if job.finish is None:
            if text.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
                return
            text = held_back(text, job.sampling.stop)
        if len(text) > len(job.sent) and text.startswith(job.sent):
            job.events.put(text[len(job.sent):])
            job.sent = text
        if job.finish is not None:
            job.closed = True
            job.events.put(RuntimeError(job.error) if job.error else (len(job.ids), job.finish))


def row_hooks(rows: Rows):
    """transformers' LogitsProcessor, StoppingCriteria and streamer for one batch's rows."""
    import torch
    from transformers import LogitsProcessor, StoppingCriteria
    from transformers.generation.streamers import BaseStreamer

    jobs = rows.jobs

    class RowSettings(LogitsProcessor):
        def __call__(self, input_ids, scores):
            for i, job in enumerate(jobs):
                matcher = job.sampling.matcher
                if matcher is None or job.finish is not None:
                    continue
                while job.consumed < len(job.ids):
                    if not matcher.consume_token(job.ids[job.consumed]):
                        job.error = f"constrained decoding lost the grammar: {matcher.get_error()}"
                    job.consumed += 1
                if job.error:  # end this row at once; its reader gets the error
                    scores[i] = float("-inf")
                    scores[i, min(rows.any_eos)] = 0.0
                    continue
                scores[i] = scores[i].masked_fill(disallowed(matcher, scores.shape[-1]), float("-inf"))
            return sample_settings(scores) if rows.sampled else scores

    def sample_settings(scores):
        """Per row: a greedy row keeps its argmax only; a sampled one gets its temperature and top_p."""
        greedy = torch.tensor([not j.sampling.temperature for j in jobs])
        temperature = torch.tensor([j.sampling.temperature or 1.0 for j in jobs], dtype=scores.dtype)
        top_p = torch.tensor([j.sampling.top_p or 1.0 for j in jobs], dtype=scores.dtype)
        scores = scores / temperature[:, None]
        ordered, order = scores.sort(dim=-1, descending=True)
        cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
        beyond = (cumulative - ordered.softmax(dim=-1)) > top_p[:, None]  # keeps the token that crosses top_p
        scores = scores.masked_fill(beyond.scatter(-1, order, beyond), float("-inf"))
        best = scores.argmax(dim=-1, keepdim=True)
        only_best = torch.full_like(scores, float("-inf")).scatter(-1, best, 0.0)
        return torch.where(greedy[:, None], only_best, scores)

    class RowStops(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            for i, job in enumerate(jobs):
                if job.finish is None:
                    rows.advance(job, int(input_ids[i, -1]))
            return torch.tensor([j.finish is not None for j in jobs], device=input_ids.device)

    class RowStreamer(BaseStreamer):
        def put(self, value):
            if value.dim() == 1:  # the prompt comes first, as a 2-D batch: nothing to send
                for job in jobs:
                    rows.flush(job)

        def end(self):
            for job in jobs:
                if job.finish is None:  # generate stopped first (its own max length): the budget ran out
                    job.finish = "length"
                rows.flush(job)

    return RowSettings(), RowStops(), RowStreamer()


def decode_batch(jobs: list[Job]) -> None:
    """Decode the jobs (one loaded version) as one left-padded batch; every job ends with counts or an error."""
    import torch
    from transformers import LogitsProcessorList, StoppingCriteriaList

    loaded, tok = jobs[0].loaded, jobs[0].loaded.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    width = max(j.inputs["input_ids"].shape[1] for j in jobs)
    input_ids = torch.full((len(jobs), width), pad, dtype=torch.long)
    attention = torch.zeros((len(jobs), width), dtype=torch.long)
    for i, job in enumerate(jobs):
        n = job.inputs["input_ids"].shape[1]
        input_ids[i, width - n:] = job.inputs["input_ids"][0]
        attention[i, width - n:] = 1
    rows = Rows(jobs)
    settings, stops, streamer = row_hooks(rows)
    sampling = ({"do_sample": True, "temperature": 1.0, "top_p": 1.0, "top_k": 0} if rows.sampled else
                {"do_sample": False, "temperature": None, "top_p": None, "top_k": None})
    try:
        with torch.no_grad():
            loaded.model.generate(input_ids=input_ids, attention_mask=attention, pad_token_id=pad,
                                  max_new_tokens=max(j.sampling.max_tokens for j in jobs), streamer=streamer,
                                  logits_processor=LogitsProcessorList([settings]),
                                  stopping_criteria=StoppingCriteriaList([stops]), **sampling)
    except Exception as err:  # every reader still waiting gets the error
        log.exception("batch of %d failed on %s version %s", len(jobs), loaded.name, loaded.version)
        for job in jobs:
            if not job.closed:
                job.closed = True
                job.events.put(err)


class Batcher:
    """One worker thread that decodes waiting requests in batches of one version, at most `max_batch` rows."""

    def __init__(self, max_batch: int = 8, wait_s: float = 0.05, exclusive=None):
        self.max_batch, self.wait_s = max_batch, wait_s
        # exclusive(loaded): a context the batch decodes in, holding off any other user of the model
        # (serve/continuous.py pauses the version's ContinuousBatchingManager)
        self.exclusive = exclusive or (lambda loaded: contextlib.nullcontext())
        self.pending: list[Job] = []
        self.cond = threading.Condition()
        self.closed = False
        self.last_wave = 1
        self.waves: list[int] = []  # sizes of the last batches, for /health and the benchmark
        self.thread = threading.Thread(target=self._work, name="batcher", daemon=True)
        self.thread.start()

    def submit(self, loaded: LoadedVersion, inputs: dict, sampling: Sampling,
               messages: list[dict] | None = None) -> Job:
        """Queue one request (`messages` is for an engine; here the prompt is `inputs`)."""
        job = Job(loaded, inputs, sampling)
        with self.cond:
            if self.closed:
                raise RuntimeError("the server is shutting down")
            self.pending.append(job)
            self.cond.notify()
        return job

    def stop(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify()
        self.thread.join(timeout=30)

    def _take(self) -> list[Job]:
        """The next wave: the oldest request's version, up to max_batch, waiting at most wait_s to fill it."""
        with self.cond:
            while not self.pending and not self.closed:
                self.cond.wait()
            if not self.pending:
                return []
            first = self.pending[0].loaded
            deadline = time.monotonic() + self.wait_s
            while True:
                same = [j for j in self.pending if j.loaded is first]
                left = deadline - time.monotonic()
                if len(same) >= min(self.max_batch, self.last_wave) or left <= 0 or self.closed:
                    break
                self.cond.wait(left)
            wave = same[: self.max_batch]
            self.pending = [j for j in self.pending if j not in wave]
            return wave

    def _work(self) -> None:
        while True:
            wave = self._take()
            if not wave:
                return
            self.last_wave = len(wave)
            self.waves = (self.waves + [len(wave)])[-100:]
            with self.exclusive(wave[0].loaded):
                decode_batch(wave)
