# --8<-- [start:tasks]
from celery import Celery

from celery_reliable import Reliable, ReliableTask

shop = Celery("shop", broker="redis://127.0.0.1:6379/0", task_cls="celery_reliable:ReliableTask")
shop.conf.reliable_database_url = "postgresql+psycopg://app@db/shop"
Reliable(shop)


@shop.task
def ship(order_id):
    return f"shipped {order_id}"
# --8<-- [end:tasks]


# --8<-- [start:caller]
assert isinstance(shop.tasks[ship.name], ReliableTask) and ship.acks_late
unlock = shop.tasks["celery.chord_unlock"]  # Celery's own tasks stay plain
assert not unlock.acks_late and unlock.reject_on_worker_lost is None
# --8<-- [end:caller]
