"""Bolt's ``authorize``: one ``auth.test`` per workspace, not one per first request.

Given a token, bolt's ``AsyncApp`` authorises with ``SingleTeamAuthorization``: it
caches the first ``auth.test`` answer but has no lock, so every request that
arrives before that answer calls ``auth.test`` again (a burst of 200 first events
made 200 calls, against a Tier 4 limit). Here the answer is cached per workspace
(``enterprise_id``, ``team_id``), concurrent first requests share one call in
flight, and the start-up ``auth.test`` seeds the cache. A failed call is not
cached: its waiters all get that failure, and the next request tries again.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

from slack_bolt.authorization import AuthorizeResult
from slack_bolt.authorization.async_authorize import AsyncAuthorize
from slack_sdk.web.async_client import AsyncWebClient

from bots.slack.errors import response_header

Key = tuple[str | None, str | None]


class Authorizer(AsyncAuthorize):
    """``authorize=`` for :class:`slack_bolt.async_app.AsyncApp`, with a single bot token."""

    def __init__(self, client: AsyncWebClient, *, size: int = 1000) -> None:
        super().__init__()
        self.client = client
        self.size = size
        self.answers: collections.OrderedDict[Key, Any] = collections.OrderedDict()
        self._flights: dict[Key, asyncio.Future[Any]] = {}

    def seed(self, auth_test: Any) -> None:
        """Remember an ``auth.test`` answer already in hand (the one made at start-up)."""
        self._remember((auth_test.get("enterprise_id"), auth_test.get("team_id")), auth_test)

    # bolt passes every argument by name; those not needed here are ignored
    async def __call__(  # type: ignore[override]
        self,
        *,
        enterprise_id: str | None,
        team_id: str | None,
        user_id: str | None,
        **_: Any,
    ) -> AuthorizeResult:
        resp = await self._auth_test((enterprise_id, team_id))
        bot_user_id = resp.get("user_id")
        return AuthorizeResult(
            enterprise_id=resp.get("enterprise_id"),
            team_id=resp.get("team_id"),
            bot_id=resp.get("bot_id"),
            bot_user_id=bot_user_id,
            bot_token=self.client.token,
            bot_scopes=response_header(resp.headers, "x-oauth-scopes"),
            user_id=user_id,
        )

    async def _auth_test(self, key: Key) -> Any:
        if key in self.answers:
            self.answers.move_to_end(key)
            return self.answers[key]
        flight = self._flights.get(key)
        if flight is None:
            flight = self._flights[key] = asyncio.ensure_future(self.client.auth_test())
            flight.add_done_callback(lambda f: self._landed(key, f))
        return await asyncio.shield(flight)  # one waiter cancelled does not cancel the call

    def _landed(self, key: Key, flight: asyncio.Future[Any]) -> None:
        self._flights.pop(key, None)
        if not flight.cancelled() and flight.exception() is None:
            self._remember(key, flight.result())

    def _remember(self, key: Key, resp: Any) -> None:
        self.answers[key] = resp
        self.answers.move_to_end(key)
        while len(self.answers) > self.size:
            self.answers.popitem(last=False)
