"""RabbitMQ's own dead-lettering, for what never reaches a worker.

The dead-letter store keeps what a worker receives. RabbitMQ can drop messages before
that: one whose ``expires`` passes while it waits in the queue (Celery gives it an AMQP
expiration, so the broker discards it unseen), one whose queue is over ``x-max-length``,
and one that a consumer rejects without requeue. RabbitMQ keeps them only when the queue
names a dead-letter exchange, and it cannot add one to an existing queue's arguments.

:func:`use_dead_letter_exchange` declares that exchange and a queue that collects what
it receives, and gives the app's task queues the arguments, in ``task_queues`` too:
a worker declares the queues it consumes with the arguments it knows, and RabbitMQ
refuses (PRECONDITION_FAILED) a declaration whose arguments differ from the queue's.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from copy import copy
from typing import Any

from celery import Celery
from kombu import entity

from .exceptions import ConfigurationError

#: kombu's entities are untyped; Any keeps mypy --strict quiet about calling them.
Exchange: Any = entity.Exchange
Queue: Any = entity.Queue

DEFAULT_EXCHANGE = "celery_reliable.dlx"
DEFAULT_QUEUE = "celery_reliable.dead_letters"


def use_dead_letter_exchange(
    app: Celery,
    queues: Iterable[str] | None = None,
    *,
    exchange: str = DEFAULT_EXCHANGE,
    queue: str = DEFAULT_QUEUE,
    declare: bool = True,
) -> list[Any]:
    """Give the task queues of ``app`` a dead-letter exchange; return the queues it now has.

    Call it where the app is configured, in the module every worker and producer imports,
    before anything is sent. ``queues`` names the task queues to change (default: all of
    the app's queues, ``task_queues`` or the default queue); the others are kept as they
    are. Messages dead-lettered by RabbitMQ go to the direct exchange ``exchange`` with
    routing key ``queue``, and from there to the durable queue ``queue``.

    With ``declare`` (the default) the exchange, the dead-letter queue and the changed task
    queues are declared now. A worker declares only the queues it consumes, never the
    dead-letter queue: without this declaration RabbitMQ would dead-letter into an exchange
    that does not exist, which drops the message. A task queue that already exists with
    other arguments is refused with a :class:`ConfigurationError` that says how to fix it.
    """
    current = {q.name: q for q in app.amqp.queues.values()}
    chosen = set(current) if queues is None else set(queues)
    unknown = chosen - set(current)
    if unknown:
        raise ConfigurationError(
            f"use_dead_letter_exchange: {sorted(unknown)} are not queues of app "
            f"{app.main!r} (it has {sorted(current)}); add them to task_queues first"
        )
    arguments = {"x-dead-letter-exchange": exchange, "x-dead-letter-routing-key": queue}
    task_queues = [
        _with_arguments(q, arguments) if q.name in chosen else q for q in current.values()
    ]
    app.conf.task_queues = task_queues
    # Rebuild what Celery derived from the old declarations: a router holding them would
    # declare the queues without the arguments on the next send.
    app.amqp.queues = task_queues
    app.amqp.router = app.amqp.Router()
    app.amqp.__dict__.pop("default_queue", None)
    if declare:
        dead_letters = Queue(queue, Exchange(exchange, "direct", durable=True), queue, durable=True)
        _declare(app, dead_letters, [q for q in task_queues if q.name in chosen])
    return task_queues


def _with_arguments(task_queue: Any, arguments: dict[str, str]) -> Any:
    changed = copy(task_queue)  # keeps exchange, bindings, max_priority, ...
    changed.queue_arguments = {**(task_queue.queue_arguments or {}), **arguments}
    return changed


def _declare(app: Celery, dead_letters: Any, task_queues: list[Any]) -> None:
    with app.connection_for_write() as conn:
        if conn.transport.driver_type != "amqp":
            raise ConfigurationError(
                "use_dead_letter_exchange is for RabbitMQ; this broker has no dead-letter "
                "exchanges (the dead-letter store still keeps what workers receive)"
            )
        for declaration in (dead_letters, *task_queues):
            # A refused declaration closes its channel: each gets its own.
            with conn.channel() as channel:
                try:
                    declaration(channel).declare()
                except conn.channel_errors as exc:
                    raise ConfigurationError(_refused(declaration, dead_letters, exc)) from exc


def _refused(declaration: Any, dead_letters: Any, exc: BaseException) -> str:
    name = declaration.name
    if declaration is dead_letters:
        return (
            f"the dead-letter queue {name!r} already exists with other arguments ({exc}); "
            "pass another queue= or delete it (rabbitmqctl delete_queue) once it is empty"
        )
    policy = json.dumps(
        {
            "dead-letter-exchange": dead_letters.exchange.name,
            "dead-letter-routing-key": dead_letters.routing_key,
        }
    )
    return (
        f"task queue {name!r} already exists with other arguments ({exc}); RabbitMQ cannot "
        "change the arguments of an existing queue. Either let the workers drain it, stop "
        f"them, delete it (rabbitmqctl delete_queue {name}) and start them again with this "
        "call in place; or leave the queue as it is, do not call use_dead_letter_exchange, "
        f"and add a policy instead: rabbitmqctl set_policy DLX '^{name}$' '{policy}' "
        "--apply-to queues (then declare the dead-letter queue yourself)"
    )
