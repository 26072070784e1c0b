# --8<-- [start:tasks]
import time

from celery_reliable import ReliableTask
from celery_reliable.testing import wait_for
from app import app


@app.task(base=ReliableTask)
def build_report(seconds):
    time.sleep(seconds)
# --8<-- [end:tasks]


def active(task_id):
    """The worker's view of ``task_id`` while it runs, as ``celery inspect active`` prints it."""
    for requests in (app.control.inspect(timeout=1).active() or {}).values():
        for request in requests:
            if request["id"] == task_id:
                return request
    return None


# --8<-- [start:caller]
running = build_report.delay(3)
wait_for(lambda: active(running.id), 10, what="the run to start")
assert active(running.id)["acknowledged"] is False  # acks_late: acknowledged after the run
# --8<-- [end:caller]
