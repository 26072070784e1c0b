# --8<-- [start:tasks]
from celery_reliable import DeadLettered, ReliableTask
from app import app, reliable


@app.task(base=ReliableTask, bind=True, max_retries=1)
def sync_stock(self, sku):
    try:
        raise LookupError(f"{sku} is not in the warehouse yet")
    except LookupError as exc:
        raise self.retry(exc=exc, countdown=0.1)


@app.task(
    base=ReliableTask,
    autoretry_for=(LookupError,),
    retry_kwargs={"max_retries": 1, "countdown": 0.1},
)
def sync_price(sku):
    raise LookupError(f"{sku} has no price yet")
# --8<-- [end:tasks]


# --8<-- [start:caller]
for task in (sync_stock, sync_price):
    result = task.delay("sku-1")
    try:
        result.get(timeout=10)
    except LookupError as exc:  # Celery's max_retries used up: a dead letter
        assert isinstance(exc, DeadLettered) and exc.reason == "MaxRetriesExceeded"
        assert reliable.dead_letters.get(exc.entry_id).attempts == 2  # max_retries=1: 2 runs
    else:
        raise AssertionError("the task gives up")
# --8<-- [end:caller]
