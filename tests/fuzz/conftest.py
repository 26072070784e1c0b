"""The fuzz suite runs on the acceptance tier's stacks (``stack``: every broker and store pair)."""

from tests.acceptance.conftest import stack

__all__ = ["stack"]
