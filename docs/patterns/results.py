# --8<-- [start:tasks]
import uuid

from celery_reliable import MESSAGE_ID_HEADER, ReliableTask
from app import app


@app.task(base=ReliableTask)
def open_account(owner):
    return f"{owner}-{uuid.uuid4().hex[:8]}"  # a new account number on every run
# --8<-- [end:tasks]


# --8<-- [start:caller]
once = {MESSAGE_ID_HEADER: "open-account-alice"}
first = open_account.apply_async(("alice",), headers=once)
account = first.get(timeout=10)
assert account.startswith("alice-")
second = open_account.apply_async(("alice",), headers=once)  # a producer's retry
assert second.get(timeout=10) == account  # the first run's result: the body ran once
assert second.successful()
# --8<-- [end:caller]
