# --8<-- [start:tasks]
from celery_reliable import DeadLettered, ReliableTask, RetryPolicy
from app import app


@app.task(base=ReliableTask, bind=True, retry_policy=RetryPolicy.fixed(2, delay="1s"))
def reserve(self, failures):
    if self.request.retries < failures:
        raise ConnectionError("the warehouse hung up")
    return f"reserved on run {self.request.retries + 1}"
# --8<-- [end:tasks]


# --8<-- [start:caller]
assert reserve.apply((2,)).get() == "reserved on run 3"  # retried at once, no wait

try:
    reserve.apply((9,)).get()
except DeadLettered as exc:
    assert isinstance(exc, ConnectionError) and exc.reason == "MaxRetriesExceeded"
else:
    raise AssertionError("an eager dead letter raises")

done = reserve.apply((0,))
assert reserve.apply((0,), task_id=done.id).get() == "reserved on run 1"  # the stored result
# --8<-- [end:caller]
