import celery_reliable


def test_public_names_are_pinned():
    assert sorted(celery_reliable.__all__) == [
        "ConfigurationError",
        "DEAD_LETTERED",
        "DUPLICATE",
        "DeadLetter",
        "DeadLetterNotFound",
        "DeadLetterReason",
        "DeadLettered",
        "EnqueueError",
        "FailureContext",
        "InvalidArgument",
        "InvalidMessageId",
        "LostOwnership",
        "MESSAGE_ID_HEADER",
        "PermanentFailure",
        "Reliable",
        "ReliableError",
        "ReliableTask",
        "RetryPolicy",
        "StoreUnavailable",
        "TransactionMisuse",
        "Verdict",
    ]
    for name in celery_reliable.__all__:
        assert getattr(celery_reliable, name) is not None


def test_every_error_has_one_root():
    for name in celery_reliable.__all__:
        value = getattr(celery_reliable, name)
        if isinstance(value, type) and issubclass(value, Exception):
            assert issubclass(value, celery_reliable.ReliableError)
