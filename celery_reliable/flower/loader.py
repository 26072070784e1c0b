"""Templates: ours over Flower's, and three of Flower's with a few lines added.

Flower renders its navbar on every page with ``{% module Template("navbar.html") %}`` from a
single template directory. Tornado lets an application bring its own template loader (the
``template_loader`` setting), so ours serves our pages from this package, everything else
from Flower's directory, and adds to three of Flower's templates as they are loaded: a
"Dead letters" entry in the navbar; on the tasks page, ``DEAD_LETTERED`` shown as a failure
(a danger badge, and in the "Failed" filter); on a task's page, the dead letter's reason and
a link to its entry instead of an empty result. Flower's files on disk are never changed,
and plain ``celery flower`` is untouched. Our pages extend Flower's ``base.html``, so they
look like the rest of Flower. If a Flower release changes the markup an addition looks for,
that template is served as it is and a warning is logged: nothing breaks.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path

from tornado.template import BaseLoader, Template

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent / "templates"

#: The opening tag of the navbar's list of pages (Workers, Tasks, Broker) in Flower 2.x.
NAV_LIST = '<ul class="app-nav navbar-nav">'
NAV_ITEM = '{% include "reliable_nav_item.html" %}'
#: Our script for the tasks page, after Flower's own scripts.
TASKS_SCRIPT = '{% block extra_scripts %}{% include "reliable_tasks_script.html" %}{% end %}'
#: The task page's "Result" row, and its fallback grey badge for states it does not know.
RESULT_ROW = re.compile(r"<div[^>]*>\s*<dt>Result</dt>.*?</div>", re.DOTALL)
GREY_BADGE = re.compile(
    r'{% else %}(\s*)<span class="badge text-bg-secondary">{{ task.state }}</span>'
)


class OverlayLoader(BaseLoader):
    """Templates from ``directories`` in order, first found wins; names are flat.

    Flat names (no resolution relative to the including template) let our
    ``reliable_*.html`` extend ``base.html`` from Flower's directory.
    """

    def __init__(self, *directories: Path, autoescape: str = "xhtml_escape") -> None:
        super().__init__(autoescape=autoescape)
        self.directories = directories

    def resolve_path(self, name: str, parent_path: str | None = None) -> str:
        return name

    def _create_template(self, name: str) -> Template:
        for directory in self.directories:
            path = directory / name
            if path.is_file():
                source = path.read_text(encoding="utf-8")
                patch = PATCHES.get(name) if directory != HERE else None
                if patch is not None:
                    source = patch(source)
                return Template(source, name=name, loader=self)
        raise FileNotFoundError(f"no template {name!r} in {', '.join(map(str, self.directories))}")


def add_nav_item(navbar: str) -> str:
    """Flower's navbar source with our entry last in its list of pages.

    If a Flower release changes the markup, the navbar is served as it is (a warning is
    logged): the page is still at ``/dead-letters``, and nothing breaks.
    """
    start = navbar.find(NAV_LIST)
    end = navbar.find("</ul>", start) if start >= 0 else -1
    if end < 0:
        logger.warning("Flower's navbar.html has no %r: no 'Dead letters' link in it", NAV_LIST)
        return navbar
    return f"{navbar[:end]}{NAV_ITEM}\n      {navbar[end:]}"


def add_tasks_script(tasks: str) -> str:
    """Flower's tasks page with our script (``DEAD_LETTERED`` as a failure) at its end."""
    if "{% block extra_scripts %}" in tasks:
        logger.warning("Flower's tasks.html has its own scripts: DEAD_LETTERED shown as it is")
        return tasks
    return f"{tasks}\n{TASKS_SCRIPT}\n"


def add_dead_letter_rows(task: str) -> str:
    """Flower's task page with, for a dead-lettered task, a danger badge and our rows
    (reason, link to the entry) in place of the result, which a dead letter does not have."""
    result = RESULT_ROW.search(task)
    badge = GREY_BADGE.search(task)
    if result is None or badge is None:
        logger.warning("Flower's task.html changed: no dead-letter details on task pages")
        return task
    rows = (
        '{% if task.state == "DEAD_LETTERED" %}{% include "reliable_task_dead_letter.html" %}'
        f"{{% else %}}{result.group(0)}{{% end %}}"
    )
    danger = (
        '{% elif task.state == "DEAD_LETTERED" %}'
        f'{badge.group(1)}<span class="badge text-bg-danger">{{{{ task.state }}}}</span>'
    )
    task = task[: result.start()] + rows + task[result.end() :]
    return task.replace(badge.group(0), danger + badge.group(0), 1)


#: What is added to which of Flower's templates.
PATCHES: dict[str, Callable[[str], str]] = {
    "navbar.html": add_nav_item,
    "tasks.html": add_tasks_script,
    "task.html": add_dead_letter_rows,
}


def loader(flower_templates: str) -> OverlayLoader:
    """Our templates first, then Flower's (from its ``template_path`` setting)."""
    return OverlayLoader(HERE, Path(flower_templates))
