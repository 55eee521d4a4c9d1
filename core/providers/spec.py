"""The provider catalog as typed data: ProviderSpec / ModelSpec / QuirkProfile.

``catalog.toml`` beside this file is THE provider list. A user config file
(``PARLEY_CONFIG``, TOML, same shape) is deep-merged over it: it can add a whole
provider row or change any field of a shipped one. Nothing else in the code
names a provider.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from core.errors import UsageError

CATALOG_PATH = Path(__file__).with_name("catalog.toml")

WireName = Literal["openai_chat", "anthropic_messages", "llama_cpp"]


class QuirkProfile(BaseModel):
    """What a model family needs or rejects. Wires read this; they never test model names."""

    model_config = ConfigDict(extra="forbid")

    #: Accepted temperature range; ``None`` means the model rejects sampling params.
    temperature_range: tuple[float, float] | None = (0.0, 2.0)
    default_temperature: float | None = None
    #: ``max_tokens`` or ``max_completion_tokens`` (OpenAI reasoning models).
    max_tokens_param: str = "max_tokens"
    #: Request ``stream_options.include_usage`` (OpenAI-style usage chunk).
    stream_usage: bool = True
    #: Extra fields merged into every request body.
    extra_body: dict[str, Any] = Field(default_factory=dict)
    docs: str | None = None

    @field_validator("temperature_range", mode="before")
    @classmethod
    def _false_means_none(cls, v: Any) -> Any:
        # TOML has no null: ``temperature_range = false`` says "no sampling params".
        return None if v is False else v


class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = ""
    #: USD per 1M tokens.
    input: float = 0.0
    cached_input: float | None = None
    output: float = 0.0
    context: int = 128_000
    max_output: int = 4096
    quirks: str = "default"
    reasoning: bool = False
    # Filled in by the catalog so that a ModelSpec is self-contained.
    profile: QuirkProfile = Field(default_factory=QuirkProfile, exclude=True)
    provider: str = ""


class ProviderSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = ""
    label: str
    wire: WireName = "openai_chat"
    base_url: str | None = None
    base_url_env: str | None = None
    key_env: str | None = None
    key_required: bool = True
    default_model: str
    models: dict[str, ModelSpec]
    quirks: str = "default"
    #: Appended to an authentication error (e.g. Moonshot's region-bound keys).
    auth_hint: str | None = None
    #: Chosen when no provider key is configured at all.
    offline_default: bool = False
    docs: str | None = None
    notes: str | None = None

    @model_validator(mode="after")
    def _default_model_known(self) -> ProviderSpec:
        if self.default_model not in self.models:
            raise ValueError(
                f"default_model '{self.default_model}' is not one of its models "
                f"({', '.join(self.models)})"
            )
        return self


class Catalog(BaseModel):
    model_config = ConfigDict(extra="forbid")

    checked: str
    quirks: dict[str, QuirkProfile]
    providers: dict[str, ProviderSpec]

    @model_validator(mode="after")
    def _link(self) -> Catalog:
        self.quirks.setdefault("default", QuirkProfile())
        for pid, p in self.providers.items():
            p.id = pid
            if p.quirks not in self.quirks:
                raise ValueError(f"providers.{pid}.quirks: unknown quirk profile '{p.quirks}'")
            for mid, m in p.models.items():
                m.id = mid
                m.provider = pid
                name = m.quirks if m.quirks != "default" else p.quirks
                if name not in self.quirks:
                    raise ValueError(
                        f"providers.{pid}.models.{mid}.quirks: unknown quirk profile '{name}'"
                    )
                m.profile = self.quirks[name]
        return self


    def env_vars(self) -> list[str]:
        """Every environment variable the catalog names (keys and base URLs), in order."""
        out: list[str] = []
        for p in self.providers.values():
            for name in (p.key_env, p.base_url_env):
                if name and name not in out:
                    out.append(name)
        return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise UsageError(f"Config file {path} does not exist. Fix PARLEY_CONFIG or create it.") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"Config file {path} is not valid TOML: {e}.") from None


def load_catalog(user_config: Path | None = None) -> Catalog:
    """The shipped catalog, with the user's config merged over it."""
    data = _read_toml(CATALOG_PATH)
    source = str(CATALOG_PATH.name)
    if user_config is not None:
        user = _read_toml(user_config)
        unknown = set(user) - {"providers", "quirks"}
        if unknown:
            raise UsageError(
                f"{user_config}: unknown top-level table(s) {sorted(unknown)}; "
                f"only [providers.ID] and [quirks.NAME] may be overridden."
            )
        data = _merge(data, user)
        source = f"{user_config} (over the shipped catalog)"
    try:
        return Catalog.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise UsageError(f"{source}: invalid provider config at '{loc}': {first['msg']}.") from e
