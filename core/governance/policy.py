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
from dataclasses import dataclass

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


@dataclass(slots=True)
class _Level:
    """The rules of one dimension at one level: exact names by value, patterns to match."""

    exact: dict[str, list[Rule]]
    wild: list[Rule]
    allow_list: list[Rule]


class RuleSet:
    """One workspace's rules, indexed so that a check costs a few dictionary lookups
    (plus one match per wildcard pattern at the levels it visits), however many rules."""

    def __init__(self, rules: list[Rule]) -> None:
        self.rules = rules
        self.levels: dict[tuple[str, str, bool], _Level] = {}
        for r in rules:
            key = (r.dimension, r.channel, bool(r.subjects))
            level = self.levels.get(key)
            if level is None:
                level = self.levels[key] = _Level({}, [], [])
            if _WILD & set(r.pattern):
                level.wild.append(r)
            else:
                level.exact.setdefault(r.pattern.lower(), []).append(r)
            if r.effect == "allow" and not r.subjects:
                level.allow_list.append(r)

    def check(self, caller: Caller, dimension: str, value: str) -> Verdict:
        if not self.levels:
            return ALLOWED
        order = ([(caller.channel, True), (caller.channel, False)] if caller.channel else []) + [
            ("", True),
            ("", False),
        ]
        lowered = value.lower()
        for channel, personal in order:
            level = self.levels.get((dimension, channel, personal))
            if level is None:
                continue
            hits = [r for r in level.exact.get(lowered, ()) if r.applies_to(caller)]
            hits += [r for r in level.wild if r.applies_to(caller) and r.matches(value)]
            denied = [r for r in hits if r.effect == "deny"]
            if denied:
                return Verdict(False, (denied[0],))
            if hits:
                return ALLOWED
            if level.allow_list:
                return Verdict(False, tuple(level.allow_list[:10]))
        return ALLOWED
