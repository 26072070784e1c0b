"""The app that acceptance tests run in real ``celery worker`` processes.

Configured from the environment (RT_BROKER, RT_DB, RT_PREFIX, RT_DIR, ...) so that the test
process, which publishes, and each worker process agree on broker, store, queue and tables.
Tasks report what they do through files in RT_DIR, and block where a test wants to kill.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from sqlalchemy import Column, MetaData, String, Table, event

from celery_reliable import ReliableTask
from celery_reliable.rabbitmq import use_dead_letter_exchange
from tests.support import make_app

PREFIX = os.environ["RT_PREFIX"]
DIR = Path(os.environ["RT_DIR"])
extra = (
    {"reliable_max_attempts": int(os.environ["RT_MAX_ATTEMPTS"])}
    if "RT_MAX_ATTEMPTS" in os.environ
    else {}
)
if "RT_STUCK" in os.environ:
    extra["reliable_stuck_threshold"] = os.environ["RT_STUCK"]
if "RT_RELAY_BATCH" in os.environ:
    extra["reliable_relay_batch_size"] = int(os.environ["RT_RELAY_BATCH"])
if "RT_RELAY_IN_WORKER" in os.environ:
    extra["reliable_relay_in_worker"] = True
if "RT_BAD_SETTING" in os.environ:
    extra[os.environ["RT_BAD_SETTING"]] = 0

app = make_app(os.environ["RT_BROKER"], os.environ["RT_DB"], PREFIX, backend="disabled://", **extra)
# One message at a time unless a test wants throughput (the fuzz suite).
app.conf.worker_prefetch_multiplier = int(os.environ.get("RT_PREFETCH", "1"))
if "RT_BACKEND" in os.environ:
    app.conf.result_backend = os.environ["RT_BACKEND"]
if "RT_DLX" in os.environ:  # the test declared them; the worker declares its queue alike
    use_dead_letter_exchange(app, exchange=f"dlx_{PREFIX}", queue=f"dlq_{PREFIX}", declare=False)

metadata = MetaData()
effects = Table(f"{PREFIX}effects", metadata, Column("message_id", String(255)))


def note(name: str) -> None:
    """Append a line to RT_DIR/name: the tests count lines to see how often things ran."""
    with (DIR / name).open("a") as f:
        f.write(f"{os.getpid()}\n")


def counted(name: str) -> int:
    """Note a run in RT_DIR/name and return its number: 1 for the first run, and so on."""
    note(name)
    return len((DIR / name).read_text().split())


def block_while_held(point: str) -> None:
    """Announce ``point`` and wait while the test holds the door (it kills us meanwhile)."""
    note(f"reached-{point}")
    while (DIR / "hold").exists():
        time.sleep(0.02)


@app.task(base=ReliableTask, bind=True, name="effect")
def effect(self, kill_point=None):
    """One database effect per message; blocks at ``kill_point`` when asked, and returns it.

    ``before_commit``: inside the ``with`` block; ``after_block``: after the block, before
    the body returns (nothing is committed yet); ``after_commit``: right after the commit of
    the writes with the completion mark, before the broker's acknowledgement (a listener on
    the Session's own ``after_commit`` event, so the moment is the commit, wherever it is).
    """
    note("runs")
    with self.transaction() as session:
        session.execute(effects.insert().values(message_id=self.request.id))
        if kill_point == "before_commit":
            block_while_held(kill_point)
        if kill_point == "after_commit":
            event.listen(session, "after_commit", lambda _: block_while_held(kill_point))
    if kill_point == "after_block":
        block_while_held(kill_point)
    return kill_point


@app.task(base=ReliableTask, bind=True, name="kill_own_process")
def kill_own_process(self, times):
    """SIGKILLs its own pool process on its first ``times`` runs (an OOM kill, a segfault)."""
    if counted("runs") <= times:
        os.kill(os.getpid(), signal.SIGKILL)
    with self.transaction() as session:
        session.execute(effects.insert().values(message_id=self.request.id))


@app.task(base=ReliableTask, bind=True, name="overruns", time_limit=2)
def overruns(self, times):
    """Runs past its hard time limit (the pool kills it) on its first ``times`` runs.

    Returns the number of the run that completed, so a caller can tell which run it got.
    """
    run = counted("runs")
    if run <= times:
        time.sleep(30)
    with self.transaction() as session:
        session.execute(effects.insert().values(message_id=self.request.id))
    return run


@app.task(base=ReliableTask, bind=True, name="chord_part", time_limit=2)
def chord_part(self, part, overrun):
    """A chord's header part; with ``overrun``, its first run overruns its hard time limit.

    Runs are counted per message (RT_DIR/runs-<message id>), so that one part of a chord is
    killed and the others are not. Returns ``[part, run]``: the chord's callback can tell
    which run of each part it got.
    """
    run = counted(f"runs-{self.message_id}")
    if overrun and run == 1:
        time.sleep(30)
    return [part, run]


@app.task(name="gather")
def gather(results):
    """A plain chord callback: notes each run (a second dispatch would show) and returns
    the header's results it was given."""
    note("callbacks")
    return results


@app.task(name="errback")
def errback(task_id):
    """A plain ``link_error`` errback: notes that Celery reported a failure of the task."""
    note("errbacks")


@app.task(base=ReliableTask, bind=True, name="slow_effect")
def slow_effect(self, seconds):
    """One effect after a run of ``seconds``: longer than the lease when a test wants it."""
    note("runs")
    note(f"reached-{self.message_id}")
    time.sleep(seconds)
    with self.transaction() as session:
        session.execute(effects.insert().values(message_id=self.request.id))
