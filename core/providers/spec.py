"""The provider catalog as typed data: ProviderSpec / ModelSpec / QuirkProfile.

:func:`core.providers.catalog.load_catalog` reads ``catalog.toml`` (THE
provider list) and the user's ``PARLEY_CONFIG`` into these models.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


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
    #: How the wire asks for one JSON object when a request carries
    #: :class:`core.providers.base.Structured` (a consensus ballot):
    #:
    #: - ``"none"``: not at all; the request goes out as free text.
    #: - ``"json_schema"``: OpenAI-compatible Structured Outputs, ``response_format:
    #:   {"type": "json_schema", "json_schema": {"name", "schema", "strict": true}}``.
    #: - ``"json_object"``: JSON mode, ``response_format: {"type": "json_object"}``; the
    #:   schema is not sent, so the caller puts it in the prompt.
    #: - ``"tool"``: Anthropic tool use, one tool whose ``input_schema`` is the schema and a
    #:   forced ``tool_choice: {"type": "tool", "name": ...}``; its input streams as
    #:   ``input_json_delta`` events, yielded as text.
    #: - ``"grammar"``: llama.cpp grammar-constrained JSON (llama-cpp-python's
    #:   ``response_format={"type": "json_object", "schema": ...}``, compiled to GBNF).
    #:
    #: Set only where the vendor documents it; the answer streams as JSON text either way.
    structured: Literal["none", "json_schema", "json_object", "tool", "grammar"] = "none"
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
    #: A key of :data:`core.providers.wires.WIRES`.
    wire: str = "openai_chat"
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
    #: The user's config file when this row is (or changes) a provider there; set by the loader.
    origin: str | None = Field(None, exclude=True)

    @model_validator(mode="after")
    def _default_model_known(self) -> ProviderSpec:
        if self.default_model not in self.models:
            raise ValueError(
                f"default_model '{self.default_model}' is not one of its models "
                f"({', '.join(self.models)})"
            )
        if not self.key_env:  # a local server (llama-server, Ollama) needs no key
            self.key_required = False
        return self

    @property
    def where(self) -> str:
        """How messages name the provider: its label, then its id."""
        return f"{self.label} (provider '{self.id}')"

    def table(self) -> str | None:
        """``the [providers.ID] table of FILE`` for a provider from the user's config."""
        return f"the [providers.{self.id}] table of {self.origin}" if self.origin else None

    def key_fix(self) -> str:
        """The sentence that says where the key comes from, for a rejected or missing key."""
        table = self.table()
        if self.key_env:
            return f"Check {self.key_env}" + (f" (or key_env in {table})." if table else ".")
        if table:
            return f'{table[0].upper()}{table[1:]} names no key_env: add key_env = "NAME" there and set NAME.'
        return "Check the provider's credentials."

    def url_setting(self, *, env_set: bool) -> str:
        """What to check when the base URL is wrong: the variable in effect, else the config table."""
        table = self.table()
        if self.base_url_env and (env_set or table is None):
            return self.base_url_env
        if table:
            return f"base_url in {table}" + (f" (or set {self.base_url_env})" if self.base_url_env else "")
        return "the provider's base_url in PARLEY_CONFIG"


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
