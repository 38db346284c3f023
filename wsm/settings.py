"""The one typed configuration of wsm, read from ``WSM_*`` environment variables (and ``.env``).

Every process (trainer, workers, API, CLI) builds its settings here, so that a variable means
the same thing everywhere. docker-compose and ``.env.example`` only set variables named below.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from wsm.eval_config import EvalConfig


class Settings(BaseSettings):
    """Process-wide settings. Field docstrings double as the reference in the README."""

    model_config = SettingsConfigDict(env_prefix="WSM_", env_file=".env", extra="ignore")

    store_url: str = Field(default="./wsm-store")
    """Where every artifact lives: a local path or ``file://`` URL, ``s3://bucket/prefix``, or ``memory://``."""

    s3_endpoint_url: str | None = None
    """S3 endpoint for MinIO or another S3-compatible server; unset means AWS (or ``AWS_ENDPOINT_URL``)."""

    s3_region: str | None = None
    """S3 region; unset falls back to ``AWS_REGION`` / ``AWS_DEFAULT_REGION``."""

    s3_access_key_id: str | None = None
    """S3 access key; unset falls back to the usual ``AWS_*`` credential chain."""

    s3_secret_access_key: str | None = None
    """S3 secret key; unset falls back to the usual ``AWS_*`` credential chain."""

    store_block_size: int = 32 * 1024 * 1024
    """Part size (bytes) of streaming uploads to the store (S3 multipart parts; at least 5 MiB)."""

    store_reserve_bytes: int = Field(default=64 * 2**20, ge=0)
    """Local stores: space kept free for job records. While less is free the API refuses new jobs (503),
    and a merge whose model would eat into it fails at once, naming the sizes; so a failure can always be
    recorded, even on a full disk."""

    retention_max_window_tokens: int | None = None
    """Opt-in checkpoint retention: keep every checkpoint a merge window up to this many tokens could need."""

    retention_sparse_interval_tokens: int | None = None
    """Retention: of older checkpoints keep one per this many tokens (unset: delete them all)."""

    cache_dir: str = "~/.cache/wsm"
    """Local cache of tokenizers and tokenised datasets, keyed by content hash (trainer and evaluation)."""

    log_level: str = "INFO"
    """Logging level of every wsm process."""

    # -- anneal service: broker, workers, jobs (anneal/broker/app.py, anneal/broker/tasks.py) --------
    broker_url: str | None = None
    """Celery broker: ``redis://host:6379/0`` in production; unset = embedded SQLite broker in ``state_dir``."""

    result_backend: str | None = None
    """Celery result backend (chords only); unset = the Redis broker itself, or SQLite in ``state_dir``."""

    state_dir: str = "./wsm-state"
    """Local directory of the embedded broker database, job locks and (by default) merge scratch space."""

    broker_visibility_timeout_s: int = 24 * 3600
    """Redis: seconds before an unacknowledged job is redelivered; must exceed the longest job."""

    merge_split_bytes: int = 16 * 2**30
    """A merge reading more input bytes than this is split by tensors into parts run by several workers."""

    merge_parts: int = 4
    """Number of parts a split merge is cut into (each part writes one output shard or more)."""

    merge_scratch_dir: str | None = None
    """Directory shared by all merge workers where parts of a split merge write shards (default: state_dir/scratch)."""

    merge_throttle_s: float = 0.0
    """Test only: sleep this long at every merge progress report, to make a merge slow enough to interrupt."""

    job_heartbeat_s: float = 5.0
    """How often a running job writes its progress and heartbeat to its record (and renews its lock)."""

    job_stale_after_s: float = 120.0
    """A queued/running job whose heartbeat is older than this is presumed lost and re-enqueued by workers."""

    recovery_interval_s: float = 60.0
    """How often each worker sweeps job records for lost jobs (also once at start)."""

    external_sync_ttl_s: float = Field(default=60.0, ge=0)
    """An external run's checkpoint directory (``wsm runs add``) is listed again for new checkpoints when
    its last listing by this process is older than this: by POST /anneal, ``wsm merge --run`` and the
    workers' recovery sweep."""

    eval_config: EvalConfig = Field(default_factory=EvalConfig)
    """JSON object of :class:`wsm.eval_config.EvalConfig` fields used for every job's evaluation (unset: its
    defaults); validated when settings load, so a bad value stops the API at start-up."""

    api_token: str | None = None
    """Bearer token required by mutating API endpoints; unset = no auth and the API serves loopback only.
    Placeholders such as ``.env.example``'s ``change-me-api-token`` are refused at start-up."""

    api_host: str = "127.0.0.1"
    """Address ``wsm serve`` binds to (forced to 127.0.0.1 when no ``api_token`` is set; the app refuses
    to start on any other address without a token)."""

    api_port: int = 8000
    """Port of ``wsm serve``."""

    api_workers: int = Field(default=1, ge=1)
    """Server processes of ``wsm serve`` (each with its own publisher); more use more cores."""

    api_url: str = "http://127.0.0.1:8000"
    """Where ``wsm anneal`` finds the API."""

    api_max_body_bytes: int = Field(default=64 * 1024, ge=1)
    """Largest accepted request body, chunked ones included; bigger ones get 413."""

    api_max_header_bytes: int = Field(default=32 * 1024, ge=1024)
    """Largest accepted request line plus headers, in bytes; bigger requests get 431."""

    api_allowed_hosts: Annotated[list[str] | None, NoDecode] = None
    """Comma-separated names the API answers to in the ``Host`` header (port ignored; ``.example.com``
    also allows subdomains, ``*`` any); others get 400. Unset: localhost, 127.0.0.1, ::1 and
    ``api_host`` (for a wildcard bind such as 0.0.0.0, this machine's host name and addresses too)."""

    api_listing_ttl_s: float = 2.0
    """POST /anneal resolves windows against run/checkpoint listings cached this long (workers re-check)."""

    api_broker_check_s: float = Field(default=5.0, ge=0)
    """POST /anneal probes the broker itself when nothing was published or probed for this long."""

    api_broker_retry_s: float = Field(default=1.0, ge=0)
    """While the broker is down: how often the API probes it again (POST /anneal answers 503 meanwhile)."""

    api_store_probe_s: float = Field(default=5.0, ge=0)
    """How long the API trusts its last look at whether the store takes writes (a small probe file written
    by ``/healthz``, or any real write); while it says no, POST /anneal answers 503 without writing."""

    @field_validator("api_allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        # An environment variable is one comma-separated string; empty means unset (the default).
        if isinstance(value, str):
            names = [name.strip() for name in value.split(",") if name.strip()]
            return names or None
        return value


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings of this process, read once."""
    return Settings()
