"""Continuous batching: greedy requests decoded by transformers' ContinuousBatchingManager, one per loaded version.

    decoder = ContinuousBatcher(max_batch=8, wait_s=0.05, cache_tokens=8192)
    job = decoder.submit(loaded, inputs, sampling)   # the Job of serve/batching.py: job.pieces(), job.result()

Why: driven like a server (8 clients, requests joining while others decode, greedy, fp32), on the
AVX2-only 2-core EPYC under a shared load of ~4.5, the manager (paged attention,
`model.init_continuous_batching`) answered 32-token requests at 1.9x the tok/s of sequential `generate`
calls where one left-padded `generate` of 8 gave 1.3x; at 16 tokens it gave 1.5x against padded 1.7x
(bench/continuous_batching.py, alternating rounds). Served, it beat padded batches by 1.1x at
concurrency 8 with a tighter p95 (docs/benchmarks.md "Issue 22"). Every greedy answer equalled the
unbatched one token for token. A new request joins the running batch at the next step instead of
waiting for a wave to end, so the gain grows with answer length and uneven budgets.

Which requests it takes: greedy ones without a response_format whose prompt plus max_tokens fits its cache.
The manager either samples or takes the argmax for all its requests at once (`do_sample` is one per
manager), and has no per-request logits hook for a grammar mask; so sampled requests and grammar
requests go to the padded Batcher (serve/batching.py), whose LogitsProcessor serves each row its own
settings. Stop strings, max_tokens, EOS and the streamed text are handled here as the padded path does
(serve/batching.Rows), on the tokens the manager streams; a request that meets a stop string is cancelled.
A padded batch runs with its version's manager paused (`manager.pause()`, the library's way for another
thread to use the model): a transformers forward sets `model.config.is_causal` for its own duration, so
two forwards at once on one model made the padded one attend both ways, and could leave the flag set.

Lifetime: a version's manager starts with its first request and stops when that LoadedVersion is freed
(`weakref.finalize`): after a promotion the follower drops the old version, its last request ends, and
its manager stops and frees the model and cache. The paged KV cache is `cache_tokens` long in 256-token
blocks, allocated when the manager starts (the library's own sizing, 90% of free memory, was OOM-killed
on a shared 24 GiB machine).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import threading
import uuid
import weakref

from serve.backend import LoadedVersion, Sampling, generation_eos_ids
from serve.batching import Batcher, Job, Rows

log = logging.getLogger(__name__)

PAGE_SIZE = 256  # tokens per cache block: transformers' default


class VersionManager:
    """One version's ContinuousBatchingManager, and a thread that hands its streamed tokens to their jobs."""

    def __init__(self, loaded: LoadedVersion, max_batch: int, cache_tokens: int):
        import torch
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        self.label = f"{loaded.name} version {loaded.version}"
        self.eos = generation_eos_ids(loaded)
        config = copy.deepcopy(loaded.model.generation_config)  # greedy with the model's own settings, as `generate`
        config.do_sample = False
        self.manager = loaded.model.init_continuous_batching(
            generation_config=config, continuous_batching_config=ContinuousBatchingConfig(
                num_blocks=math.ceil(cache_tokens / PAGE_SIZE), max_batch_tokens=512,
                max_requests_per_batch=max_batch))
        with torch.inference_mode():  # the manager's thread takes its caller's mode
            self.manager.start()
        self.jobs: dict[str, tuple[Job, Rows]] = {}
        self.retired = threading.Event()
        self.thread = threading.Thread(target=self._route, name=f"cb-{loaded.version}", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> None:
        rid = uuid.uuid4().hex
        self.jobs[rid] = (job, Rows([job]))
        added = self.manager.add_request(job.inputs["input_ids"][0].tolist(), request_id=rid,
                                         max_new_tokens=job.sampling.max_tokens, streaming=True, eos_token_id=self.eos)
        if added is None:  # the manager stopped (a fatal error): the next request gets a new one
            self.jobs.pop(rid)
            self.retired.set()
            raise RuntimeError(f"continuous batching on {self.label} stopped")

    def _route(self) -> None:
        while not (self.retired.is_set() and not self.jobs):
            out = self.manager.get_result(timeout=0.1)
            if out is None:
                if not self.manager.is_running():
                    self._fail_all(RuntimeError(f"continuous batching on {self.label} stopped"))
                    return
                continue
            if out.request_id in self.jobs:
                self._deliver(out)
        self.manager.stop(block=True, timeout=30)
        log.info("continuous batching on %s stopped", self.label)

    def _deliver(self, out) -> None:
        """The row's new tokens through the padded path's bookkeeping: stop strings, max_tokens, EOS, streamed text."""
        job, rows = self.jobs[out.request_id]
        for token in out.generated_tokens[len(job.ids):]:
            if job.finish is None:
                rows.advance(job, token)
        if out.error is not None:
            job.error, job.finish = f"continuous batching failed: {out.error}", job.finish or "stop"
        elif out.is_finished() and job.finish is None:
            job.finish = "length"  # the manager ended it on its max_new_tokens
        rows.flush(job)
        if job.closed:
            del self.jobs[out.request_id]
            if not out.is_finished():  # a stop string ended it: free its slot in the batch
                self.manager.cancel_request(out.request_id)

    def _fail_all(self, err: Exception) -> None:
        for job, _ in list(self.jobs.values()):
            if not job.closed:
                job.closed = True
                job.events.put(err)
        self.jobs.clear()


class ContinuousBatcher:
    """Greedy plain requests to their version's ContinuousBatchingManager; the rest to the padded Batcher."""

    def __init__(self, max_batch: int = 8, wait_s: float = 0.05, cache_tokens: int = 8192):
        self.cache_tokens, self.max_batch = cache_tokens, max_batch
        self.managers: dict[int, VersionManager] = {}  # by id(LoadedVersion); removed when the version is freed
        self.lock = threading.Lock()
        self.closed = False
        self.padded = Batcher(max_batch, wait_s, exclusive=self.paused)

    @property
    def waves(self) -> list[int]:
        """The padded path's recent batch sizes (for /health)."""
        return self.padded.waves

    def takes(self, inputs: dict, sampling: Sampling) -> bool:
        """Whether the manager can decode this request as it would be decoded alone."""
        return (sampling.matcher is None and not sampling.temperature
                and inputs["input_ids"].shape[1] + sampling.max_tokens <= self.cache_tokens)

    def submit(self, loaded: LoadedVersion, inputs: dict, sampling: Sampling,
               messages: list[dict] | None = None) -> Job:
        if not self.takes(inputs, sampling):
            return self.padded.submit(loaded, inputs, sampling, messages)
        job = Job(loaded, inputs, sampling)
        self.manager_for(loaded).submit(job)
        return job

    def manager_for(self, loaded: LoadedVersion) -> VersionManager:
        with self.lock:
            if self.closed:
                raise RuntimeError("the server is shutting down")
            manager = self.managers.get(id(loaded))
            if manager is None or manager.retired.is_set():
                manager = self.managers[id(loaded)] = VersionManager(loaded, self.max_batch, self.cache_tokens)
                weakref.finalize(loaded, self._retire, id(loaded), manager)
            return manager

    @contextlib.contextmanager
    def paused(self, loaded: LoadedVersion):
        """The version's model to the padded batch alone: its manager (started now if need be, so none can start
        meanwhile) waits at a step boundary, keeping its requests and cache, until the batch is done."""
        manager = self.manager_for(loaded).manager
        if not manager.is_running():
            yield
            return
        with manager.pause():
            yield

    def _retire(self, key: int, manager: VersionManager) -> None:
        # Runs where the version's last reference went: only signals; its routing thread stops the manager.
        if self.managers.get(key) is manager:
            self.managers.pop(key, None)
        manager.retired.set()

    def stop(self) -> None:
        self.padded.stop()  # first: its last batches may still pause a manager
        with self.lock:
            self.closed = True
            managers, self.managers = list(self.managers.values()), {}
        for manager in managers:
            manager.retired.set()
        for manager in managers:
            manager.thread.join(timeout=30)
