"""Personas: built-ins, validation errors that name the file and field, user overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import UsageError
from core.personas import NEUTRAL, PersonaBook


def test_builtins_load_and_include_the_required_experts() -> None:
    book = PersonaBook()
    assert len(book.ids()) >= 10
    assert book.get("riley").name == "Riley Engstrom" and book.get("riley").role == "Social Media Specialist"
    assert book.get("morgan").name == "Morgan Castellano" and book.get("morgan").role == "Marketing Specialist"
    assert book.get("Riley Engstrom").id == "riley"  # full name works too
    assert book.get("none") is NEUTRAL
    names = [p.name for p in book.all()]
    assert len(set(names)) == len(names)
    for p in book.all():
        assert len(p.system_prompt.split()) >= 120, p.id  # written with care, not a one-liner
        assert p.provider is None and p.model is None  # built-ins work with any provider


def test_unknown_persona_suggests(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="Did you mean 'riley'"):
        PersonaBook().get("rilye")


def test_invalid_file_names_file_and_field(tmp_path: Path) -> None:
    (tmp_path / "zed.toml").write_text('id = "zed"\nname = "Zed"\nrole = "x"\nsystem_prompt = "long enough prompt here ok"\ncolor = "blue"\n')
    with pytest.raises(UsageError, match=r"zed\.toml: field 'color'"):
        PersonaBook(tmp_path)


def test_id_must_match_file_name(tmp_path: Path) -> None:
    (tmp_path / "zed.toml").write_text('id = "zee"\nname = "Zed"\nrole = "x"\nsystem_prompt = "long enough prompt here ok"\n')
    with pytest.raises(UsageError, match="rename one"):
        PersonaBook(tmp_path)


def test_user_folder_adds_and_overrides(tmp_path: Path) -> None:
    (tmp_path / "riley.toml").write_text(
        'id = "riley"\nname = "Riley Engstrom"\nrole = "Head of Social"\nsystem_prompt = "You are Riley, now head of social."\n')
    (tmp_path / "quinn.toml").write_text(
        'id = "quinn"\nname = "Quinn Park"\nrole = "Recruiter"\nsystem_prompt = "You are Quinn, a recruiter."\nprovider = "kimi"\n')
    book = PersonaBook(tmp_path)
    assert book.get("riley").role == "Head of Social"
    assert book.get("quinn").provider == "kimi"
    assert "morgan" in book.ids()
