"""Who is a workspace admin, as Slack says: ``users.info`` ``is_admin``, ``is_owner`` or
``is_primary_owner`` (https://docs.slack.dev/reference/methods/users.info, scope
``users:read``).

Asked only for commands whose answer depends on it (``/budget``, ``/policy``,
``/keys``, ``/panel``, ``/usage``, ``/forget``), App Home and modal submissions:
never on a discussion's way to its acknowledgement. Answers are cached per
(workspace, person) for five minutes, in a bounded map; a failed lookup (a missing
scope, Slack unreachable) counts as "not an admin" for half a minute and is logged.
:data:`core.config.Settings.admins` (``PARLEY_ADMINS``) still makes anyone an admin.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bots.slack.errors import slack_error
from core.errors import redact
from core.governance.scope import Caller

log = logging.getLogger("parley.slack")

TTL = 300.0
FAILURE_TTL = 30.0


class Admins:
    def __init__(self, client: AsyncWebClient, *, ttl: float = TTL, size: int = 10_000) -> None:
        self.client = client
        self.ttl = ttl
        self.size = size
        self.known: collections.OrderedDict[tuple[str, str], tuple[float, bool]] = collections.OrderedDict()
        self.lookups = 0  # users.info calls made (for tests)

    async def check(self, caller: Caller, *, within: float = 10.0) -> Caller:
        """``caller`` with ``admin`` as Slack says (looked up at most every five minutes)."""
        admin = await self.is_admin(caller.workspace, caller.user, within=within)
        return dataclasses.replace(caller, admin=admin) if admin != caller.admin else caller

    async def is_admin(self, workspace: str, user: str, *, within: float = 10.0) -> bool:
        key = (workspace, user)
        hit = self.known.get(key)
        now = time.monotonic()
        if hit is not None and hit[0] > now:
            self.known.move_to_end(key)
            return hit[1]
        admin, ttl = await self._lookup(user, within)
        self.known[key] = (time.monotonic() + ttl, admin)
        self.known.move_to_end(key)
        while len(self.known) > self.size:
            self.known.popitem(last=False)
        return admin

    async def _lookup(self, user: str, within: float) -> tuple[bool, float]:
        self.lookups += 1
        try:
            resp = await asyncio.wait_for(self.client.users_info(user=user), within)
        except SlackApiError as e:
            log.warning(
                "Slack: users.info failed (%s); treating %s as not an admin. The app needs the "
                "users:read scope (reinstall it from `parley slack manifest`).",
                slack_error(e),
                user,
            )
            return False, FAILURE_TTL
        except Exception as e:  # Slack unreachable or slow
            log.warning(
                "Slack: users.info failed (%s); treating %s as not an admin for now.",
                redact(str(e)) or type(e).__name__,
                user,
            )
            return False, FAILURE_TTL
        u = resp.get("user") or {}
        return bool(u.get("is_admin") or u.get("is_owner") or u.get("is_primary_owner")), self.ttl
