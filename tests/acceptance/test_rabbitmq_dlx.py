"""RabbitMQ's dead-letter exchange keeps what RabbitMQ itself would drop: messages that
expire in the queue, and messages a consumer rejects without requeue."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest
from kombu import Queue

from celery_reliable import ConfigurationError, DeadLetterReason
from celery_reliable.rabbitmq import use_dead_letter_exchange
from celery_reliable.testing import wait_for
from tests.acceptance.conftest import Stack
from tests.support import make_app, require, unique


def depth(app, queue: str) -> int:
    with app.connection_for_write() as conn:
        return int(conn.default_channel.queue_declare(queue, passive=True)[1])


def delete(app, prefix: str) -> None:
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        for name in (f"dlq_{prefix}", f"q_{prefix}"):
            channel.queue_delete(name)
        for name in (f"dlx_{prefix}", f"q_{prefix}"):
            channel.exchange_delete(name)


@pytest.fixture
def app(tmp_path):
    prefix = unique()
    app = make_app(require("rabbitmq"), f"sqlite:///{tmp_path / 's.db'}", prefix)
    app.prefix = prefix
    yield app
    delete(app, prefix)


@pytest.fixture
def rabbit_stack(tmp_path) -> Iterator[Stack]:
    stack = Stack(require("rabbitmq"), require("postgresql"), tmp_path)
    yield stack
    with stack.producer.connection_for_write() as conn:
        conn.default_channel.queue_delete(f"dlq_{stack.prefix}")
        conn.default_channel.exchange_delete(f"dlx_{stack.prefix}")
    stack.close()


def with_dlx(app, prefix: str) -> list:
    return use_dead_letter_exchange(app, exchange=f"dlx_{prefix}", queue=f"dlq_{prefix}")


def test_an_expired_message_lands_in_the_dead_letter_queue(app):
    queues = with_dlx(app, app.prefix)
    assert queues[0].queue_arguments == {
        "x-dead-letter-exchange": f"dlx_{app.prefix}",
        "x-dead-letter-routing-key": f"dlq_{app.prefix}",
    }
    assert app.conf.task_queues == queues  # so that workers declare it alike
    expires = datetime.now(timezone.utc) + timedelta(milliseconds=200)
    app.send_task("effect", (None,), expires=expires)  # no worker: it expires queued
    wait_for(lambda: depth(app, f"dlq_{app.prefix}") == 1, 30, what="the expired message")
    assert depth(app, f"q_{app.prefix}") == 0


def test_a_message_rejected_without_requeue_lands_in_the_dead_letter_queue(app):
    with_dlx(app, app.prefix)
    sent = app.send_task("effect", (1,))
    with app.connection_for_read() as conn:
        queue = app.amqp.queues[f"q_{app.prefix}"](conn.default_channel)
        message = wait_for(lambda: queue.get(no_ack=False), 30, what="the task message")
        message.reject(requeue=False)
    wait_for(lambda: depth(app, f"dlq_{app.prefix}") == 1, 30, what="the rejected message")
    with app.connection_for_read() as conn:
        dead = conn.SimpleQueue(f"dlq_{app.prefix}", no_ack=True).get(timeout=10)
    assert dead.headers["id"] == sent.id
    assert dead.headers["x-death"][0]["reason"] == "rejected"


def test_a_worker_declares_the_queue_alike_and_what_it_rejects_is_kept_twice(rabbit_stack):
    """An unknown task name: the dead-letter store keeps it, then Celery's reject hands a
    copy to RabbitMQ's dead-letter queue."""
    stack = rabbit_stack
    with_dlx(stack.producer, stack.prefix)
    with stack.worker(RT_DLX="1") as worker:
        sent = stack.producer.send_task("shop.no_such_task", (1,))
        wait_for(lambda: depth(stack.producer, f"dlq_{stack.prefix}") == 1, 60, what="the DLQ")
        (entry,) = stack.reliable.dead_letters.list()
        message_id = stack.send("effect", None)
        wait_for(
            lambda: (r := stack.status(message_id, "effect")) and r.status.value == "completed",
            60,
            what="a normal message",
        )
        assert worker.proc.poll() is None
    assert (entry.reason, entry.task_id) == (DeadLetterReason.HANDLER_NOT_FOUND, sent.id)
    assert "PRECONDITION_FAILED" not in worker.output()


def test_an_existing_queue_without_the_arguments_is_refused_with_the_fix(app):
    with app.connection_for_write() as conn:
        app.amqp.queues[f"q_{app.prefix}"](conn.default_channel).declare()  # plain, as before
    with pytest.raises(ConfigurationError, match="rabbitmqctl set_policy") as refused:
        with_dlx(app, app.prefix)
    assert "delete_queue" in str(refused.value)


def test_only_the_queues_named_get_the_exchange(tmp_path):
    app = make_app("memory://", f"sqlite:///{tmp_path / 's.db'}", "p_")
    app.conf.task_queues = [Queue("orders"), Queue("mails")]
    queues = use_dead_letter_exchange(app, ["orders"], declare=False)
    arguments = {q.name: q.queue_arguments for q in queues}
    assert arguments["orders"]["x-dead-letter-exchange"] == "celery_reliable.dlx"
    assert not arguments["mails"]
    with pytest.raises(ConfigurationError, match="not queues of app"):
        use_dead_letter_exchange(app, ["nope"], declare=False)
