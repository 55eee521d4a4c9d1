"""The only module that touches SQLite.

Writes happen at turn boundaries (start, finish), never per streamed delta, so
the synchronous sqlite-utils calls stay far off the hot path. WAL mode lets the
CLI read usage while a bot writes.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlite_utils

from core.errors import ErrorKind, redact
from core.events import ErrorInfo, TurnInfo, TurnUsage
from core.migrations import MIGRATIONS


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def new_id() -> str:
    return uuid.uuid4().hex[:12]


@dataclass(slots=True)
class HealthMark:
    status: str
    message: str
    until: float


@dataclass(slots=True)
class PastTurn:
    persona: str | None
    provider: str
    model: str
    stage: str
    text: str


@dataclass(slots=True)
class PastDiscussion:
    id: str
    mode: str
    prompt: str
    turns: list[PastTurn]


class Store:
    def __init__(self, path: Path | str) -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(path), check_same_thread=False)
        self.db = sqlite_utils.Database(conn)
        if str(path) != ":memory:":
            self.db.enable_wal()
            # WAL + NORMAL: durable across application crashes, and no fsync per
            # commit blocking the event loop at every turn boundary.
            self.db.execute("PRAGMA synchronous = NORMAL")
        self.db.execute("PRAGMA busy_timeout = 5000")
        self.db.execute("PRAGMA foreign_keys = ON")
        self.migrate()

    # --- schema -------------------------------------------------------------
    def migrate(self) -> list[str]:
        self.db.table("_migrations").create({"name": str, "applied_at": str}, pk="name", if_not_exists=True)
        done = {r["name"] for r in self.db.table("_migrations").rows}
        applied = []
        for fn in MIGRATIONS:
            if fn.__name__ in done:
                continue
            with self.db.conn:
                fn(self.db)
                self.db.table("_migrations").insert({"name": fn.__name__, "applied_at": now_iso()})
            applied.append(fn.__name__)
        return applied

    def close(self) -> None:
        self.db.conn.close()

    # --- discussions ----------------------------------------------------------
    def start_discussion(
        self,
        *,
        mode: str,
        command: str,
        prompt: str,
        options: dict[str, Any],
        conversation: str | None,
        front_end: str,
        discussion_id: str | None = None,
    ) -> str:
        did = discussion_id or new_id()
        self.db.table("discussions").insert(
            {
                "id": did,
                "conversation": conversation,
                "mode": mode,
                "command": command,
                "prompt": prompt,
                "options": json.dumps(options),
                "status": "running",
                "front_end": front_end,
                "created_at": now_iso(),
            }
        )
        return did

    def finish_discussion(self, did: str, status: str, cost_usd: float, message: str | None = None) -> None:
        self.db.table("discussions").update(
            did,
            {
                "status": status,
                "cost_usd": cost_usd,
                "message": redact(message) if message else None,
                "finished_at": now_iso(),
            },
        )

    def discussion(self, did: str) -> dict[str, Any]:
        return dict(self.db.table("discussions").get(did))

    def mark_interrupted(self, front_ends: Iterable[str]) -> list[str]:
        """At start-up of a front-end: its discussions still 'running' were cut off by a restart.

        Scoped to the front-ends this process serves, so that starting the console
        never touches a discussion a running Slack bot owns.
        """
        fe = list(front_ends)
        marks = ",".join("?" * len(fe))
        ids = [
            r["id"]
            for r in self.db.query(
                f"select id from discussions where status='running' and front_end in ({marks})", fe
            )
        ]
        if not ids:
            return []
        msg = "Interrupted: Parley restarted while this discussion was running. Ask again to rerun it."
        idm = ",".join("?" * len(ids))
        with self.db.conn:
            self.db.execute(
                "update turns set status='failed', error_kind=?, error_message=?, finished_at=? "
                f"where status='running' and discussion_id in ({idm})",
                [str(ErrorKind.INTERRUPTED), msg, now_iso(), *ids],
            )
            self.db.execute(
                f"update discussions set status='interrupted', message=?, finished_at=? where id in ({idm})",
                [msg, now_iso(), *ids],
            )
        return ids

    # --- turns ------------------------------------------------------------------
    def start_turn(self, did: str, seq: int, turn: TurnInfo, prompt: str) -> None:
        self.db.table("turns").insert(
            {
                "id": turn.turn_id,
                "discussion_id": did,
                "seq": seq,
                "stage": turn.stage,
                "round": turn.round,
                "persona": turn.persona_id,
                "provider": turn.provider,
                "model": turn.model,
                "prompt": prompt,
                "status": "running",
                "started_at": now_iso(),
            }
        )

    def finish_turn(
        self,
        turn_id: str,
        *,
        status: str,
        text: str,
        usage: TurnUsage,
        ttft_ms: float | None,
        latency_ms: float,
        reasoning_chars: int = 0,
        error: ErrorInfo | None = None,
    ) -> None:
        self.db.table("turns").update(
            turn_id,
            {
                "status": status,
                "text": text,
                "reasoning_chars": reasoning_chars,
                "error_kind": error.kind if error else None,
                "error_message": redact(error.message) if error else None,
                "input_tokens": usage.input_tokens,
                "output_tokens": usage.output_tokens,
                "cached_tokens": usage.cached_tokens,
                "usage_estimated": int(usage.estimated),
                "cost_usd": usage.cost_usd,
                "ttft_ms": ttft_ms,
                "latency_ms": latency_ms,
                "finished_at": now_iso(),
            },
        )

    def turns(self, did: str) -> list[dict[str, Any]]:
        return list(self.db.table("turns").rows_where("discussion_id = ?", [did], order_by="seq"))

    # --- conversations (follow-ups) ---------------------------------------------
    def history(self, conversation: str, limit: int = 20) -> list[PastDiscussion]:
        """Earlier discussions of a conversation, oldest first, with their finished turns."""
        rows = list(
            self.db.query(
                "select id, mode, prompt from discussions where conversation = ? "
                "order by created_at desc limit ?",
                [conversation, limit],
            )
        )
        out = []
        for r in reversed(rows):
            turns = [
                PastTurn(t["persona"], t["provider"], t["model"], t["stage"], t["text"] or "")
                for t in self.db.query(
                    "select persona, provider, model, stage, text from turns "
                    "where discussion_id = ? and status = 'finished' order by seq",
                    [r["id"]],
                )
            ]
            out.append(PastDiscussion(r["id"], r["mode"], r["prompt"], turns))
        return out

    # --- usage -----------------------------------------------------------------------
    def usage_summary(self) -> list[dict[str, Any]]:
        return list(
            self.db.query(
                "select provider, model, count(*) as turns, "
                "sum(status = 'failed') as failed, "
                "coalesce(sum(input_tokens), 0) as input_tokens, "
                "coalesce(sum(output_tokens), 0) as output_tokens, "
                "coalesce(sum(cached_tokens), 0) as cached_tokens, "
                "coalesce(sum(usage_estimated), 0) as estimated_turns, "
                "round(coalesce(sum(cost_usd), 0), 6) as cost_usd "
                "from turns group by provider, model order by cost_usd desc, provider, model"
            )
        )

    # --- provider health -----------------------------------------------------------
    def set_health(self, provider: str, status: str, message: str, until: float) -> None:
        self.db.table("provider_health").upsert(
            {
                "provider": provider,
                "status": status,
                "message": redact(message),
                "until": until,
                "updated_at": now_iso(),
            },
            pk="provider",
        )

    def health_marks(self) -> dict[str, HealthMark]:
        now = time.time()
        return {
            r["provider"]: HealthMark(r["status"], r["message"], r["until"])
            for r in self.db.table("provider_health").rows_where("until > ?", [now])
        }

    def clear_health(self, provider: str) -> None:
        self.db.execute("delete from provider_health where provider = ?", [provider])

    # --- platform posts ----------------------------------------------------------------
    def record_post(
        self, discussion_id: str, turn_id: str | None, front_end: str, destination: str, ref: str
    ) -> int:
        table = self.db.table("posts")
        table.insert(
            {
                "discussion_id": discussion_id,
                "turn_id": turn_id,
                "front_end": front_end,
                "destination": destination,
                "ref": ref,
                "open": 1,
                "created_at": now_iso(),
            }
        )
        return int(table.last_pk or 0)

    def close_posts(self, ids: Iterable[int]) -> None:
        ids = list(ids)
        if ids:
            self.db.execute(f"update posts set open = 0 where id in ({','.join('?' * len(ids))})", ids)

    def update_post_text(self, post_id: int, text: str) -> None:
        """Remember what an open platform message shows now (for the restart note)."""
        self.db.execute("update posts set text = ? where id = ?", [redact(text), post_id])

    def update_post_ref(self, post_id: int, ref: str) -> None:
        """How to find an open platform message changed (a stream became a plain message)."""
        self.db.execute("update posts set ref = ? where id = ?", [ref, post_id])

    def open_posts(self, front_end: str) -> list[dict[str, Any]]:
        return list(self.db.table("posts").rows_where("front_end = ? and open = 1", [front_end]))

    # --- small facts kept across restarts ------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        rows = list(self.db.query("select value from meta where key = ?", [key]))
        return rows[0]["value"] if rows else None

    def set_meta(self, key: str, value: str) -> None:
        self.db.table("meta").upsert({"key": key, "value": value, "updated_at": now_iso()}, pk="key")
