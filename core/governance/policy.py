"""Policy: which providers, models, personas and commands may be used, where, by whom.

A rule allows or denies one *dimension* (``providers``, ``models`` as
``provider/model`` patterns such as ``openai/gpt-5*``, ``personas``, ``commands``)
in a workspace or one channel, for everyone or only for some people and roles.

The most specific rule decides. Levels are tried in this order: this channel for
you (your id or one of your roles), this channel for everyone, the workspace for
you, the workspace for everyone. At the first level where a rule matches, a deny
refuses (deny wins over allow at the same level) and an allow permits. An allow
for everyone is an allow-list: at its level, anything it does not name is refused.
An allow for some people only grants; it never restricts anyone else.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field

from core.governance.scope import Caller

DIMENSIONS = ("providers", "models", "personas", "commands")
#: How a refusal names a dimension's value.
WHAT = {"providers": "provider", "models": "model", "personas": "persona", "commands": "command"}


@dataclass(frozen=True, slots=True)
class Rule:
    id: int
    workspace: str
    channel: str  # '' = the whole workspace
    effect: str  # allow | deny
    dimension: str
    pattern: str
    subjects: tuple[str, ...]  # 'user:ID', 'role:NAME'; () = everyone
    created_by: str
    created_at: str

    def applies_to(self, caller: Caller) -> bool:
        if not self.subjects:
            return True
        return f"user:{caller.user}" in self.subjects or any(f"role:{r}" in self.subjects for r in caller.roles)

    def matches(self, value: str) -> bool:
        return fnmatch.fnmatchcase(value.lower(), self.pattern.lower())

    def describe(self) -> str:
        where = f"channel {self.channel}" if self.channel else "this workspace"
        who = f" for {', '.join(self.subjects)}" if self.subjects else ""
        by = f", set by {self.created_by} on {self.created_at[:10]}" if self.created_by else ""
        return f"rule #{self.id}: {self.effect} {self.dimension}:{self.pattern} in {where}{who}{by}"


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    #: The rule that decided, or the allow-list that left the value out.
    rules: tuple[Rule, ...] = ()

    def reason(self) -> str:
        if not self.rules:
            return ""
        if len(self.rules) == 1 and self.rules[0].effect == "deny":
            return self.rules[0].describe()
        named = ", ".join(r.pattern for r in self.rules)
        ids = ", ".join(f"#{r.id}" for r in self.rules)
        where = f"channel {self.rules[0].channel}" if self.rules[0].channel else "this workspace"
        return f"only {named} {'is' if len(self.rules) == 1 else 'are'} allowed in {where} (rule {ids})"


ALLOWED = Verdict(True)


_WILD = set("*?[")
EVERYONE = ""


class _Patterns:
    """Wildcard patterns compiled into one expression: one match, whatever their number."""

    def __init__(self) -> None:
        self.rules: list[Rule] = []
        self._regex: re.Pattern[str] | None = None

    def add(self, rule: Rule) -> None:
        self.rules.append(rule)
        self._regex = None

    def first(self, value: str) -> Rule | None:
        if not self.rules:
            return None
        if self._regex is None:
            self._regex = re.compile(
                "|".join(f"(?P<r{i}>{fnmatch.translate(r.pattern.lower())})" for i, r in enumerate(self.rules))
            )
        m = self._regex.match(value)
        return self.rules[int(m.lastgroup[1:])] if m and m.lastgroup else None


@dataclass(slots=True)
class _Level:
    """The rules of one dimension at one level for one subject: exact names by value, patterns."""

    exact: dict[str, list[Rule]] = field(default_factory=dict)
    deny: _Patterns = field(default_factory=_Patterns)
    allow: _Patterns = field(default_factory=_Patterns)
    allow_list: list[Rule] = field(default_factory=list)

    def hit(self, value: str) -> tuple[Rule | None, bool]:
        """(a deny rule that matches, whether an allow rule matches)."""
        exact = self.exact.get(value, ())
        deny = next((r for r in exact if r.effect == "deny"), None) or self.deny.first(value)
        allowed = any(r.effect == "allow" for r in exact) or self.allow.first(value) is not None
        return deny, allowed


class RuleSet:
    """One workspace's rules, indexed so that a check costs a few dictionary lookups and one
    match per level against its compiled patterns, however many rules there are."""

    def __init__(self, rules: list[Rule]) -> None:
        self.rules = rules
        # (dimension, channel, subject) -> level; subject EVERYONE, or 'user:ID' / 'role:NAME'.
        self.levels: dict[tuple[str, str, str], _Level] = {}
        for r in rules:
            for subject in r.subjects or (EVERYONE,):
                key = (r.dimension, r.channel, subject)
                level = self.levels.get(key)
                if level is None:
                    level = self.levels[key] = _Level()
                if _WILD & set(r.pattern):
                    (level.deny if r.effect == "deny" else level.allow).add(r)
                else:
                    level.exact.setdefault(r.pattern.lower(), []).append(r)
                if r.effect == "allow" and not r.subjects:
                    level.allow_list.append(r)

    def check(self, caller: Caller, dimension: str, value: str) -> Verdict:
        if not self.levels:
            return ALLOWED
        lowered = value.lower()
        mine = [f"user:{caller.user}", *(f"role:{r}" for r in caller.roles)]
        for channel in ([caller.channel] if caller.channel else []) + [""]:
            # for you (your id or one of your roles), then for everyone
            deny, allowed = None, False
            for subject in mine:
                level = self.levels.get((dimension, channel, subject))
                if level is not None:
                    d, a = level.hit(lowered)
                    deny, allowed = deny or d, allowed or a
            if deny is not None:
                return Verdict(False, (deny,))
            if allowed:
                return ALLOWED
            level = self.levels.get((dimension, channel, EVERYONE))
            if level is None:
                continue
            deny, allowed = level.hit(lowered)
            if deny is not None:
                return Verdict(False, (deny,))
            if allowed:
                return ALLOWED
            if level.allow_list:
                return Verdict(False, tuple(level.allow_list[:10]))
        return ALLOWED
