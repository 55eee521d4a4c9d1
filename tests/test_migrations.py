"""Schema migrations (the simonw/llm pattern, cf. its tests/test_migrate.py).

- The schema a fresh database gets is written out literally below: any change to it
  must update the snapshot on purpose.
- A database left at any earlier point of ``MIGRATIONS`` (0, 1, … of them applied)
  upgrades to exactly that schema when ``Store`` opens it, records every migration
  once, and keeps the rows it already had.
- Migrating again applies nothing; migration names are unique and in order.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import sqlite_utils

from core.migrations import MIGRATIONS
from core.store import Store

NAMES = [fn.__name__ for fn in MIGRATIONS]
OLD_STAMP = "2025-01-02T03:04:05.000+00:00"  # applied_at of the migrations applied "long ago"


def schema(db: sqlite_utils.Database) -> dict[str, Any]:
    """The schema as SQLite reports it (not the CREATE text, which ``add_column`` rewrites).

    Per table: columns in order with their types, the primary key, the indexes made
    on purpose with their columns (a primary key's automatic index is covered by
    ``pk``), and the foreign keys. Tables SQLite keeps for itself are left out.
    """
    tables: dict[str, Any] = {}
    for name in sorted(db.table_names()):
        if name.startswith("sqlite_"):
            continue
        t = db.table(name)
        tables[name] = {
            "columns": [
                f"{c.name} {c.type}"
                + (" NOT NULL" if c.notnull else "")
                + (f" DEFAULT {c.default_value}" if c.default_value is not None else "")
                for c in t.columns
            ],
            "pk": t.pks,
            "indexes": sorted(
                f"{'UNIQUE ' if i.unique else ''}{i.name} ({', '.join(i.columns)})"
                for i in t.indexes
                if i.origin != "pk"
            ),
            "foreign_keys": sorted(f"{fk.column} -> {fk.other_table}.{fk.other_column}" for fk in t.foreign_keys),
        }
    return {"tables": tables, "views": sorted(db.view_names()), "triggers": sorted(t.name for t in db.triggers)}


EXPECTED_SCHEMA: dict[str, Any] = {'tables': {'_migrations': {'columns': ['name TEXT', 'applied_at TEXT'],
                            'foreign_keys': [],
                            'indexes': [],
                            'pk': ['name']},
            'action_claims': {'columns': ['key TEXT', 'choice TEXT', 'at REAL'],
                              'foreign_keys': [],
                              'indexes': [],
                              'pk': ['key']},
            'admins_seen': {'columns': ['workspace TEXT', 'user TEXT', 'seen_at TEXT'],
                            'foreign_keys': [],
                            'indexes': [],
                            'pk': ['workspace', 'user']},
            'alerts': {'columns': ['workspace TEXT',
                                   'scope TEXT',
                                   'target TEXT',
                                   'period TEXT',
                                   'sent_at TEXT'],
                       'foreign_keys': [],
                       'indexes': [],
                       'pk': ['workspace', 'scope', 'target', 'period']},
            'audit': {'columns': ['id INTEGER',
                                  'workspace TEXT',
                                  'actor TEXT',
                                  'action TEXT',
                                  'target TEXT',
                                  'before TEXT',
                                  'after TEXT',
                                  'at TEXT'],
                      'foreign_keys': [],
                      'indexes': ['idx_audit_workspace_id (workspace, id)'],
                      'pk': ['id']},
            'budgets': {'columns': ['workspace TEXT',
                                    'scope TEXT',
                                    'target TEXT',
                                    'daily_usd REAL',
                                    'monthly_usd REAL',
                                    'soft_pct INTEGER',
                                    'updated_by TEXT',
                                    'updated_at TEXT'],
                        'foreign_keys': [],
                        'indexes': [],
                        'pk': ['workspace', 'scope', 'target']},
            'channel_defaults': {'columns': ['workspace TEXT',
                                             'channel TEXT',
                                             'providers TEXT',
                                             'personas TEXT',
                                             'mode TEXT',
                                             'updated_by TEXT',
                                             'updated_at TEXT'],
                                 'foreign_keys': [],
                                 'indexes': [],
                                 'pk': ['workspace', 'channel']},
            'discussions': {'columns': ['id TEXT',
                                        'conversation TEXT',
                                        'mode TEXT',
                                        'command TEXT',
                                        'prompt TEXT',
                                        'options TEXT',
                                        'status TEXT',
                                        'message TEXT',
                                        'front_end TEXT',
                                        'cost_usd REAL',
                                        'created_at TEXT',
                                        'finished_at TEXT',
                                        'owner TEXT',
                                        'workspace TEXT',
                                        'channel TEXT',
                                        'user TEXT',
                                        'text_erased_at TEXT',
                                        'stop_requested TEXT'],
                            'foreign_keys': [],
                            'indexes': ['idx_discussions_conversation_created_at (conversation, created_at)',
                                        'idx_discussions_status (status)',
                                        'idx_discussions_status_front_end (status, front_end)',
                                        'idx_discussions_workspace_created_at (workspace, created_at)',
                                        'idx_discussions_workspace_user (workspace, user)'],
                            'pk': ['id']},
            'feedback': {'columns': ['turn_id TEXT',
                                     'user TEXT',
                                     'workspace TEXT',
                                     'value INTEGER',
                                     'at TEXT'],
                         'foreign_keys': [],
                         'indexes': ['idx_feedback_workspace (workspace)'],
                         'pk': ['turn_id', 'user']},
            'instances': {'columns': ['id TEXT',
                                      'host TEXT',
                                      'pid INTEGER',
                                      'started_at TEXT',
                                      'heartbeat REAL',
                                      'boot TEXT'],
                          'foreign_keys': [],
                          'indexes': [],
                          'pk': ['id']},
            'meta': {'columns': ['key TEXT', 'value TEXT', 'updated_at TEXT'],
                     'foreign_keys': [],
                     'indexes': [],
                     'pk': ['key']},
            'panels': {'columns': ['workspace TEXT',
                                   'name TEXT',
                                   'options TEXT',
                                   'created_by TEXT',
                                   'created_at TEXT',
                                   'updated_by TEXT',
                                   'updated_at TEXT'],
                       'foreign_keys': [],
                       'indexes': [],
                       'pk': ['workspace', 'name']},
            'policy_rules': {'columns': ['id INTEGER',
                                         'workspace TEXT',
                                         'channel TEXT',
                                         'effect TEXT',
                                         'dimension TEXT',
                                         'pattern TEXT',
                                         'subjects TEXT',
                                         'created_by TEXT',
                                         'created_at TEXT'],
                             'foreign_keys': [],
                             'indexes': ['idx_policy_rules_workspace (workspace)'],
                             'pk': ['id']},
            'polls': {'columns': ['message_id TEXT', 'discussion_id TEXT', 'answers TEXT', 'at TEXT'],
                      'foreign_keys': [],
                      'indexes': [],
                      'pk': ['message_id']},
            'posts': {'columns': ['id INTEGER',
                                  'discussion_id TEXT',
                                  'turn_id TEXT',
                                  'front_end TEXT',
                                  'destination TEXT',
                                  'ref TEXT',
                                  'open INTEGER',
                                  'created_at TEXT',
                                  'text TEXT',
                                  'claimer TEXT'],
                      'foreign_keys': [],
                      'indexes': ['idx_posts_discussion_id (discussion_id)',
                                  'idx_posts_front_end_open (front_end, open)',
                                  'idx_posts_turn_id (turn_id)'],
                      'pk': ['id']},
            'provider_health': {'columns': ['provider TEXT',
                                            'status TEXT',
                                            'message TEXT',
                                            'until REAL',
                                            'updated_at TEXT',
                                            'fingerprint TEXT'],
                                'foreign_keys': [],
                                'indexes': [],
                                'pk': ['provider']},
            'provider_keys': {'columns': ['workspace TEXT',
                                          'user TEXT',
                                          'provider TEXT',
                                          'ciphertext TEXT',
                                          'key_id TEXT',
                                          'last4 TEXT',
                                          'set_by TEXT',
                                          'set_at TEXT'],
                              'foreign_keys': [],
                              'indexes': [],
                              'pk': ['workspace', 'user', 'provider']},
            'slack_bots': {'columns': ['client_id TEXT',
                                       'team_id TEXT',
                                       'enterprise_id TEXT',
                                       'app_id TEXT',
                                       'enterprise_name TEXT',
                                       'team_name TEXT',
                                       'bot_id TEXT',
                                       'bot_user_id TEXT',
                                       'bot_scopes TEXT',
                                       'bot_token TEXT',
                                       'bot_refresh_token TEXT',
                                       'bot_token_expires_at INTEGER',
                                       'is_enterprise_install INTEGER',
                                       'key_id TEXT',
                                       'installed_at REAL'],
                           'foreign_keys': [],
                           'indexes': [],
                           'pk': ['client_id', 'team_id', 'enterprise_id']},
            'slack_installations': {'columns': ['client_id TEXT',
                                                'team_id TEXT',
                                                'enterprise_id TEXT',
                                                'user_id TEXT',
                                                'app_id TEXT',
                                                'enterprise_name TEXT',
                                                'enterprise_url TEXT',
                                                'team_name TEXT',
                                                'user_token TEXT',
                                                'user_scopes TEXT',
                                                'user_refresh_token TEXT',
                                                'user_token_expires_at INTEGER',
                                                'incoming_webhook_url TEXT',
                                                'incoming_webhook_channel TEXT',
                                                'incoming_webhook_channel_id TEXT',
                                                'incoming_webhook_configuration_url TEXT',
                                                'is_enterprise_install INTEGER',
                                                'token_type TEXT',
                                                'key_id TEXT',
                                                'installed_at REAL'],
                                    'foreign_keys': [],
                                    'indexes': [],
                                    'pk': ['client_id', 'team_id', 'enterprise_id', 'user_id']},
            'slack_oauth_states': {'columns': ['digest TEXT', 'expires_at REAL'],
                                   'foreign_keys': [],
                                   'indexes': ['idx_slack_oauth_states_expires_at (expires_at)'],
                                   'pk': ['digest']},
            'spend': {'columns': ['id TEXT',
                                  'workspace TEXT',
                                  'channel TEXT',
                                  'user TEXT',
                                  'discussion_id TEXT',
                                  'estimate_usd REAL',
                                  'actual_usd REAL',
                                  'estimated INTEGER',
                                  'counted INTEGER',
                                  'status TEXT',
                                  'owner TEXT',
                                  'free TEXT',
                                  'day TEXT',
                                  'month TEXT',
                                  'created_at TEXT',
                                  'settled_at TEXT'],
                      'foreign_keys': [],
                      'indexes': ['idx_spend_discussion_id (discussion_id)',
                                  'idx_spend_status (status)',
                                  'idx_spend_workspace_month (workspace, month)'],
                      'pk': ['id']},
            'spend_totals': {'columns': ['workspace TEXT',
                                         'scope TEXT',
                                         'target TEXT',
                                         'period TEXT',
                                         'usd REAL'],
                             'foreign_keys': [],
                             'indexes': [],
                             'pk': ['workspace', 'scope', 'target', 'period']},
            'turns': {'columns': ['id TEXT',
                                  'discussion_id TEXT',
                                  'seq INTEGER',
                                  'stage TEXT',
                                  'round INTEGER',
                                  'persona TEXT',
                                  'provider TEXT',
                                  'model TEXT',
                                  'prompt TEXT',
                                  'text TEXT',
                                  'reasoning_chars INTEGER',
                                  'status TEXT',
                                  'error_kind TEXT',
                                  'error_message TEXT',
                                  'input_tokens INTEGER',
                                  'output_tokens INTEGER',
                                  'cached_tokens INTEGER',
                                  'usage_estimated INTEGER',
                                  'cost_usd REAL',
                                  'ttft_ms REAL',
                                  'latency_ms REAL',
                                  'started_at TEXT',
                                  'finished_at TEXT',
                                  'finish_reason TEXT'],
                      'foreign_keys': ['discussion_id -> discussions.id'],
                      'indexes': ['idx_turns_discussion_id_seq (discussion_id, seq)',
                                  'idx_turns_provider_model (provider, model)'],
                      'pk': ['id']},
            'votes': {'columns': ['discussion_id TEXT',
                                  'user TEXT',
                                  'workspace TEXT',
                                  'turn_id TEXT',
                                  'at TEXT'],
                      'foreign_keys': [],
                      'indexes': ['idx_votes_workspace (workspace)'],
                      'pk': ['discussion_id', 'user']},
            'workspace_settings': {'columns': ['workspace TEXT',
                                               'retention_days INTEGER',
                                               'own_keys_count INTEGER',
                                               'swept_at TEXT',
                                               'updated_by TEXT',
                                               'updated_at TEXT',
                                               'followups INTEGER'],
                                   'foreign_keys': [],
                                   'indexes': [],
                                   'pk': ['workspace']}},
 'triggers': [],
 'views': []}


# A little of what a running Parley writes, per table (parents before children). Each
# row is cut down to the columns its table has at the point of the history under test.
SAMPLE_ROWS: dict[str, list[dict[str, Any]]] = {
    "discussions": [
        {
            "id": "d0c0ffee0001",
            "conversation": "slack:C1:1800000100.000100",
            "mode": "compare",
            "command": "compare",
            "prompt": "Where should we launch?",
            "options": '{"providers": ["openai", "kimi"], "personas": ["riley"]}',
            "status": "partial",
            "message": None,
            "front_end": "slack",
            "cost_usd": 0.00042,
            "created_at": "2025-01-02T03:04:05.123+00:00",
            "finished_at": "2025-01-02T03:04:09.456+00:00",
        },
        {
            "id": "d0c0ffee0002",
            "conversation": None,
            "mode": "single",
            "command": "ask",
            "prompt": "Price of the team plan?",
            "options": "{}",
            "status": "running",
            "message": None,
            "front_end": "discord",
            "cost_usd": None,
            "created_at": "2025-01-02T04:00:00.000+00:00",
            "finished_at": None,
        },
    ],
    "turns": [
        {
            "id": "t0c0ffee0001",
            "discussion_id": "d0c0ffee0001",
            "seq": 1,
            "stage": "answer",
            "round": 0,
            "persona": "riley",
            "provider": "openai",
            "model": "gpt-4.1-mini",
            "prompt": "Where should we launch?",
            "text": "Launch on Tuesday with a teaser thread.",
            "reasoning_chars": 0,
            "status": "finished",
            "error_kind": None,
            "error_message": None,
            "input_tokens": 420,
            "output_tokens": 9,
            "cached_tokens": 0,
            "usage_estimated": 0,
            "cost_usd": 0.00042,
            "ttft_ms": 312.5,
            "latency_ms": 980.0,
            "started_at": "2025-01-02T03:04:05.200+00:00",
            "finished_at": "2025-01-02T03:04:06.180+00:00",
        },
        {
            "id": "t0c0ffee0002",
            "discussion_id": "d0c0ffee0001",
            "seq": 2,
            "stage": "answer",
            "round": 0,
            "persona": "riley",
            "provider": "kimi",
            "model": "kimi-k2-0905-preview",
            "prompt": "Where should we launch?",
            "text": "",
            "reasoning_chars": 0,
            "status": "failed",
            "error_kind": "quota_exhausted",
            "error_message": "Moonshot Kimi says the account's quota or balance is exhausted.",
            "input_tokens": 0,
            "output_tokens": 0,
            "cached_tokens": 0,
            "usage_estimated": 1,
            "cost_usd": 0.0,
            "ttft_ms": None,
            "latency_ms": 120.0,
            "started_at": "2025-01-02T03:04:05.210+00:00",
            "finished_at": "2025-01-02T03:04:05.330+00:00",
        },
    ],
    "provider_health": [
        {
            "provider": "kimi",
            "status": "quota_exhausted",
            "message": "Top up or raise the limit in the vendor's console.",
            "until": 1_900_000_000.0,
            "updated_at": "2025-01-02T03:04:05.330+00:00",
        },
    ],
    "posts": [
        {
            "id": 1,
            "discussion_id": "d0c0ffee0002",
            "turn_id": None,
            "front_end": "discord",
            "destination": "1577477455705276444",
            "ref": '{"kind": "thread", "channel": 1577477455705276444}',
            "open": 1,
            "created_at": "2025-01-02T04:00:00.100+00:00",
            "text": None,
        },
        {
            "id": 2,
            "discussion_id": "d0c0ffee0001",
            "turn_id": "t0c0ffee0001",
            "front_end": "slack",
            "destination": "C1:1800000100.000100",
            "ref": '{"kind": "message", "channel": "C1", "ts": "1800000101.000200"}',
            "open": 0,
            "created_at": "2025-01-02T03:04:05.250+00:00",
            "text": "`openai/gpt-4.1-mini`\n\nLaunch on Tuesday with a teaser thread.",
        },
    ],
    "meta": [
        {"key": "discord.commands.global", "value": "5f2b9c0e", "updated_at": "2025-01-02T03:00:00.000+00:00"},
    ],
}


def seed(db: sqlite_utils.Database) -> dict[str, list[dict[str, Any]]]:
    """Insert the sample rows into the tables that exist now; return what was inserted."""
    inserted: dict[str, list[dict[str, Any]]] = {}
    for table, rows in SAMPLE_ROWS.items():
        t = db.table(table)
        if not t.exists():
            continue
        columns = set(t.columns_dict)
        cut = [{k: v for k, v in row.items() if k in columns} for row in rows]
        t.insert_all(cut)
        inserted[table] = cut
    return inserted


def fresh_schema(tmp_path: Path) -> dict[str, Any]:
    store = Store(tmp_path / "fresh.db")
    try:
        return schema(store.db)
    finally:
        store.close()


def test_a_fresh_database_has_the_expected_schema(tmp_path: Path) -> None:
    store = Store(tmp_path / "parley.db")
    try:
        assert schema(store.db) == EXPECTED_SCHEMA
        assert [r["name"] for r in store.db.query("select name from _migrations order by rowid")] == NAMES
    finally:
        store.close()


@pytest.mark.parametrize(
    "applied", range(len(MIGRATIONS)), ids=lambda k: f"after_{NAMES[k - 1]}" if k else "none_applied"
)
def test_every_earlier_database_upgrades_to_the_current_schema_and_keeps_its_rows(
    tmp_path: Path, applied: int
) -> None:
    path = tmp_path / "old.db"
    db = sqlite_utils.Database(path)
    # What an older Parley did: the same bookkeeping as Store.migrate, with fewer migrations.
    db.table("_migrations").create({"name": str, "applied_at": str}, pk="name", if_not_exists=True)
    for fn in MIGRATIONS[:applied]:
        with db.conn:
            fn(db)
            db.table("_migrations").insert({"name": fn.__name__, "applied_at": OLD_STAMP})
    before = seed(db)
    assert bool(before) == (applied > 0)  # from the first migration on, there are rows to keep
    db.close()

    store = Store(path)  # runs the rest
    try:
        assert schema(store.db) == fresh_schema(tmp_path)
        recorded = [(r["name"], r["applied_at"]) for r in store.db.query("select * from _migrations")]
        counts = Counter(name for name, _ in recorded)
        assert sorted(counts) == sorted(NAMES) and set(counts.values()) == {1}  # each exactly once
        stamps = dict(recorded)
        assert all(stamps[n] == OLD_STAMP for n in NAMES[:applied])  # the old ones were not run again
        assert all(stamps[n] != OLD_STAMP for n in NAMES[applied:])
        for table, rows in before.items():
            pks = store.db.table(table).pks
            now = {tuple(r[k] for k in pks): r for r in store.db.table(table).rows}
            assert len(now) == len(rows), table
            for row in rows:
                kept = now[tuple(row[k] for k in pks)]
                assert {k: kept[k] for k in row} == row, table
        assert list(store.db.execute("pragma foreign_key_check").fetchall()) == []
    finally:
        store.close()


def test_migrating_again_applies_nothing(tmp_path: Path) -> None:
    path = tmp_path / "parley.db"
    store = Store(path)
    try:
        recorded = list(store.db.query("select name, applied_at from _migrations order by name"))
        assert store.migrate() == []
        assert list(store.db.query("select name, applied_at from _migrations order by name")) == recorded
    finally:
        store.close()
    again = Store(path)  # a restart
    try:
        assert again.migrate() == []
        assert list(again.db.query("select name, applied_at from _migrations order by name")) == recorded
        assert schema(again.db) == EXPECTED_SCHEMA
    finally:
        again.close()


def test_migration_names_are_unique_and_numbered_in_order() -> None:
    assert NAMES, "no migrations"
    assert len(set(NAMES)) == len(NAMES)
    # append-only: m001_…, m002_…, … so that a migration inserted or reordered shows up here
    assert [re.match(r"m(\d{3})_\w+$", n) is not None for n in NAMES] == [True] * len(NAMES)
    assert [int(n[1:4]) for n in NAMES] == list(range(1, len(NAMES) + 1))


def test_a_failing_migration_leaves_no_half_made_schema(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """All pending migrations apply in one transaction: if one fails, none is applied,
    and the next start (with the fault fixed) applies them all."""
    import core.store

    def m999_broken(db: sqlite_utils.Database) -> None:
        db.table("half_made").create({"id": int}, pk="id")
        raise RuntimeError("disk full")

    monkeypatch.setattr(core.store, "MIGRATIONS", [*MIGRATIONS, m999_broken])
    path = tmp_path / "p.db"
    with pytest.raises(RuntimeError, match="disk full"):
        Store(path)
    db = sqlite_utils.Database(path)
    assert db.table_names() == []  # not even the migrations that worked, nor half of the broken one
    db.conn.close()
    monkeypatch.setattr(core.store, "MIGRATIONS", MIGRATIONS)
    store = Store(path)
    assert [r["name"] for r in store.db.query("select name from _migrations order by rowid")] == NAMES
    assert schema(store.db) == EXPECTED_SCHEMA
    store.close()
