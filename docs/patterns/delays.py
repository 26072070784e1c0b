# --8<-- [start:tasks]
import time

from celery_reliable import ReliableTask, RetryPolicy
from celery_reliable.testing import wait_for
from app import app, reliable


@app.task(base=ReliableTask)
def remind(sent_at):
    return time.time() - sent_at


@app.task(base=ReliableTask, retry_policy=RetryPolicy.fixed(1, delay="10m"))
def settle(batch):
    raise ConnectionError("the bank is closed")
# --8<-- [end:tasks]


# --8<-- [start:caller]
assert remind.apply_async((time.time(),), countdown=1).get(timeout=10) >= 1  # on the broker

result = settle.delay("batch-7")  # its retry is due in 10 minutes: held in the store
wait_for(lambda: result.state == "RETRY", 10, what="the first run to fail")
assert reliable.admin.outbox_stats().delayed == 1  # the relay publishes it when due
# --8<-- [end:caller]
