# --8<-- [start:tasks]
from celery_reliable import DeadLettered, ReliableTask
from app import app


@app.task(base=ReliableTask)
def charge(card):
    raise ValueError(f"card {card} declined")


@app.task
def release_stock(failed_task_id):  # an errback: Celery passes the failed task's id
    return f"released the stock held by {failed_task_id}"
# --8<-- [end:tasks]


# --8<-- [start:caller]
on_error = release_stock.s()
released = on_error.freeze()  # the errback's result, to wait on below
result = charge.apply_async(("4242",), link_error=on_error)
try:
    result.get(timeout=10)
except ValueError as exc:  # DeadLettered is also the body's own exception type
    assert isinstance(exc, DeadLettered)
    assert (exc.reason, exc.exc_type) == ("UnhandledException", "ValueError")
    assert exc.args == ("card 4242 declined",)  # the body's exception's own arguments
    assert exc.entry_id is not None  # celery -A app reliable dlq show ID
else:
    raise AssertionError("a dead letter raises")
assert result.failed() and result.state == "FAILURE"
assert released.get(timeout=10) == f"released the stock held by {result.id}"
# --8<-- [end:caller]
