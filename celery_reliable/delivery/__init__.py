"""One delivery of a message to a ReliableTask, from claim to its end.

- :mod:`.options`: a task's options resolved once (``TaskOptions``, ``resolve_options``,
  ``handler_keys_of``, ``check_unique_keys``);
- :mod:`.run`: the one per-delivery object (``Run``) and how it ended (``Outcome``);
- :mod:`.decide`: pure decisions (``decide_claim``, ``decide_failure``);
- :mod:`.outcomes`: performing them (``Outcomes``);
- :mod:`.pipeline`: the claim → body → completion path (``Pipeline``, ``Binding``);
- :mod:`.time_limit`: ``ReliableTask.Request``, in the worker's main process: a run
  killed by its hard time limit is requeued as a retry, with no failure reported.

``Reliable`` builds the pipeline with its collaborators and binds it to each task;
``ReliableTask`` hands every delivery to it. Nothing here imports the extension.
"""

from .options import TaskOptions, check_unique_keys, handler_keys_of, resolve_options
from .pipeline import Binding, Pipeline

__all__ = [
    "Binding",
    "Pipeline",
    "TaskOptions",
    "check_unique_keys",
    "handler_keys_of",
    "resolve_options",
]
