from datetime import timedelta

import pytest

from celery_reliable import ConfigurationError
from celery_reliable.durations import parse_duration, readable
from celery_reliable.settings import Settings, documented_settings


def test_defaults_give_a_sqlite_file_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = Settings.from_conf({})
    assert settings.database_url == f"sqlite:///{tmp_path}/reliable.sqlite3"
    assert settings.table_prefix == "reliable_"
    assert settings.max_attempts == 10
    assert settings.stuck_threshold == timedelta(minutes=5)
    assert settings.engine_options == {}


def test_values_are_read_and_converted():
    settings = Settings.from_conf(
        {
            "reliable_database_url": "postgresql+psycopg://u@h/db",
            "reliable_stuck_threshold": "90s",
            "reliable_max_attempts": 3,
            "reliable_engine_options": {"pool_size": 2},
            "other_setting": object(),  # not ours: ignored
        }
    )
    assert settings.stuck_threshold == timedelta(seconds=90)
    assert settings.max_attempts == 3
    assert settings.engine_options == {"pool_size": 2}


def test_unknown_reliable_key_is_refused_by_name():
    with pytest.raises(ConfigurationError, match="'reliable_max_atempts'"):
        Settings.from_conf({"reliable_max_atempts": 3})


def test_a_misspelled_key_is_refused_with_the_setting_it_resembles():
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_conf({"reliable_max_atempts": 3})
    assert str(caught.value) == (
        "unknown setting 'reliable_max_atempts'; did you mean 'reliable_max_attempts'?"
    )


def test_an_unknown_key_like_no_setting_lists_them_all():
    with pytest.raises(ConfigurationError, match="known settings: reliable_alert_threshold, "):
        Settings.from_conf({"reliable_colour": "blue"})


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("reliable_max_attempts", 0),
        ("reliable_max_attempts", "3"),
        ("reliable_max_attempts", True),
        ("reliable_stuck_threshold", "soon"),
        ("reliable_stuck_threshold", -5),
        ("reliable_table_prefix", "drop table;"),
        ("reliable_table_prefix", ""),
        ("reliable_database_url", "not a url"),
        ("reliable_database_url", 42),
        ("reliable_engine_options", ["pool_size"]),
        ("reliable_store_results", "yes"),
    ],
)
def test_bad_values_name_the_key(key, value):
    with pytest.raises(ConfigurationError, match=f"'{key}'"):
        Settings.from_conf({key: value})


def test_every_setting_is_documented():
    documented = documented_settings()
    assert {key for key, _, _ in documented} == {
        "reliable_" + name for name in Settings.__dataclass_fields__
    }
    assert all(doc.strip() for _, _, doc in documented)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30d", 30 * 86400), ("12h", 43200), ("5m", 300), ("500ms", 0.5), ("7", 7), (2.5, 2.5)],
)
def test_durations(text, seconds):
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "5 minutes", "-1s", "0", None, True, "99999999999999999999d"])
def test_bad_durations(text):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (None, "-"),
        (0.4, "0.4 s"),
        (20, "20 s"),
        (303, "5 min 3 s"),
        (7200, "2 h"),
        (2 * 86400 + 4 * 3600 + 5, "2 d 4 h"),
    ],
)
def test_durations_read_as_people_write_them(seconds, shown):
    """The CLI's ages, the Flower page's and the relay's log: never ``0:00:20``, ``7200.0 s``."""
    assert readable(None if seconds is None else timedelta(seconds=seconds)) == shown


def test_redelivery_that_outlives_the_inbox_retention_is_refused_naming_both_keys():
    """Every message it could send again would be one whose inbox mark may be gone."""
    conf = {"reliable_inbox_retention": "1h", "reliable_outbox_redeliver_unseen_after": "2h"}
    with pytest.raises(
        ConfigurationError,
        match=r"'reliable_outbox_redeliver_unseen_after'.*'reliable_inbox_retention'",
    ):
        Settings.from_conf(conf)
    Settings.from_conf({**conf, "reliable_outbox_redeliver_unseen_after": "10m"})
    Settings.from_conf({**conf, "reliable_inbox_retention": None})


def test_redeliveries_are_capped_by_default():
    assert Settings.from_conf({}).outbox_max_redeliveries == 3
    with pytest.raises(ConfigurationError, match="'reliable_outbox_max_redeliveries'"):
        Settings.from_conf({"reliable_outbox_max_redeliveries": -1})
