# --8<-- [start:tasks]
from celery_reliable import DeadLettered, ReliableTask, RetryPolicy
from app import app, reliable

reliable.retry_policies["gateway"] = RetryPolicy.fixed(max_retries=2, delay="100ms")


@app.task(base=ReliableTask, bind=True, retry_policy="gateway")
def pay(self, failures):
    if self.request.retries < failures:
        raise ConnectionError("the gateway hung up")  # transient: retried
    return f"paid on run {self.request.retries + 1}"


@app.task(base=ReliableTask)
def refund(order_id):
    raise KeyError(order_id)  # unclassified, and no retry_policy named: not retried


@app.task(base=ReliableTask, retry_policy="gateway")
def capture(order_id):
    raise KeyError(order_id)  # unclassified, but the task names a policy: retried
# --8<-- [end:tasks]


def runs(result):
    """How many runs ``result`` got before its dead letter."""
    try:
        result.get(timeout=10)
    except DeadLettered as exc:
        return exc.reason, reliable.dead_letters.get(exc.entry_id).attempts
    raise AssertionError("a dead letter raises")


# --8<-- [start:caller]
assert pay.delay(2).get(timeout=10) == "paid on run 3"
assert runs(pay.delay(5)) == ("MaxRetriesExceeded", 3)  # max_retries=2: three runs
assert runs(refund.delay("o-1")) == ("UnhandledException", 1)
assert runs(capture.delay("o-1")) == ("MaxRetriesExceeded", 3)
# --8<-- [end:caller]
