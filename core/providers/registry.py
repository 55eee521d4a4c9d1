"""Provider lookup, wires, defaults and health, all derived from the catalog."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from core.errors import UNAVAILABLE, ErrorKind, ParleyError, UsageError, suggest
from core.providers.base import Endpoint, Wire
from core.providers.spec import Catalog, ModelSpec, ProviderSpec
from core.providers.wires import make_wire

if TYPE_CHECKING:
    from core.config import Settings
    from core.providers.base import HTTPClient
    from core.store import HealthMark, Store

#: Status names shown by ``parley providers`` (the issue's contract).
STATUS_FOR_KIND = {
    ErrorKind.AUTH: "auth_failed",
    ErrorKind.QUOTA_EXHAUSTED: "quota_exhausted",
    ErrorKind.RATE_LIMITED: "rate_limited",
    ErrorKind.NOT_CONFIGURED: "not_configured",
}


@dataclass(slots=True)
class Health:
    provider: str
    status: str  # ok | not_configured | auth_failed | quota_exhausted | rate_limited | unreachable | error
    message: str = ""
    checked_at: float = 0.0


class Registry:
    def __init__(
        self, catalog: Catalog, settings: Settings, http: HTTPClient, store: Store
    ) -> None:
        self.catalog = catalog
        self.settings = settings
        self.http = http
        self.store = store
        self._wires: dict[str, Wire] = {}
        self._health: dict[str, Health] = {}
        self._marks: tuple[float, dict[str, HealthMark]] = (0.0, {})

    # --- lookup -------------------------------------------------------------------
    def names(self) -> list[str]:
        return list(self.catalog.providers)

    def get(self, name: str) -> ProviderSpec:
        spec = self.catalog.providers.get(name.strip().lower())
        if spec is None:
            raise UsageError(
                suggest(name, self.names(), "provider")
                + " Add your own in the file named by PARLEY_CONFIG."
            )
        return spec

    def model(self, spec: ProviderSpec, model: str | None) -> ModelSpec:
        if not model:
            return spec.models[spec.default_model]
        found = spec.models.get(model)
        if found is None:
            raise UsageError(
                suggest(model, spec.models, f"model for {spec.id}")
                + f" Add new models under [providers.{spec.id}.models] in PARLEY_CONFIG."
            )
        return found

    def resolve(self, choice: str | None, model: str | None = None) -> tuple[ProviderSpec, ModelSpec]:
        """``provider``, ``provider/model`` or None (the default provider)."""
        if choice and "/" in choice:
            name, _, m = choice.partition("/")
            spec = self.get(name)
            return spec, self.model(spec, m or model)
        spec = self.get(choice) if choice else self.get(self.default_provider())
        return spec, self.model(spec, model)

    def configured(self, spec: ProviderSpec) -> bool:
        return not spec.key_required or self.settings.env(spec.key_env) is not None

    def default_provider(self) -> str:
        """PARLEY_DEFAULT_PROVIDER, else the first keyed provider with a key, else the offline one."""
        if self.settings.default_provider:
            return self.get(self.settings.default_provider).id
        for spec in self.catalog.providers.values():
            if spec.key_required and self.configured(spec):
                return spec.id
        for spec in self.catalog.providers.values():
            if spec.offline_default:
                return spec.id
        return next(iter(self.catalog.providers))

    # --- wires ------------------------------------------------------------------------
    def endpoint(self, spec: ProviderSpec) -> Endpoint:
        base = self.settings.env(spec.base_url_env) or spec.base_url or ""
        return Endpoint(spec=spec, base_url=base, key=self.settings.secret(spec.key_env), http=self.http)

    def wire(self, spec: ProviderSpec) -> Wire:
        """The provider's wire, created once; raises ``not_configured`` without a key."""
        if spec.key_required and not self.configured(spec):
            raise ParleyError(
                ErrorKind.NOT_CONFIGURED,
                f"{spec.label} (provider '{spec.id}') is not configured: set {spec.key_env} in the "
                f"environment or .env, or choose another provider with provider:NAME.",
                provider=spec.id,
            )
        wire = self._wires.get(spec.id)
        if wire is None:
            wire = self._wires[spec.id] = make_wire(self.endpoint(spec))
        return wire

    async def aclose(self) -> None:
        for w in self._wires.values():
            await w.aclose()

    # --- availability -------------------------------------------------------------------
    def unavailable(self, spec: ProviderSpec) -> ParleyError | None:
        """An error to show instead of calling a provider known to be unusable right now."""
        mark = self._pauses().get(spec.id)
        if mark is None or mark.until <= time.time():
            return None
        kind = ErrorKind.AUTH if mark.status == "auth_failed" else ErrorKind.QUOTA_EXHAUSTED
        left = max(0, int(mark.until - time.time()))
        return ParleyError(
            kind,
            f"{mark.message} (Parley paused {spec.id} for {left}s after this error; it retries "
            f"automatically after that, or run `parley providers --check` once fixed.)",
            provider=spec.id,
        )

    def _pauses(self) -> dict[str, HealthMark]:
        """Paused providers, re-read from the store at most once a second (it is
        consulted at every turn start; other processes' pauses show up within 1 s)."""
        at, marks = self._marks
        now = time.monotonic()
        if now - at > 1.0:
            marks = self.store.health_marks()
            self._marks = (now, marks)
        return marks

    def report(self, spec: ProviderSpec, error: ParleyError | None) -> None:
        """Feed the outcome of a real call into health: auth/quota failures pause the provider."""
        if error is None:
            if spec.id in self._health and self._health[spec.id].status != "ok":
                self._health.pop(spec.id, None)
            return
        if error.kind in UNAVAILABLE:
            status = STATUS_FOR_KIND[error.kind]
            self.store.set_health(spec.id, status, error.message, time.time() + self.settings.cooldown)
            self._health[spec.id] = Health(spec.id, status, error.message, time.time())
            self._marks = (0.0, {})

    async def health(self, spec: ProviderSpec, *, force: bool = False) -> Health:
        """Cached health check: ``GET {base}/models`` (or the wire's equivalent)."""
        cached = self._health.get(spec.id)
        if cached and not force and time.time() - cached.checked_at < self.settings.health_ttl:
            return cached
        if not force:
            mark = self.store.health_marks().get(spec.id)
            if mark is not None:
                return Health(spec.id, mark.status, mark.message, time.time())
        try:
            wire = self.wire(spec)
            await asyncio.wait_for(wire.check(), timeout=self.settings.connect_timeout + 5)
            status, message = "ok", ""
            self.store.clear_health(spec.id)
            self._marks = (0.0, {})
        except ParleyError as e:
            status = STATUS_FOR_KIND.get(e.kind, "unreachable" if e.kind in (
                ErrorKind.UNREACHABLE, ErrorKind.TIMEOUT) else "error")
            message = e.message
            if e.kind in UNAVAILABLE:
                self.store.set_health(spec.id, status, message, time.time() + self.settings.cooldown)
        except TimeoutError:
            status, message = "unreachable", f"{spec.label} did not answer the health check in time."
        h = Health(spec.id, status, message, time.time())
        self._health[spec.id] = h
        return h

    async def health_all(self, *, force: bool = False) -> list[Health]:
        return list(
            await asyncio.gather(*(self.health(s, force=force) for s in self.catalog.providers.values()))
        )
