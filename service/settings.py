"""Server settings from flags and ``MONOLITH_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MONOLITH_", extra="forbid")

    checkpoint: Path | None = Field(None, description="Checkpoint file; default: the shipped one")
    fallback_checkpoint: Path | None = Field(None, description="Loaded, with a warning, if checkpoint fails")
    text_model: Path | None = Field(None, description="Local sentence-transformers folder; default: bundled MiniLM")
    encode_candidates: int | None = Field(
        None, ge=0, le=256,
        description="Codes per head tried by decoder-aware encoding (0: nearest codes, fastest); "
        "default: the checkpoint's setting")
    load_text_model: bool = Field(True, description="Load the text model at start-up (needed for texts)")
    data_dir: Path = Field(Path("data"), description="Where collections are stored")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    workers: int = Field(1, ge=1)
    api_key: str | None = Field(None, description="If set, every route but /healthz and /readyz needs it")
    max_batch: int = Field(10_000, ge=1, description="Most vectors, texts or codes in one request")
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="Largest request body")
    max_text_chars: int = Field(10_000, ge=1, description="Longest text accepted")
    batch_wait_ms: float = Field(2.0, ge=0, description="Micro-batcher: how long to wait for more requests")
    batch_max_size: int = Field(4096, ge=1, description="Micro-batcher: largest coalesced batch")
    queue_limit: int = Field(1024, ge=1, description="Pending requests before 503 + Retry-After")
    torch_threads: int = Field(
        0, ge=0, description="Torch threads for batches of 256+ rows (0: torch's default); smaller ones use 1"
    )
    log_level: str = "info"
    # Hardening (service/limits.py, service/server.py; docs/service.md, "Limits and errors")
    max_request_chars: int = Field(
        100_000, ge=1, description="Most characters of text one request may send to the text model (413 above)")
    body_memory_bytes: int = Field(
        512 * 1024 * 1024, ge=1024 * 1024,
        description="Estimated memory of request bodies being read and parsed at once; others wait")
    body_wait_s: float = Field(30.0, gt=0, description="Longest wait for body_memory_bytes before a 503")
    body_timeout_s: float = Field(60.0, gt=0, description="Time a client has to send its whole body (408 after)")
    header_timeout_s: float = Field(10.0, gt=0, description="Time a connection has to send a request head")
    keep_alive_s: int = Field(5, ge=1, description="Idle keep-alive connections are closed after this")
    limit_concurrency: int = Field(1024, ge=1, description="Open connections + requests before new ones get 503")
    max_header_bytes: int = Field(16_384, ge=1024, description="Largest request line + headers (h11; 400 above)")
    graceful_shutdown_s: float = Field(10.0, ge=0, description="On SIGTERM, how long running requests may finish")
    # Collections (service/collections/)
    max_metadata_bytes: int = Field(16_384, ge=2, description="Largest item metadata, as compact UTF-8 JSON")
    max_metadata_depth: int = Field(
        32, ge=1, le=128, description="Deepest nesting of objects and arrays in item metadata (422 above)")
    max_id_chars: int = Field(512, ge=1, description="Longest item id in a collection")
    default_candidates: int = Field(
        100, ge=0, description="ADC candidates re-ranked by decoded cosine when a search does not say; 0: ADC only"
    )
    rescore_candidates: int = Field(
        3000, ge=0, description="ADC candidates ranked by exact cosine with their kept vectors when a search of a "
        "collection that keeps vectors does not say (bench/bench_rescore.py: recall@10 ≥ 0.95 at 50k unseen items)"
    )
    max_candidates: int = Field(10_000, ge=0, description="Most ADC candidates a search may ask to re-rank")
    search_backend: Literal["faiss", "numpy"] = Field("faiss", description="ADC kernel for collection search")
    # Fitting collections (service/collections/fitting.py; docs/collections.md, "Fitting a collection")
    auto_fit_at: int = Field(5000, ge=0, description="Items at which a collection (created with auto_fit on, "
                             "keeping vectors) first fits its own model; 0: collections never fit by themselves")
    auto_fit_growth: float = Field(4.0, gt=1, description="A fitted collection fits again once it has grown by "
                                   "this factor since its last fit")
    fit_threads: int = Field(1, ge=1, description="CPU threads of a fit (its own process, at a lower priority)")
    fit_nice: int = Field(10, ge=0, le=19, description="How much lower the CPU priority of a fit is (nice)")
    fit_baselines: bool = Field(True, description="Fit faiss OPQ4,PQ4 and LSQ4x8 on the same rows for each fit's "
                                "report (about as long as the fit again)")
    sqlite_synchronous: Literal["FULL", "NORMAL", "EXTRA"] = Field(
        "FULL", description="SQLite synchronous mode of collections; FULL also survives power loss"
    )
