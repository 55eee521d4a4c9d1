"""Provider lookup, wires, defaults and health, all derived from the catalog.

A pause (after an auth or quota failure) belongs to one configuration: the
provider, its base URL and a fingerprint of its key (a short hash, never the
key). Fix the key or the base URL and the next turn tries it at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import SecretStr

from core.errors import UNAVAILABLE, ErrorKind, ParleyError, UsageError, suggest
from core.providers.base import Endpoint, Wire
from core.providers.spec import Catalog, ModelSpec, ProviderSpec
from core.providers.wires import make_wire

if TYPE_CHECKING:
    from core.config import Settings
    from core.providers.base import HTTPClient
    from core.records import HealthMark
    from core.store import Store

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
        self._wires: dict[tuple[str, str], Wire] = {}  # (provider, fingerprint) -> wire
        self._health: dict[str, Health] = {}
        self._marks: tuple[float, dict[str, HealthMark]] = (0.0, {})
        self._closing: set[asyncio.Future[None]] = set()

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

    def configured(self, spec: ProviderSpec, key: SecretStr | None = None) -> bool:
        return key is not None or not spec.key_required or self.settings.env(spec.key_env) is not None

    def default_provider(self) -> str:
        """PARLEY_DEFAULT_PROVIDER, else the first keyed provider with a key, else a keyless
        provider from the user's config (a local server), else the offline one."""
        if self.settings.default_provider:
            return self.get(self.settings.default_provider).id
        providers = self.catalog.providers.values()
        for spec in providers:
            if spec.key_required and self.configured(spec):
                return spec.id
        for spec in providers:
            if spec.origin and not spec.key_required and not spec.offline_default:
                return spec.id
        for spec in providers:
            if spec.offline_default:
                return spec.id
        return next(iter(self.catalog.providers))

    # --- wires ------------------------------------------------------------------------
    def endpoint(self, spec: ProviderSpec, key: SecretStr | None = None) -> Endpoint:
        """Where and with what key to call ``spec``: an own key (core.governance) wins over the environment's."""
        from_env = self.settings.env(spec.base_url_env)
        return Endpoint(
            spec=spec,
            base_url=from_env or spec.base_url or "",
            key=key if key is not None else self.settings.secret(spec.key_env),
            http=self.http,
            url_setting=spec.url_setting(env_set=from_env is not None),
        )

    @staticmethod
    def fingerprint(endpoint: Endpoint) -> str:
        """A short hash of what a pause belongs to: provider, base URL and key (never the key)."""
        key = endpoint.key.get_secret_value() if endpoint.key is not None else ""
        raw = "\0".join((endpoint.spec.id, endpoint.base_url.rstrip("/"), key))
        return hashlib.sha256(raw.encode()).hexdigest()[:16]

    def wire(self, spec: ProviderSpec, key: SecretStr | None = None) -> Wire:
        """The provider's wire for its current configuration (or an own key); raises
        ``not_configured`` without a key."""
        if spec.key_required and not self.configured(spec, key):
            table = spec.table()
            raise ParleyError(
                ErrorKind.NOT_CONFIGURED,
                f"{spec.where} is not configured: set {spec.key_env} in the "
                f"environment or .env"
                + (f" (or change key_env in {table}, or remove it for a server without keys)" if table else "")
                + ", or choose another provider with provider:NAME.",
                provider=spec.id,
            )
        endpoint = self.endpoint(spec, key)
        slot = (spec.id, self.fingerprint(endpoint))
        wire = self._wires.get(slot)
        if wire is None:
            if len(self._wires) > 1000:  # many own keys: forget the oldest connections' wires
                oldest = next(iter(self._wires))
                self._closing.add(asyncio.ensure_future(self._wires.pop(oldest).aclose()))
            wire = self._wires[slot] = make_wire(endpoint)
        return wire

    async def aclose(self) -> None:
        for w in self._wires.values():
            await w.aclose()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    # --- availability -------------------------------------------------------------------
    def _paused(self, spec: ProviderSpec) -> HealthMark | None:
        """The pause on ``spec``'s current configuration (base URL and key), if any."""
        mark = self._pauses().get(spec.id)
        if mark is None or mark.until <= time.time():
            return None
        return mark if mark.fingerprint == self.fingerprint(self.endpoint(spec)) else None

    def unavailable(self, spec: ProviderSpec) -> ParleyError | None:
        """An error to show instead of calling a provider known to be unusable right now."""
        mark = self._paused(spec)
        if mark is None:
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
        """Feed the outcome of a real call into health: auth/quota failures pause the
        provider's current configuration; a success lifts any pause."""
        if error is None:
            if spec.id in self._health and self._health[spec.id].status != "ok":
                self._health.pop(spec.id, None)
            if spec.id in self._pauses():
                self.store.clear_health(spec.id)
                self._marks = (0.0, {})
            return
        if error.kind in UNAVAILABLE:
            self._pause(spec, STATUS_FOR_KIND[error.kind], error.message)
            self._health[spec.id] = Health(spec.id, STATUS_FOR_KIND[error.kind], error.message, time.time())

    def _pause(self, spec: ProviderSpec, status: str, message: str) -> None:
        until = time.time() + self.settings.cooldown
        self.store.set_health(spec.id, status, message, until, self.fingerprint(self.endpoint(spec)))
        self._marks = (0.0, {})

    async def health(self, spec: ProviderSpec, *, force: bool = False) -> Health:
        """Cached health check: ``GET {base}/models`` (or the wire's equivalent)."""
        cached = self._health.get(spec.id)
        if cached and not force and time.time() - cached.checked_at < self.settings.health_ttl:
            return cached
        if not force:
            self._marks = (0.0, {})
            mark = self._paused(spec)
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
                self._pause(spec, status, message)
        except TimeoutError:
            status, message = "unreachable", f"{spec.label} did not answer the health check in time."
        h = Health(spec.id, status, message, time.time())
        self._health[spec.id] = h
        return h

    async def health_all(self, *, force: bool = False) -> list[Health]:
        return list(
            await asyncio.gather(*(self.health(s, force=force) for s in self.catalog.providers.values()))
        )
