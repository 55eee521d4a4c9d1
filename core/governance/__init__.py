"""Governance: who may use what, at what cost, on whose keys.

Every request passes :meth:`Governance.admit` before anything is sent to a
provider (and, in Slack and Discord, before it is acknowledged):

1. policy allows the command (:mod:`core.governance.policy`);
2. a saved panel (``panel:NAME``) and the channel's defaults fill in what was not typed;
3. policy allows every provider, model and persona on the panel, the moderator included;
4. own keys are chosen: the person's, then the workspace's, then the environment's;
5. the worst case is estimated (:mod:`core.governance.estimate`) and reserved against
   every cap that applies, in one transaction (:mod:`core.governance.storage`).

The :class:`Grant` it returns runs the discussion; when it ends, the reservation is
settled at what the providers reported. A refusal is a :class:`Refused` whose
sentence names the rule or the cap, what remains and who can change it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from core.commands import COMMANDS, Request, UsageError, build
from core.errors import ParleyError, redact, register_secret, suggest
from core.governance.estimate import Estimate, worst_case
from core.governance.keys import KeyBox
from core.governance.policy import WHAT, RuleSet
from core.governance.scope import Caller, Periods, until
from core.governance.storage import ANY_VERSION, Alert, Cap, GovernanceStore, Over, Stale
from core.personas import NEUTRAL
from core.plan import Panelist, Planner, Run

if TYPE_CHECKING:
    from core.config import Settings
    from core.events import TurnFailed, TurnFinished
    from core.history import History
    from core.providers.registry import Registry
    from core.store import Store

log = logging.getLogger("parley.governance")

#: Which command a channel's default mode makes of a plain question.
MODE_COMMAND = {"single": "ask", "parallel": "compare", "consensus": "consensus"}
#: Options a saved panel keeps.
PANEL_FIELDS = ("personas", "providers", "model", "rounds", "moderator", "depth", "method", "temperature", "max_tokens")
#: How often a process looks for texts past their retention.
SWEEP_EVERY = 3600.0
#: Admissions tried on a view found stale (changed meanwhile) before one reserves on what it read.
ADMIT_ATTEMPTS = 3


class Refused(UsageError):
    """A request policy or a budget refused; nothing was sent to any provider."""

    def __init__(self, message: str, why: str) -> None:
        super().__init__(message)
        self.why = why  # policy | budget | admin


@dataclass(slots=True)
class View:
    """One workspace's governance data, cached until any process changes it."""

    version: str | None
    rules: RuleSet
    defaults: dict[str, dict[str, Any]]
    caps: list[Cap]
    settings: dict[str, Any]
    #: The caps by (scope, target).
    cap_index: dict[tuple[str, str], Cap] = field(default_factory=dict)
    #: Who has own keys stored here ('' for the workspace's): no one else's admission reads them.
    key_owners: frozenset[str] = frozenset()


@dataclass(slots=True)
class Grant:
    """An admitted discussion: its request as it will run, its panel, keys and reservation."""

    request: Request
    caller: Caller
    panel: list[Panelist]
    keys: dict[str, SecretStr]
    estimate: Estimate
    #: Providers whose spend budgets do not count (own keys, when the workspace says so).
    free: frozenset[str] = frozenset()
    reservation: str | None = None
    alerts: list[str] = field(default_factory=list)
    governance: Governance | None = None
    settled: bool = False

    def permits(self, provider: str, model: str) -> bool:
        """May this provider/model run here (the ``/ask`` fallback asks)?"""
        if self.governance is None:
            return True
        try:
            self.governance.check_model(self.caller, provider, model)
        except Refused:
            return False
        return True

    def attach(self, discussion_id: str) -> None:
        if self.reservation and self.governance is not None:
            self.governance.db.attach(self.reservation, discussion_id)

    def settle(self, results: list[TurnFinished | TurnFailed], discussion_id: str | None = None) -> None:
        """Replace the reservation by what the turns cost (their providers' usage where given)."""
        if self.settled:
            return
        self.settled = True
        if not self.reservation or self.governance is None:
            return
        counted = [r for r in results if r.turn.provider not in self.free]
        cost = sum(r.usage.cost_usd for r in counted)
        estimated = any(r.usage.estimated for r in counted)
        self.governance.db.settle(self.reservation, cost, estimated=estimated, discussion_id=discussion_id)

    def release(self) -> None:
        """The discussion never started (cancelled before it ran): give the reservation back."""
        self.settle([])


