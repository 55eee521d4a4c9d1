"""Settings: environment plus ``.env``, read once at start-up.

Provider keys are not fields here: their variable names live in the catalog
(one list), so :meth:`Settings.env` looks them up by name in the same sources
(process environment first, then ``.env``). Every secret is a ``SecretStr`` and
is registered for redaction the moment it is read.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Literal

from dotenv import dotenv_values
from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.commands import DEFAULT_MAX_PROMPT_CHARS, DEFAULT_MAX_TURNS
from core.errors import register_secret


def _default_db() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "parley" / "parley.db"


def _env(name: str) -> AliasChoices:
    return AliasChoices(name)


class EnvSettings(BaseSettings):
    """Settings read from the process environment, then ``.env``, once at start-up.

    The base of core's :class:`Settings` and of each front-end's own settings
    (``bots/<front-end>/config.py``): every ``SecretStr`` field is registered for
    redaction the moment it is read.
    """

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", populate_by_name=True
    )

    def model_post_init(self, _ctx: object) -> None:
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                register_secret(value.get_secret_value())


class Settings(EnvSettings):
    """What core uses: storage, providers and personas, limits, timeouts."""

    @property
    def store_target(self) -> Path | str:
        """The SQLite file, or the PostgreSQL URL when one is set."""
        return self.database_url.get_secret_value() if self.database_url else self.db

    db: Path = Field(default_factory=_default_db, validation_alias=_env("PARLEY_DB"))
    #: postgresql://user:password@host/db: the store on PostgreSQL (several machines); SQLite otherwise.
    database_url: SecretStr | None = Field(None, validation_alias=_env("PARLEY_DATABASE_URL"))
    config: Path | None = Field(None, validation_alias=_env("PARLEY_CONFIG"))
    personas_dir: Path | None = Field(None, validation_alias=_env("PARLEY_PERSONAS_DIR"))
    default_provider: str | None = Field(None, validation_alias=_env("PARLEY_DEFAULT_PROVIDER"))
    fallback_provider: str | None = Field(None, validation_alias=_env("PARLEY_FALLBACK_PROVIDER"))
    moderator: str | None = Field(None, validation_alias=_env("PARLEY_MODERATOR"))

    max_turns: int = Field(DEFAULT_MAX_TURNS, validation_alias=_env("PARLEY_MAX_TURNS"))
    max_prompt_chars: int = Field(DEFAULT_MAX_PROMPT_CHARS, validation_alias=_env("PARLEY_MAX_PROMPT_CHARS"))
    max_rounds: int = Field(3, validation_alias=_env("PARLEY_MAX_ROUNDS"))
    max_tokens: int = Field(1024, validation_alias=_env("PARLEY_MAX_TOKENS"))
    #: Discussions running at once in one chat workspace / for one person there (0: no limit).
    max_running_per_workspace: int = Field(20, validation_alias=_env("PARLEY_MAX_RUNNING_PER_WORKSPACE"))
    max_running_per_user: int = Field(3, validation_alias=_env("PARLEY_MAX_RUNNING_PER_USER"))

    connect_timeout: float = Field(10.0, validation_alias=_env("PARLEY_CONNECT_TIMEOUT"))
    read_timeout: float = Field(120.0, validation_alias=_env("PARLEY_READ_TIMEOUT"))
    #: Deadlines of every turn, across all its retries (core/turn.py): to the first token
    #: (keep-alives and pings do not count), between tokens, and overall.
    first_token_timeout: float = Field(60.0, gt=0, validation_alias=_env("PARLEY_FIRST_TOKEN_TIMEOUT"))
    idle_timeout: float = Field(60.0, gt=0, validation_alias=_env("PARLEY_IDLE_TIMEOUT"))
    turn_timeout: float = Field(600.0, gt=0, validation_alias=_env("PARLEY_TURN_TIMEOUT"))
    #: A consensus stage's deadlines: each stage (answers, a review round, the synthesis) ends
    #: within ``stage_timeout``; once most of a stage's turns have ended, the rest have
    #: ``straggler_timeout`` more. A turn cut by either keeps its text and is left out of
    #: the later stages, so one slow provider cannot hold the panel.
    stage_timeout: float = Field(300.0, gt=0, validation_alias=_env("PARLEY_STAGE_TIMEOUT"))
    straggler_timeout: float = Field(60.0, gt=0, validation_alias=_env("PARLEY_STRAGGLER_TIMEOUT"))
    #: The longest answer kept from one turn, in characters; the turn ends there.
    max_answer_chars: int = Field(100_000, gt=0, validation_alias=_env("PARLEY_MAX_ANSWER_CHARS"))
    retry_attempts: int = Field(3, validation_alias=_env("PARLEY_RETRY_ATTEMPTS"))
    retry_base_delay: float = Field(0.5, validation_alias=_env("PARLEY_RETRY_BASE_DELAY"))
    health_ttl: float = Field(30.0, validation_alias=_env("PARLEY_HEALTH_TTL"))
    cooldown: float = Field(600.0, validation_alias=_env("PARLEY_COOLDOWN"))
    #: A process whose heartbeat is older than this is gone: its running discussions
    #: are marked interrupted by the next process that starts.
    lease_seconds: float = Field(30.0, validation_alias=_env("PARLEY_LEASE_SECONDS"))
    #: redis://[:password@]host:port/db (Redis or Valkey; rediss:// for TLS): what replicas share,
    #: platform rate budgets, pauses after a 429 and event dedupe (core/coord.py). Unset: this
    #: process keeps them in memory, as one process needs.
    redis_url: SecretStr | None = Field(None, validation_alias=_env("PARLEY_REDIS_URL"))

    #: Governance (docs/admin.md): ids that are admins everywhere (or ``WORKSPACE:ID``), the
    #: secret own keys are encrypted with (unset: own keys are off), a policy file to seed from.
    admins: str | None = Field(None, validation_alias=_env("PARLEY_ADMINS"))
    secret_key: SecretStr | None = Field(None, validation_alias=_env("PARLEY_SECRET_KEY"))
    policy_file: Path | None = Field(None, validation_alias=_env("PARLEY_POLICY"))

    #: Health, readiness and metrics for a front-end without an HTTP port of its own (Discord).
    ops_port: int | None = Field(None, validation_alias=_env("PARLEY_OPS_PORT"))
    ops_host: str = Field("0.0.0.0", validation_alias=_env("PARLEY_OPS_HOST"))
    log_format: Literal["text", "json"] = Field("text", validation_alias=_env("PARLEY_LOG_FORMAT"))

    env_file_path: Path = Field(Path(".env"), exclude=True)

    @cached_property
    def _dotenv(self) -> dict[str, str | None]:
        try:
            return dotenv_values(self.env_file_path) if self.env_file_path.exists() else {}
        except OSError:
            return {}

    def env(self, name: str | None) -> str | None:
        """A variable named by data (the catalog): process env first, then ``.env``."""
        if not name:
            return None
        value = os.environ.get(name)
        if value is None:
            value = self._dotenv.get(name)
        return value or None

    def secret(self, name: str | None) -> SecretStr | None:
        value = self.env(name)
        if value is None:
            return None
        register_secret(value)
        return SecretStr(value)
