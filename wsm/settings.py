"""The one typed configuration of wsm, read from ``WSM_*`` environment variables (and ``.env``).

Every process (trainer, workers, API, CLI) builds its settings here, so that a variable means
the same thing everywhere. docker-compose and ``.env.example`` only set variables named below.
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


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

    retention_max_window_tokens: int | None = None
    """Opt-in checkpoint retention: keep every checkpoint a merge window up to this many tokens could need."""

    retention_sparse_interval_tokens: int | None = None
    """Retention: of older checkpoints keep one per this many tokens (unset: delete them all)."""

    log_level: str = "INFO"
    """Logging level of every wsm process."""


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings of this process, read once."""
    return Settings()
