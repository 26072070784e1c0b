"""fit_entry: what a dead-letter entry gives up, in which order, to fit a statement limit."""

from __future__ import annotations

from celery_reliable.dead_letters import fit_entry

KB = 1024
BUDGET = 448 * KB  # what store.limits.value_budget gives for a 1 MB max_allowed_packet


def entry(**big: object) -> dict[str, object]:
    row: dict[str, object] = {
        "message_id": "m-1",
        "args": None,
        "kwargs": None,
        "headers": "{}",
        "raw_body": None,
        "exception_message": "boom",
        "traceback": None,
        "attempts": 1,
    }
    row.update(big)
    return row


def test_an_entry_that_fits_is_left_alone():
    row = entry(args='["' + "a" * 100 * KB + '"]', raw_body=b"b" * 100 * KB)
    before = dict(row)
    fit_entry(row, BUDGET)
    assert row == before


def test_the_raw_body_goes_first_when_the_arguments_were_decoded():
    args = '["' + "a" * 300 * KB + '"]'
    row = entry(args=args, kwargs="{}", raw_body=b"b" * 300 * KB)
    fit_entry(row, BUDGET)
    assert (row["args"], row["kwargs"], row["raw_body"]) == (args, "{}", None)
    assert row["exception_message"].startswith("boom [entry cut to the")
    assert f"raw body of {300 * KB} bytes not kept (the arguments are)" in row["exception_message"]


def test_arguments_too_large_themselves_go_and_the_raw_body_is_cut():
    row = entry(args='["' + "a" * 600 * KB + '"]', kwargs="{}", raw_body=b"b" * 600 * KB)
    fit_entry(row, BUDGET)
    assert row["args"] is None
    assert row["kwargs"] is None
    body = row["raw_body"]
    assert isinstance(body, bytes)
    assert set(body) == {ord("b")}
    assert 400 * KB < len(body) <= BUDGET
    assert f"raw body cut to {len(body)} of {600 * KB} bytes" in row["exception_message"]


def test_escaped_bytes_count_double():
    row = entry(raw_body=b"\x00" * 600 * KB)  # each NUL is sent as two bytes
    fit_entry(row, BUDGET)
    assert len(row["raw_body"]) <= BUDGET // 2


def test_then_the_traceback_and_the_headers():
    row = entry(traceback="t" * 600 * KB, headers='{"x": "' + "h" * 600 * KB + '"}')
    fit_entry(row, BUDGET)
    assert row["headers"] == "{}"  # cut JSON would not be JSON: all or nothing
    assert row["traceback"] == ""
    assert "traceback cut from" in row["exception_message"]
    assert "headers cut from" in row["exception_message"]