class Governance:
    def __init__(
        self, store: Store, settings: Settings, planner: Planner, registry: Registry, history: History
    ) -> None:
        self.db = GovernanceStore(store)
        self.store = store
        self.settings = settings
        self.planner = planner
        self.registry = registry
        self.history = history
        secret = settings.secret_key.get_secret_value() if settings.secret_key else None
        self.box = KeyBox(secret)
        self.env_admins = {a.strip() for a in (settings.admins or "").split(",") if a.strip()}
        self._views: dict[str, View] = {}
        self._seen: set[tuple[str, str]] = set()
        self._sweeping: asyncio.Task[None] | None = None
        self._swept = 0.0

    # --- who is an admin ---------------------------------------------------------------------
    def is_admin(self, caller: Caller) -> bool:
        if caller.admin:
            if (caller.workspace, caller.user) not in self._seen:  # soft alerts reach them
                self._seen.add((caller.workspace, caller.user))
                self.db.saw_admin(caller.workspace, caller.user)
            return True
        kind = caller.workspace.split(":", 1)[0]
        return bool({caller.user, f"{caller.workspace}:{caller.user}", f"{kind}:{caller.user}"} & self.env_admins)

    def admins(self, workspace: str) -> list[str]:
        """Whom soft alerts go to: PARLEY_ADMINS (for this workspace) and whoever changed budgets or policy here."""
        prefix = workspace.split(":", 1)[0]
        env = []
        for a in sorted(self.env_admins):
            scope, _, uid = a.rpartition(":")
            if not scope or scope == workspace or scope == prefix:
                env.append(uid)
        return list(dict.fromkeys(env + self.db.admin_ids(workspace)))

    def require_admin(self, caller: Caller, what: str) -> None:
        if not self.is_admin(caller):
            raise Refused(
                f"⛔ {what} is for workspace admins. Ask one of them"
                + (f" ({', '.join(self.admins(caller.workspace)[:5])})" if self.admins(caller.workspace) else "")
                + ", or an operator can add your id to PARLEY_ADMINS.",
                "admin",
            )

    def followups(self, workspace: str) -> bool:
        """Whether an admin turned on follow-ups without a mention in Parley's threads here."""
        return bool(self.view(workspace).settings["followups"])

    @property
    def own_keys_enabled(self) -> bool:
        """PARLEY_SECRET_KEY is set: own keys can be stored."""
        return self.box.enabled

    def may_run(self, caller: Caller, panel: str) -> bool:
        """Whether policy lets ``caller`` run the saved panel here (the command and every panelist)."""
        try:
            req = build("compare", [("panel", panel)], "?")
            self.check_command(req, caller)
            resolved = self.resolve(req, caller)
            panelists = self.planner.panel(resolved)
            for p in panelists:
                self.check_panelist(caller, p)
            if resolved.moderator:
                self.check_panelist(caller, self.planner.moderator(resolved.moderator, panelists[0]))
        except (UsageError, ParleyError):
            return False
        return True

    # --- cached data -------------------------------------------------------------------------
    def view(self, workspace: str) -> View:
        """The workspace's governance data: cached until any process changes it (a version read)."""
        version = self.db.version(workspace)
        cached = self._views.get(workspace)
        if cached is not None and cached.version == version:
            return cached
        return self._keep(workspace, self._build(self.db, workspace, version))

    async def fresh_view(self, workspace: str) -> View:
        """:meth:`view`, rebuilt off the event loop when it changed (10,000 rules take a while)."""
        version = self.db.version(workspace)
        cached = self._views.get(workspace)
        if cached is not None and cached.version == version:
            return cached

        def build() -> View:
            conn = self.store.reader()
            try:
                return self._build(self.db.on(conn), workspace, version)
            finally:
                conn.close()

        return self._keep(workspace, await asyncio.to_thread(build))

    @staticmethod
    def _build(db: GovernanceStore, workspace: str, version: str | None) -> View:
        caps = db.caps(workspace)
        return View(version, RuleSet(db.rules(workspace)), db.defaults(workspace), caps, db.settings(workspace),
                    {(c.scope, c.target): c for c in caps}, frozenset(db.key_owners(workspace)))

    async def _admission_view(self, workspace: str) -> View:
        """The view an admission starts from: the cached one as it is, without reading the
        version (the reservation's transaction checks it, and a refusal checks it before it
        stands); else built."""
        cached = self._views.get(workspace)
        return cached if cached is not None else await self.fresh_view(workspace)

    def _keep(self, workspace: str, view: View) -> View:
        if len(self._views) > 10_000:
            self._views.clear()
        self._views[workspace] = view
        return view

    # --- policy ------------------------------------------------------------------------------
    def _check(self, caller: Caller, dimension: str, value: str, view: View | None = None) -> None:
        verdict = (view or self.view(caller.workspace)).rules.check(caller, dimension, value)
        if not verdict.allowed:
            raise Refused(
                f"⛔ The {WHAT[dimension]} {value} is not allowed here: {verdict.reason()}. "
                f"{self._who_can(caller.workspace)} can change it with /policy (see /policy show).",
                "policy",
            )

    def _who_can(self, workspace: str, who: str = "Workspace admins") -> str:
        known = self.admins(workspace)[:5]
        return f"{who} ({', '.join(known)})" if known else who

    def allows(self, caller: Caller, dimension: str, value: str) -> bool:
        """Whether policy lets ``caller`` use this provider, ``provider/model``, persona or command here."""
        return self.view(caller.workspace).rules.check(caller, dimension, value).allowed

    def check_command(self, req: Request, caller: Caller, view: View | None = None) -> None:
        """Policy for any command (admins are never locked out of the administrative ones)."""
        if req.command == "help" or (COMMANDS[req.command].admin and self.is_admin(caller)):
            return
        self._check(caller, "commands", req.command, view)

    def check_model(self, caller: Caller, provider: str, model: str, view: View | None = None) -> None:
        self._check(caller, "providers", provider, view)
        self._check(caller, "models", f"{provider}/{model}", view)

    def check_panelist(self, caller: Caller, p: Panelist, view: View | None = None) -> None:
        self.check_model(caller, p.provider.id, p.model.id, view)
        if p.persona is not NEUTRAL and p.persona.id != "moderator":
            self._check(caller, "personas", p.persona.id, view)

    # --- admission ---------------------------------------------------------------------------
    def resolve(self, req: Request, caller: Caller, view: View | None = None) -> Request:
        """The request as it will run: a saved panel's options and the channel's defaults
        fill in what was not typed (typed options win), validated again."""
        view = view or self.view(caller.workspace)
        options = req.options()
        if req.panel:
            saved = self.db.panel(caller.workspace, req.panel.lower())
            if saved is None:
                names = [p["name"] for p in self.db.panels(caller.workspace)]
                raise UsageError(suggest(req.panel, names, "panel") + " Save one with /panel save NAME options….")
            options = {**{k: v for k, v in saved["options"].items() if k in PANEL_FIELDS}, **options}
        command = req.command
        for channel in ([caller.channel] if caller.channel else []) + [""]:
            d = view.defaults.get(channel)
            if not d:
                continue
            if "providers" not in options and d["providers"]:
                options["providers"] = d["providers"]
            if "personas" not in options and d["personas"]:
                options["personas"] = d["personas"]
            if req.implicit and d["mode"] and command == req.command:
                command = MODE_COMMAND[d["mode"]]
        if options == req.options() and command == req.command:
            return req
        if COMMANDS[command].mode == "single":  # a channel's default panel: its first expert answers /ask
            for name in ("providers", "personas"):
                value = options.get(name)
                if name not in req.options() and isinstance(value, list) and not req.panel:
                    options[name] = value[:1]
        allowed = COMMANDS[command].options
        pairs = [(k, ",".join(v) if isinstance(v, list) else v) for k, v in options.items() if k in allowed]
        out = build(command, pairs, req.prompt, max_prompt_chars=self.settings.max_prompt_chars,
                    max_turns=self.settings.max_turns)
        out.implicit = req.implicit
        return out

    def own_keys(self, caller: Caller, providers: list[str], view: View | None = None) -> dict[str, SecretStr]:
        """The most specific own key per provider: the person's, then the workspace's."""
        if not self.box.enabled or not providers:
            return {}
        if view is not None and not ({caller.user, ""} & view.key_owners):
            return {}  # neither this person nor the workspace has a key stored (as of the view)
        rows = self.db.key_rows(caller.workspace, [caller.user, ""])
        chosen: dict[str, SecretStr] = {}
        for row in sorted(rows, key=lambda r: r["user"] == ""):  # the person's first
            pid = row["provider"]
            if pid in chosen or pid not in providers:
                continue
            key = self.box.open(row["ciphertext"], row["workspace"], row["user"], pid)
            if key is None:
                log.warning("an own %s key (%s) cannot be decrypted with PARLEY_SECRET_KEY; skipped",
                            pid, "personal" if row["user"] else "workspace")
                continue
            register_secret(key)
            chosen[pid] = SecretStr(key)
        return chosen

    async def admit(self, req: Request, caller: Caller, *, conversation: str | None = None) -> Grant:
        """Policy, panel, keys and budget for a discussion; raises Refused or UsageError.

        Nothing is read on the event loop for a request that is admitted: the checks run on
        the workspace's cached view, and the reservation's transaction checks that view's
        version; if the workspace changed since (here or in another process), or a check
        refused on a view that is no longer current, the view is read again and every check
        made again, so a decision always stands on current policy, caps and keys."""
        self.sweep_soon()
        view = await self._admission_view(caller.workspace)
        for _ in range(ADMIT_ATTEMPTS - 1):
            try:
                return await self._admit(req, caller, view, conversation)
            except Stale:
                pass
            except UsageError:
                if self.db.version(caller.workspace) == view.version:
                    raise  # refused on current data
            view = await self.fresh_view(caller.workspace)
        return await self._admit(req, caller, view, conversation, last=True)

    async def _admit(self, req: Request, caller: Caller, view: View, conversation: str | None,
                     *, last: bool = False) -> Grant:
        self.check_command(req, caller, view)
        req = self.resolve(req, caller, view)
        if req.mode is None:
            raise UsageError(f"/{req.command} is not a discussion.")
        self._check(caller, "commands", req.command, view)  # a default mode may have changed it
        panel = self.planner.panel(req)
        for p in panel:
            self.check_panelist(caller, p, view)
        moderator = None
        if req.mode == "consensus":
            moderator = self.planner.moderator(req.moderator, panel[0])
            self.check_panelist(caller, moderator, view)
        fallback = None
        name = self.settings.fallback_provider
        if req.mode == "single" and name:
            with contextlib.suppress(UsageError):
                spec, model = self.registry.resolve(name)
                self.check_model(caller, spec.id, model.id, view)
                fallback = Panelist(panel[0].persona, spec, model)
        providers = [p.provider.id for p in (*panel, *(x for x in (moderator, fallback) if x))]
        keys = self.own_keys(caller, list(dict.fromkeys(providers)), view)
        history = 0
        if conversation:
            await self.store.settled()  # the thread's earlier turns are in (without blocking the loop)
            run = Run("", req, conversation)
            history = max((sum(len(m.content.encode()) for m in self.history.messages(
                run, p, self.history.budget(p, req))) for p in panel), default=0)
        estimate = worst_case(self.planner, req, panel, history_chars=history, moderator=moderator,
                              fallback=fallback)
        free = frozenset(keys) if not view.settings["own_keys_count"] else frozenset()
        grant = Grant(req, caller, panel, keys, estimate, free, governance=self)
        periods = Periods.at()
        counted = estimate.counted(free)
        sid, over, alerts = await self.db.reserve(
            workspace=caller.workspace, channel=caller.channel, user=caller.user,
            caps=self._caps(view, caller), estimate=counted, free=sorted(free), periods=periods,
            # The last attempt reserves on the view it just read, even if it changed again meanwhile.
            version=ANY_VERSION if last else view.version,
        )
        if over:
            raise Refused(self._over_message(caller, req, estimate, counted, over, periods), "budget")
        grant.reservation = sid
        grant.alerts = [self._alert_message(caller, a) for a in alerts]
        for text in grant.alerts:
            log.info("budget alert in %s: %s", caller.workspace, text)
        return grant

    @staticmethod
    def _caps(view: View, caller: Caller) -> list[Cap]:
        """The caps that apply: the workspace's, this channel's, and the person's own (else everyone's)."""
        at = view.cap_index
        found = [at.get(("workspace", "")), at.get(("channel", caller.channel)) if caller.channel else None,
                 at.get(("user", caller.user)) or at.get(("user", "*"))]
        return [c for c in found if c is not None]

    # --- what refusals and alerts say ----------------------------------------------------
    @staticmethod
    def scope_name(cap: Cap) -> str:
        if cap.scope == "workspace":
            return "this workspace's"
        if cap.scope == "channel":
            return f"channel {cap.target}'s"
        return "your" if cap.target == "*" else f"{cap.target}'s"

    def _over_message(
        self, caller: Caller, req: Request, est: Estimate, counted: float, over: list[Over], periods: Periods
    ) -> str:
        worst = min(over, key=lambda o: o.remaining)
        free = "" if abs(counted - est.usd) < 1e-12 else f" (${counted:.4f} of it on keys the budget counts)"
        return (
            f"⛔ Over budget: this /{req.command} could cost up to ${est.usd:.4f}{free} (worst case, {est.turns} "
            f"turns), and {self.scope_name(worst.cap)} {worst.period} cap of ${worst.limit:.2f} has "
            f"${worst.remaining:.4f} left (${worst.spent:.4f} spent or reserved). It resets at "
            f"{until(periods.resets(worst.period))}. Nothing was sent to any provider. Try fewer panelists, "
            f"cheaper models or a lower max_tokens:, or ask {self._who_can(caller.workspace, 'workspace admins')} to raise it "
            f"with /budget set."
        )

    def _alert_message(self, caller: Caller, a: Alert) -> str:
        return (
            f"⚠️ Budget alert: {self.scope_name(a.cap).replace('your', f'user {caller.user}’s')} {a.period} spend "
            f"in {caller.workspace} reached ${a.spent:.4f} of ${a.limit:.2f} "
            f"({100 * a.spent / a.limit if a.limit else 100:.0f}%, soft threshold {a.cap.soft_pct}%). "
            f"Requests stop at the cap; raise it with /budget set."
        )

    # --- retention -------------------------------------------------------------------------
    def sweep_soon(self) -> None:
        """At most once an hour per process, erase texts older than each workspace's retention."""
        now = time.monotonic()
        if self._swept and now - self._swept < SWEEP_EVERY:
            return
        self._swept = now
        if self._sweeping is not None and not self._sweeping.done():
            return
        with contextlib.suppress(RuntimeError):  # no loop: the next admission sweeps
            self._sweeping = asyncio.get_running_loop().create_task(self._sweep_quietly())

    async def _sweep_quietly(self) -> None:
        try:
            await self.sweep()
        except Exception as e:  # the next sweep tries again; admissions never fail for it
            log.warning("retention sweep failed: %s", redact(repr(e)))

    async def sweep(self) -> int:
        erased = 0
        for workspace, days in self.db.retention_due():
            cutoff = (datetime.now(UTC) - timedelta(days=days)).isoformat(timespec="milliseconds")
            erased += await self.db.purge(workspace, cutoff)
        if erased:
            log.info("retention: erased the texts of %d discussion(s)", erased)
        return erased

    async def aclose(self) -> None:
        """Stop a sweep in progress (before the store closes)."""
        if self._sweeping is not None and not self._sweeping.done():
            self._sweeping.cancel()
            with contextlib.suppress(BaseException):
                await self._sweeping
