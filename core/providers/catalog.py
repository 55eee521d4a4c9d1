"""Loading THE provider list: ``catalog.toml`` beside this file.

A user config file (``PARLEY_CONFIG``, TOML, same shape) is deep-merged over
it: it can add a whole provider row or change any field of a shipped one.
Nothing else in the code names a provider. Every row's ``wire`` must be a key
of :data:`core.providers.wires.WIRES`.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from core.errors import UsageError, suggest
from core.providers.spec import Catalog
from core.providers.wires import WIRES

CATALOG_PATH = Path(__file__).with_name("catalog.toml")


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
    mine: set[str] = set()
    if user_config is not None:
        user = _read_toml(user_config)
        unknown = set(user) - {"providers", "quirks"}
        if unknown:
            raise UsageError(
                f"{user_config}: unknown top-level table(s) {sorted(unknown)}; "
                f"only [providers.ID] and [quirks.NAME] may be overridden."
            )
        data = _merge(data, user)
        mine = set(user.get("providers") or {})
        source = f"{user_config} (over the shipped catalog)"
    try:
        catalog = Catalog.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise UsageError(f"{source}: invalid provider config at '{loc}': {first['msg']}.") from e
    for spec in catalog.providers.values():
        if spec.id in mine:
            spec.origin = str(user_config)
        if spec.wire not in WIRES:
            raise UsageError(
                f"{source}: [providers.{spec.id}] " + suggest(spec.wire, WIRES, "wire")
            )
    return catalog
