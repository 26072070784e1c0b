"""The fuzz suite runs on the acceptance tier's stacks: each broker with PostgreSQL."""

from tests.acceptance.conftest import postgres_stack

__all__ = ["postgres_stack"]
