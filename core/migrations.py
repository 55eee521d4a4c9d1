"""Append-only, named schema migrations (the simonw/llm pattern).

Each function runs once per database, in order, and is recorded in
``_migrations``. Never edit or reorder a released migration: add a new one.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlite_utils

MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = []


def migration(fn: Callable[[sqlite_utils.Database], None]) -> Callable[[sqlite_utils.Database], None]:
    MIGRATIONS.append(fn)
    return fn


@migration
def m001_initial(db: sqlite_utils.Database) -> None:
    db.table("discussions").create(
        {
            "id": str,
            "conversation": str,
            "mode": str,
            "command": str,
            "prompt": str,
            "options": str,
            "status": str,
            "message": str,
            "front_end": str,
            "cost_usd": float,
            "created_at": str,
            "finished_at": str,
        },
        pk="id",
    )
    db.table("discussions").create_index(["conversation", "created_at"])
    db.table("discussions").create_index(["status"])
    db.table("turns").create(
        {
            "id": str,
            "discussion_id": str,
            "seq": int,
            "stage": str,
            "round": int,
            "persona": str,
            "provider": str,
            "model": str,
            "prompt": str,
            "text": str,
            "reasoning_chars": int,
            "status": str,
            "error_kind": str,
            "error_message": str,
            "input_tokens": int,
            "output_tokens": int,
            "cached_tokens": int,
            "usage_estimated": int,
            "cost_usd": float,
            "ttft_ms": float,
            "latency_ms": float,
            "started_at": str,
            "finished_at": str,
        },
        pk="id",
        foreign_keys=[("discussion_id", "discussions", "id")],
    )
    db.table("turns").create_index(["discussion_id", "seq"])
    db.table("turns").create_index(["provider", "model"])


@migration
def m002_provider_health(db: sqlite_utils.Database) -> None:
    db.table("provider_health").create(
        {"provider": str, "status": str, "message": str, "until": float, "updated_at": str},
        pk="provider",
    )


@migration
def m003_posts(db: sqlite_utils.Database) -> None:
    # Platform messages a front-end has open for a running discussion, so that a
    # restart can mark each one interrupted instead of leaving it hanging.
    db.table("posts").create(
        {
            "id": int,
            "discussion_id": str,
            "turn_id": str,
            "front_end": str,
            "destination": str,
            "ref": str,
            "open": int,
            "created_at": str,
        },
        pk="id",
    )
    db.table("posts").create_index(["front_end", "open"])
    db.table("posts").create_index(["turn_id"])


@migration
def m004_post_text_and_meta(db: sqlite_utils.Database) -> None:
    # The text a platform message last showed, so that a restart can re-edit it
    # with an "interrupted" note without losing what the reader had already seen.
    db.table("posts").add_column("text", str)
    # Small facts a front-end keeps across restarts (e.g. the hash of the command
    # table last synced to Discord, so commands sync only when they changed).
    db.table("meta").create({"key": str, "value": str, "updated_at": str}, pk="key")


@migration
def m005_instances(db: sqlite_utils.Database) -> None:
    # Every process that opens the store, with a heartbeat; each discussion records
    # which one owns it, so that recovery touches only runs whose owner is gone.
    db.table("instances").create(
        {"id": str, "host": str, "pid": int, "started_at": str, "heartbeat": float}, pk="id"
    )
    db.table("discussions").add_column("owner", str)
    db.table("discussions").create_index(["status", "front_end"])
    db.table("posts").create_index(["discussion_id"])


@migration
def m006_health_fingerprint(db: sqlite_utils.Database) -> None:
    # A pause belongs to one configuration of a provider: a short hash of its base URL
    # and key (never the key), so that fixing either is tried at once.
    db.table("provider_health").add_column("fingerprint", str)


@migration
def m007_governance(db: sqlite_utils.Database) -> None:
    # Who asked where, so that policy, budgets, retention and /forget can find a discussion.
    for column in ("workspace", "channel", "user", "text_erased_at"):
        db.table("discussions").add_column(column, str)
    db.table("discussions").create_index(["workspace", "created_at"])
    db.table("discussions").create_index(["workspace", "user"])
    # Policy: allow/deny rules per workspace or channel ('' = the whole workspace), for
    # everyone ('' subjects) or for some people and roles.
    db.table("policy_rules").create(
        {
            "id": int,
            "workspace": str,
            "channel": str,
            "effect": str,
            "dimension": str,
            "pattern": str,
            "subjects": str,
            "created_by": str,
            "created_at": str,
        },
        pk="id",
    )
    db.table("policy_rules").create_index(["workspace"])
    db.table("channel_defaults").create(
        {"workspace": str, "channel": str, "providers": str, "personas": str, "mode": str,
         "updated_by": str, "updated_at": str},
        pk=("workspace", "channel"),
    )
    db.table("workspace_settings").create(
        {"workspace": str, "retention_days": int, "own_keys_count": int, "swept_at": str,
         "updated_by": str, "updated_at": str},
        pk="workspace",
    )
    db.table("audit").create(
        {"id": int, "workspace": str, "actor": str, "action": str, "target": str,
         "before": str, "after": str, "at": str},
        pk="id",
    )
    db.table("audit").create_index(["workspace", "id"])
    # Budgets: a cap per scope ('workspace' with target '', 'channel' with its id, 'user'
    # with an id or '*' for everyone without their own).
    db.table("budgets").create(
        {"workspace": str, "scope": str, "target": str, "daily_usd": float, "monthly_usd": float,
         "soft_pct": int, "updated_by": str, "updated_at": str},
        pk=("workspace", "scope", "target"),
    )
    # Spend: one row per discussion, reserved at its worst case, settled at its cost.
    db.table("spend").create(
        {"id": str, "workspace": str, "channel": str, "user": str, "discussion_id": str,
         "estimate_usd": float, "actual_usd": float, "estimated": int, "counted": int,
         "status": str, "owner": str, "free": str, "day": str, "month": str, "created_at": str,
         "settled_at": str},
        pk="id",
    )
    db.table("spend").create_index(["status"])
    db.table("spend").create_index(["discussion_id"])
    db.table("spend").create_index(["workspace", "month"])
    # Running totals per scope and period, kept in the same transaction as spend rows:
    # a budget check reads a handful of rows, however much was spent.
    db.table("spend_totals").create(
        {"workspace": str, "scope": str, "target": str, "period": str, "usd": float},
        pk=("workspace", "scope", "target", "period"),
    )
    # A soft-threshold alert sent once per scope and period.
    db.table("alerts").create(
        {"workspace": str, "scope": str, "target": str, "period": str, "sent_at": str},
        pk=("workspace", "scope", "target", "period"),
    )
    # Own provider keys: AES-GCM ciphertext bound to its row; never the key in clear.
    db.table("provider_keys").create(
        {"workspace": str, "user": str, "provider": str, "ciphertext": str, "key_id": str,
         "last4": str, "set_by": str, "set_at": str},
        pk=("workspace", "user", "provider"),
    )
    # People the platform said were admins (Slack admins, Discord Manage Server) when they
    # used Parley: soft alerts reach them too.
    db.table("admins_seen").create({"workspace": str, "user": str, "seen_at": str}, pk=("workspace", "user"))
    db.table("panels").create(
        {"workspace": str, "name": str, "options": str, "created_by": str, "created_at": str,
         "updated_by": str, "updated_at": str},
        pk=("workspace", "name"),
    )


@migration
def m008_thread_actions(db: sqlite_utils.Database) -> None:
    # Why a turn stopped (a provider's finish reason: "length" means cut by max_tokens),
    # for the "Continue" action under an answer.
    db.table("turns").add_column("finish_reason", str)
    # 👍/👎 on an answer and the vote for the best answer of a compare: one per person,
    # changeable; the leaderboard is computed from them.
    db.table("feedback").create(
        {"turn_id": str, "user": str, "workspace": str, "value": int, "at": str}, pk=("turn_id", "user")
    )
    db.table("feedback").create_index(["workspace"])
    db.table("votes").create(
        {"discussion_id": str, "user": str, "workspace": str, "turn_id": str, "at": str},
        pk=("discussion_id", "user"),
    )
    db.table("votes").create_index(["workspace"])
    # A click acted on: a second click of the same button by the same person within
    # seconds (a double click, a redelivery, another replica) does nothing.
    db.table("action_claims").create({"key": str, "choice": str, "at": float}, pk="key")
    # A Discord poll for the best answer: which answer id is which turn.
    db.table("polls").create({"message_id": str, "discussion_id": str, "answers": str, "at": str}, pk="message_id")
    # Follow-ups without a mention in Parley's own threads: off unless an admin turns it on.
    db.table("workspace_settings").add_column("followups", int)


@migration
def m009_slack_installations(db: sqlite_utils.Database) -> None:
    # Slack installed in many workspaces through OAuth (bots/slack/oauth.py): each workspace's
    # bot, and who installed it. Tokens (and an incoming webhook's URL) are AES-GCM ciphertext
    # sealed with PARLEY_SECRET_KEY and bound to their row and column; never in clear. Keyed by
    # the app's client id, then the workspace ('' for none: an org-wide install has no team).
    db.table("slack_bots").create(
        {"client_id": str, "team_id": str, "enterprise_id": str, "app_id": str, "enterprise_name": str,
         "team_name": str, "bot_id": str, "bot_user_id": str, "bot_scopes": str, "bot_token": str,
         "bot_refresh_token": str, "bot_token_expires_at": int, "is_enterprise_install": int,
         "key_id": str, "installed_at": float},
        pk=("client_id", "team_id", "enterprise_id"),
    )
    db.table("slack_installations").create(
        {"client_id": str, "team_id": str, "enterprise_id": str, "user_id": str, "app_id": str,
         "enterprise_name": str, "enterprise_url": str, "team_name": str, "user_token": str,
         "user_scopes": str, "user_refresh_token": str, "user_token_expires_at": int,
         "incoming_webhook_url": str, "incoming_webhook_channel": str, "incoming_webhook_channel_id": str,
         "incoming_webhook_configuration_url": str, "is_enterprise_install": int, "token_type": str,
         "key_id": str, "installed_at": float},
        pk=("client_id", "team_id", "enterprise_id", "user_id"),
    )
    # The OAuth state of an install under way: its SHA-256 only, used once, until it expires.
    db.table("slack_oauth_states").create({"digest": str, "expires_at": float}, pk="digest")
    db.table("slack_oauth_states").create_index(["expires_at"])


@migration
def m010_takeover(db: sqlite_utils.Database) -> None:
    # When each process started (its boot and start tick on Linux), so that a new process that
    # got a dead one's pid (a restarted container is pid 1 again) is not taken for it.
    db.table("instances").add_column("boot", str)
    # The live process that took over an open message of a dead one and is editing it: another
    # survivor leaves it alone unless that process dies too.
    db.table("posts").add_column("claimer", str)
    # A request to stop a running discussion, from whichever replica received it; the owner
    # watches for it (at once through Redis, otherwise at its next check).
    db.table("discussions").add_column("stop_requested", str)
