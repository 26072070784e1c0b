# --8<-- [start:tasks]
from celery import chain, chord
from celery.exceptions import ChordError

from celery_reliable import DeadLettered, ReliableTask
from app import app


@app.task(base=ReliableTask)
def add(x, y):
    return x + y


@app.task(base=ReliableTask)
def within_limit(total):
    if total > 100:
        raise ValueError(f"{total} is over the limit")
    return total


@app.task(base=ReliableTask)
def summarize(totals):
    return sum(totals)
# --8<-- [end:tasks]


# --8<-- [start:caller]
assert chain(add.s(20, 30), within_limit.s()).apply_async().get(timeout=10) == 50
failed = chain(add.s(60, 70), within_limit.s()).apply_async()
try:
    failed.get(timeout=10)
except DeadLettered as exc:  # the failing step's dead letter, down the chain
    assert exc.exc_message == "130 is over the limit"
else:
    raise AssertionError("the chain raises")

assert chord([add.s(1, 2), add.s(3, 4)])(summarize.s()).get(timeout=10) == 10
totals = chord([within_limit.s(50), within_limit.s(500)])(summarize.s())
try:
    totals.get(timeout=10)
except ValueError:  # the failed part's error first, as on plain Celery
    pass
else:
    raise AssertionError("the chord raises")
# --8<-- [end:caller]
