import pytest

from celery_reliable.delivery.outcomes import count_header


@pytest.mark.parametrize(
    ("value", "expected"), [(3, 3), (None, 0), ("7", 0), (-2, 0), (True, 0), (2.5, 0)]
)
def test_counts_from_headers_never_raise(value, expected):
    assert count_header(value) == expected
