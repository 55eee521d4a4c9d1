"""Personas: named experts, one TOML file each.

Built-ins live in ``core/builtin_personas/`` (package data: they ship in the wheel); a user folder
(``PARLEY_PERSONAS_DIR``) adds more or overrides a built-in by id, with no code.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from core.errors import UsageError, suggest

BUILTIN_DIR = Path(__file__).resolve().parent / "builtin_personas"


class Persona(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    name: str
    role: str
    expertise: list[str] = Field(default_factory=list)
    system_prompt: str = Field(min_length=20)
    provider: str | None = None
    model: str | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    emoji: str | None = None
    color: str | None = None

    @field_validator("color")
    @classmethod
    def _hex(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"#[0-9a-fA-F]{6}", v):
            raise ValueError("must be a hex colour like '#1DA1F2'")
        return v

    @property
    def title(self) -> str:
        return f"{self.name}, {self.role}"


NEUTRAL = Persona(
    id="assistant",
    name="Assistant",
    role="General assistant",
    system_prompt=(
        "You are a helpful, precise assistant answering in a team chat thread. Lead with the "
        "answer, keep it concise, use short bullets where they help, and say plainly when you "
        "are unsure."
    ),
    emoji="💬",
)


def load_file(path: Path) -> Persona:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"Persona file {path} is not valid TOML: {e}.") from None
    try:
        persona = Persona.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "(file)"
        raise UsageError(f"Persona file {path}: field '{field}': {first['msg']}.") from None
    if persona.id != path.stem:
        raise UsageError(
            f"Persona file {path}: field 'id' is '{persona.id}' but the file is named "
            f"'{path.name}'; rename one so they match."
        )
    return persona


class PersonaBook:
    """All personas by id: built-ins, then the user's folder over them."""

    def __init__(self, user_dir: Path | None = None, builtin_dir: Path = BUILTIN_DIR) -> None:
        self.personas: dict[str, Persona] = {}
        if not builtin_dir.is_dir():
            raise UsageError(
                f"Parley's built-in personas are missing from this installation ({builtin_dir}). Reinstall "
                f"Parley (pip install --force-reinstall parley, or make install from a checkout)."
            )
        for folder in (builtin_dir, user_dir):
            if folder is None:
                continue
            if not folder.is_dir():
                raise UsageError(f"Persona folder {folder} does not exist; fix PARLEY_PERSONAS_DIR.")
            for path in sorted(folder.glob("*.toml")):
                p = load_file(path)
                self.personas[p.id] = p

    def ids(self) -> list[str]:
        return list(self.personas)

    def all(self) -> list[Persona]:
        return list(self.personas.values())

    def get(self, name: str) -> Persona:
        key = name.strip().lower()
        if key in self.personas:
            return self.personas[key]
        if key in ("none", "assistant", ""):
            return NEUTRAL
        for p in self.personas.values():  # full name or first name
            if key in (p.name.lower(), p.name.split()[0].lower()):
                return p
        raise UsageError(
            suggest(name, self.ids(), "persona")
            + " Run /personas to list them, or add your own in PARLEY_PERSONAS_DIR."
        )
