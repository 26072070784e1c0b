"""The Dead Letters pages: Tornado handlers inside Flower's own application.

Each handler subclasses Flower's ``BaseHandler``, so Flower's authentication (basic auth,
OAuth, a custom auth provider) decides who gets in, exactly as for its own pages, and its
error pages and navbar are ours too. What we add is stricter than Flower where dead letters
need it: every POST must carry Tornado's xsrf token whatever the authentication (Flower asks
for it only under OAuth), no cross-origin headers, no framing, and the store is read in
Flower's thread pool so a slow database never stalls Flower's event loop.

Every value typed into a form is checked (in :mod:`.inputs`) and refused with a message on
the page (400); what is shown is escaped by the templates (arguments and tracebacks are user
data).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar
from urllib.parse import urlencode

import tornado.web
from flower.views import BaseHandler  # type: ignore[import-untyped]
from tornado.ioloop import IOLoop

from celery_reliable.dead_letters import (
    DeadLetter,
    DeadLetterFilter,
    DeadLetterReason,
    DeadLetters,
    DeadLetterStatistics,
)
from celery_reliable.durations import parse_duration
from celery_reliable.exceptions import DeadLetterNotFound, InvalidArgument
from celery_reliable.store.tables import MAX_ROW_ID

from .inputs import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    TEMPLATE_HELPERS,
    Filters,
    Refused,
    entry_id,
    parse_filters,
    text,
    whole,
)
from .messages import MessageGroups

logger = logging.getLogger(__name__)

T = TypeVar("T")


# -- handlers ------------------------------------------------------------------------------


class Page(BaseHandler):  # type: ignore[misc]  # Flower is untyped
    """Flower's handler with the dead-letter store and the stricter request rules above."""

    def initialize(self, letters: DeadLetters, groups: MessageGroups) -> None:
        self.letters = letters
        self.groups = groups

    def set_default_headers(self) -> None:
        # Not Flower's: with FLOWER_UNAUTHENTICATED_API it opens pages to every origin (CORS),
        # which pages that replay and purge must never be. Framing is refused (clickjacking).
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("Content-Security-Policy", "frame-ancestors 'none'")
        self.set_header("Referrer-Policy", "same-origin")
        self.set_header("Cache-Control", "no-store")

    def check_xsrf_cookie(self) -> None:
        super().check_xsrf_cookie()  # Flower, with auth on: cross-site Sec-Fetch-Site/Origin → 403
        # ...and the token always: Flower skips it without OAuth, which basic auth (the
        # browser resends credentials to any site's form) and loopback-only setups need.
        tornado.web.RequestHandler.check_xsrf_cookie(self)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if not isinstance(exc, Refused):
            super().write_error(status_code, **kwargs)
            return
        if not hasattr(self, "_current_user"):  # as Flower: never authenticate while erring
            self.current_user = None
        self.page("reliable_error.html", message=exc.message, status_code=status_code)

    def page(self, template: str, **values: Any) -> None:
        self.render(
            template,
            read_only=bool(self.application.options.read_only),
            **TEMPLATE_HELPERS,
            **values,
        )

    async def blocking(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a store call in Flower's thread pool; API argument errors become a 400 page."""
        try:
            return await IOLoop.current().run_in_executor(None, partial(function, *args, **kwargs))
        except DeadLetterNotFound as exc:
            raise Refused(404, str(exc)) from exc
        except InvalidArgument as exc:
            raise Refused(400, str(exc)) from exc

    def writable(self) -> None:
        if self.application.options.read_only:
            raise Refused(403, "Flower runs with --read_only: dead letters cannot be changed")

    def list_url(self, **query: str | int) -> str:
        base = str(self.reverse_url("reliable-dead-letters"))
        given = {k: v for k, v in query.items() if v != ""}
        return f"{base}?{urlencode(given)}" if given else base

    def entry_url(self, entry: int) -> str:
        return str(self.reverse_url("reliable-dead-letter", entry))

    async def found(self, entry: int) -> DeadLetter:
        letter = await self.blocking(self.letters.get, entry)
        if letter is None:
            raise Refused(404, f"no dead-letter entry {entry}")
        return letter


class ListPage(Page):
    """Filters, statistics, one page of entries, and the forms that act on them."""

    @tornado.web.authenticated
    async def get(self) -> None:
        filters = parse_filters(self.get_query_argument)
        limit = whole(self.get_query_argument("limit", str(DEFAULT_LIMIT)), "limit", 1, MAX_LIMIT)
        offset = whole(self.get_query_argument("offset", "0"), "offset", 0, MAX_ROW_ID)
        entries, total, statistics = await self.blocking(self._load, filters, limit, offset)
        rows = await self.blocking(self.groups.rows, entries)

        def page_at(start: int) -> str:
            return self.list_url(**filters.typed, limit=limit, offset=start)

        self.page(
            "reliable_dead_letters.html",
            filters=filters,
            reasons=[r.value for r in DeadLetterReason],
            entries=entries,
            rows=rows,
            total=total,
            offset=offset,
            limit=limit,
            previous_url=page_at(max(0, offset - limit)) if offset > 0 else None,
            next_url=page_at(offset + limit) if offset + limit < total else None,
            statistics=statistics,
            filter_url=self.list_url,
        )

    def _load(
        self, filters: Filters, limit: int, offset: int
    ) -> tuple[list[DeadLetter], int, DeadLetterStatistics]:
        return (
            self.letters.list(matching=filters.matching, limit=limit, offset=offset),
            self.letters.count(matching=filters.matching),
            self.letters.statistics(),
        )


class EntryPage(Page):
    """One entry whole: arguments, headers, exception and traceback, attempts and history."""

    @tornado.web.authenticated
    async def get(self, raw_id: str) -> None:
        letter = await self.found(entry_id(raw_id))
        task_url = self.reverse_url("task", letter.task_id) if letter.task_id else None
        history = await self.blocking(self.groups.history, letter.message_id)
        self.page("reliable_dead_letter.html", entry=letter, task_url=task_url, history=history)


class ReplaySelection(Page):
    """POST ``ids`` (one or many): replay each through the outbox."""

    @tornado.web.authenticated
    async def post(self) -> None:
        self.writable()
        ids = list(dict.fromkeys(entry_id(v) for v in self.get_body_arguments("ids")))
        if not ids:
            raise Refused(400, "select at least one entry to replay")
        # Every id is checked before anything is replayed, so a stale id changes nothing.
        missing = [i for i in ids if await self.blocking(self.letters.get, i) is None]
        if missing:
            raise Refused(404, f"no dead-letter entry {', '.join(map(str, missing))}")
        outcomes: list[tuple[int, str | None, str | None]] = []
        for entry in ids:
            try:
                task_id = await self.blocking(self.letters.replay, entry)
            except Exception as exc:  # each entry on its own: one bad entry stops no other
                logger.warning("replay of dead-letter entry %s failed", entry, exc_info=True)
                outcomes.append(
                    (entry, None, exc.message if isinstance(exc, Refused) else str(exc))
                )
            else:
                outcomes.append((entry, task_id, None))
        done = sum(1 for _, task_id, _ in outcomes if task_id)
        if not done:
            self.set_status(409)
        self.page(
            "reliable_result.html",
            title="Replay",
            lines=[f"replayed {done} of {len(ids)} entries"],
            outcomes=outcomes,
            entry_url=self.entry_url,
            confirm=None,
            back_url=self.entry_url(ids[0]) if len(ids) == 1 else self.list_url(),
        )


class ReplayBatch(Page):
    """POST filters: with ``dry_run`` say how many would be replayed, then replay them."""

    @tornado.web.authenticated
    async def post(self) -> None:
        self.writable()
        filters = parse_filters(self.get_body_argument)
        raw_limit = text(self.get_body_argument, "limit")
        limit = whole(raw_limit, "limit", 1, MAX_ROW_ID) if raw_limit else None
        batch = partial(self.letters.replay_batch, matching=filters.matching, limit=limit)
        fields = filters.hidden_fields("reason", "task", "since", "until")
        back_url = self.list_url(**filters.typed)
        if self.get_body_argument("dry_run", ""):
            due = await self.blocking(batch, dry_run=True)
            # The confirmation replays at most what was counted, oldest first: entries
            # dead-lettered after the dry run wait for the next one.
            self.page(
                "reliable_result.html",
                title="Replay all matching (dry run)",
                lines=[f"would replay {due} entries", describe(fields)],
                outcomes=[],
                entry_url=self.entry_url,
                confirm=(
                    {
                        "action": self.reverse_url("reliable-replay-batch"),
                        "fields": [*fields, ("limit", str(due))],
                        "label": f"Replay {due} entries",
                    }
                    if due
                    else None
                ),
                back_url=back_url,
            )
            return
        replayed = await self.blocking(batch)
        self.page(
            "reliable_result.html",
            title="Replay all matching",
            lines=[f"replayed {replayed} entries", describe(fields)],
            outcomes=[],
            entry_url=self.entry_url,
            confirm=None,
            back_url=back_url,
        )


class Purge(Page):
    """POST ``older_than``: with ``dry_run`` count what would go, then delete it."""

    @tornado.web.authenticated
    async def post(self) -> None:
        self.writable()
        older_than = text(self.get_body_argument, "older_than")
        try:  # an age before the year 1 (1000000d) is refused by the filter
            cutoff_age = parse_duration(older_than)
            matching = DeadLetterFilter.older_than(cutoff_age)
        except InvalidArgument as exc:
            raise Refused(400, str(exc)) from None
        except ValueError as exc:
            raise Refused(400, f"older than: {exc}") from None
        if self.get_body_argument("dry_run", ""):  # what purge_older_than deletes
            due = await self.blocking(self.letters.count, matching=matching)
            self.page(
                "reliable_result.html",
                title="Purge (dry run)",
                lines=[f"would purge {due} entries dead-lettered over {older_than} ago"],
                outcomes=[],
                entry_url=self.entry_url,
                confirm=(
                    {
                        "action": self.reverse_url("reliable-purge"),
                        "fields": [("older_than", older_than)],
                        "label": f"Purge entries older than {older_than}",
                    }
                    if due
                    else None
                ),
                back_url=self.list_url(),
            )
            return
        purged = await self.blocking(self.letters.purge_older_than, cutoff_age)
        self.page(
            "reliable_result.html",
            title="Purge",
            lines=[f"purged {purged} entries dead-lettered over {older_than} ago"],
            outcomes=[],
            entry_url=self.entry_url,
            confirm=None,
            back_url=self.list_url(),
        )


class Delete(Page):
    """POST: with ``dry_run`` ask for confirmation (as purge does), then delete one entry."""

    @tornado.web.authenticated
    async def post(self, raw_id: str) -> None:
        self.writable()
        entry = entry_id(raw_id)
        if self.get_body_argument("dry_run", ""):
            self.confirm_delete(await self.found(entry))
            return
        if not await self.blocking(self.letters.delete, entry):
            raise Refused(404, f"no dead-letter entry {entry}")
        self.page(
            "reliable_result.html",
            title="Delete",
            lines=[f"deleted entry {entry}"],
            outcomes=[],
            entry_url=self.entry_url,
            confirm=None,
            back_url=self.list_url(),
        )

    def confirm_delete(self, letter: DeadLetter) -> None:
        """What the entry is, and a button that deletes it: a deleted entry cannot be replayed."""
        self.page(
            "reliable_result.html",
            title="Delete (confirm)",
            lines=[
                f"delete entry {letter.id}: {letter.reason.value}, task {letter.task_name or '-'}, "
                f"message {letter.message_id}?",
                "A deleted entry cannot be replayed.",
            ],
            outcomes=[],
            entry_url=self.entry_url,
            confirm={
                "action": self.reverse_url("reliable-delete", letter.id),
                "fields": [],
                "label": f"Delete entry {letter.id}",
            },
            back_url=self.entry_url(letter.id),
        )


def describe(fields: list[tuple[str, str]]) -> str:
    """Which entries a batch covers (it only ever replays entries not replayed yet)."""
    matching = ", ".join(f"{k}={v}" for k, v in fields) if fields else "any reason, task or time"
    return f"entries not replayed yet, matching {matching}"


def urls(
    letters: DeadLetters, groups: MessageGroups
) -> list[tuple[str, type[Page], dict[str, Any], str]]:
    """(pattern, handler, kwargs, name) for each page; the actions come before ``/<id>``."""
    kwargs = {"letters": letters, "groups": groups}
    return [
        (r"/dead-letters", ListPage, kwargs, "reliable-dead-letters"),
        (r"/dead-letters/replay", ReplaySelection, kwargs, "reliable-replay"),
        (r"/dead-letters/replay-batch", ReplayBatch, kwargs, "reliable-replay-batch"),
        (r"/dead-letters/purge", Purge, kwargs, "reliable-purge"),
        (r"/dead-letters/([^/]+)/delete", Delete, kwargs, "reliable-delete"),
        (r"/dead-letters/([^/]+)", EntryPage, kwargs, "reliable-dead-letter"),
    ]
