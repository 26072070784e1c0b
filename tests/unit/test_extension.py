import pytest
from celery import Celery

from celery_reliable import ConfigurationError, Reliable, ReliableTask


def make():
    return Celery("x", broker="memory://", set_as_current=False)


def test_of_returns_the_extension_and_a_second_one_is_refused():
    app = make()
    reliable = Reliable(app)
    assert Reliable.of(app) is reliable
    with pytest.raises(ConfigurationError, match="already called"):
        Reliable(app)


def test_of_without_the_extension_says_what_to_do():
    with pytest.raises(ConfigurationError, match=r"call Reliable\(app\)"):
        Reliable.of(make())


def test_two_tasks_claiming_one_handler_key_is_a_configuration_error():
    app = make()
    reliable = Reliable(app)

    @app.task(base=ReliableTask, handler_key="billing.charge", shared=False)
    def charge():
        pass

    @app.task(base=ReliableTask, handler_key="billing.charge", shared=False)
    def charge_again():
        pass

    with pytest.raises(ConfigurationError, match=r"'billing\.charge' is claimed by both"):
        reliable.check()


def test_a_legacy_key_may_not_be_another_tasks_key():
    app = make()
    reliable = Reliable(app)

    @app.task(base=ReliableTask, shared=False, name="new")
    def new():
        pass

    @app.task(base=ReliableTask, shared=False, name="other", legacy_handler_keys=("new",))
    def other():
        pass

    with pytest.raises(ConfigurationError, match="'new' is claimed by both"):
        reliable.check()


@pytest.mark.parametrize("legacy", ["charge_card", ("",), (42,), ("a", "a")])
def test_bad_legacy_keys_are_refused(legacy):
    app = make()
    reliable = Reliable(app)

    @app.task(base=ReliableTask, shared=False, name="a2", legacy_handler_keys=legacy)
    def task():
        pass

    with pytest.raises(ConfigurationError, match="a2"):
        reliable.check()


def test_bad_settings_fail_the_check_naming_the_key():
    app = make()
    app.conf.reliable_max_attempts = -1
    with pytest.raises(ConfigurationError, match="reliable_max_attempts"):
        Reliable(app).check()


def test_reliable_tasks_ack_late_and_reject_on_worker_lost_by_default():
    app = make()
    Reliable(app)

    @app.task(base=ReliableTask, shared=False)
    def task():
        pass

    assert task.acks_late is True
    assert task.reject_on_worker_lost is True
