"""The maintenance tasks and the ``celery beat`` entries that ``Reliable(app)`` adds.

Run an ordinary ``celery -A app beat`` and a worker: beat sends ``celery_reliable.cleanup``
every ``reliable_cleanup_interval`` and ``celery_reliable.recover_stuck`` every
``reliable_recovery_interval``. The intervals are read when beat evaluates the entry, not
when ``Reliable(app)`` runs, so settings made after it count; ``None`` switches an entry
off. The entries are ordinary ``beat_schedule`` entries: re-time or drop them there.
"""

from __future__ import annotations

import weakref
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from celery import Celery
from celery.schedules import schedstate, schedule

from .exceptions import ConfigurationError

if TYPE_CHECKING:
    from .maintenance import Maintenance
    from .settings import Settings

CLEANUP_TASK = "celery_reliable.cleanup"
RECOVER_TASK = "celery_reliable.recover_stuck"
_OFF = timedelta(hours=1)  # how often beat looks again at a switched-off entry
#: When this process's beat first evaluated each (app name, setting) entry.
_FIRST_LOOKS: dict[tuple[str | None, str], datetime] = {}


class Scheduled(Protocol):
    """What the tasks and entries need of an app's extension, read when they run.

    Both are read late on purpose: settings may be filled in after ``Reliable(app)``.
    """

    @property
    def settings(self) -> Settings: ...

    @property
    def maintenance(self) -> Maintenance: ...


#: The installed extensions by app name, for the entries that travel without their app
#: (beat's shelve); weak, so an app that goes away takes its extension with it.
_BY_NAME: weakref.WeakValueDictionary[str, Scheduled] = weakref.WeakValueDictionary()


class SettingSchedule(schedule):  # type: ignore[misc]
    """Every ``reliable_<setting>``; due at once on beat's first look unless told to wait."""

    def __init__(
        self, setting: str, app: Celery | None = None, app_name: str | None = None
    ) -> None:
        self.setting = setting
        self.app_name = app_name or (app.main if app is not None else None)
        super().__init__(run_every=_OFF, app=app)

    def _settings(self) -> Settings:
        """The settings of the app this entry belongs to, found by the app's name.

        Beat keeps entries in a shelve, and an unpickled schedule has no app (beat would
        fall back to ``current_app``, which may be another app): the app's name travels
        with the entry instead, and every entry goes by it, unpickled or not (so two apps
        of one name in one process share the last one's settings).
        """
        name = self.app_name if self.app_name is not None else self.app.main
        installed = _BY_NAME.get(name or "")
        if installed is None:
            raise ConfigurationError(f"no app named {name!r} with a celery_reliable extension")
        return installed.settings

    def _interval(self) -> timedelta | None:
        value: timedelta | None = getattr(self._settings(), self.setting)
        return value

    def is_due(self, last_run_at: datetime) -> schedstate:
        """Due every interval, and at once when beat starts unless told to wait.

        "At once" means: the entry has not run since this process first looked at it.
        Beat asks once while building its heap and again when the entry comes up, so a
        flag set on the first question would be spent before anything runs; and beat may
        rebuild entries from ``beat_schedule``, so the first look is kept per process.
        """
        interval = self._interval()
        if interval is None:
            return schedstate(False, _OFF.total_seconds())
        self.run_every = interval
        key = (self.app_name, self.setting)
        first_look = _FIRST_LOOKS.setdefault(key, self.now())
        if (
            not self._settings().maintenance_first_run_waits
            and self.maybe_make_aware(last_run_at) < first_look
        ):
            return schedstate(True, interval.total_seconds())
        return super().is_due(last_run_at)

    def __reduce__(self) -> tuple[Any, ...]:  # beat's shelve keeps entries between runs
        return self.__class__, (self.setting, None, self.app_name)

    def __repr__(self) -> str:
        return f"<every reliable_{self.setting}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SettingSchedule) and (other.setting, other.app_name) == (
            self.setting,
            self.app_name,
        )

    def __hash__(self) -> int:
        return hash((self.setting, self.app_name))


def install(app: Celery, reliable: Scheduled) -> None:
    """Register the maintenance tasks on ``app`` and add their beat entries."""
    _BY_NAME[app.main or ""] = reliable

    def cleanup() -> dict[str, int]:
        """Retention cleanup (see celery_reliable.maintenance)."""
        return reliable.maintenance.cleanup().counts

    def recover_stuck() -> dict[str, int]:
        """Stuck-message recovery (see celery_reliable.maintenance)."""
        return reliable.maintenance.recover_stuck().counts

    tasks: list[Any] = [
        app.task(name=name, shared=False, ignore_result=True)(body)
        for name, body in ((CLEANUP_TASK, cleanup), (RECOVER_TASK, recover_stuck))
    ]
    for task, setting in zip(tasks, ("cleanup_interval", "recovery_interval"), strict=True):
        app.add_periodic_task(SettingSchedule(setting, app=app), task.s(), name=task.name)
