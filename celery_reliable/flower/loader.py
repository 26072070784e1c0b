"""Templates: ours over Flower's, and Flower's navbar with a "Dead letters" entry.

Flower renders its navbar on every page with ``{% module Template("navbar.html") %}`` from a
single template directory. Tornado lets an application bring its own template loader (the
``template_loader`` setting), so ours serves our pages from this package, everything else
from Flower's directory, and adds one ``{% include %}`` to the navbar's list of pages as it
is loaded: Flower's files on disk are never changed, and plain ``celery flower`` is
untouched. Our pages extend Flower's ``base.html``, so they look like the rest of Flower.
"""

from __future__ import annotations

import logging
from pathlib import Path

from tornado.template import BaseLoader, Template

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent / "templates"

#: The opening tag of the navbar's list of pages (Workers, Tasks, Broker) in Flower 2.x.
NAV_LIST = '<ul class="app-nav navbar-nav">'
NAV_ITEM = '{% include "reliable_nav_item.html" %}'


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
                if name == "navbar.html":
                    source = add_nav_item(source)
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


def loader(flower_templates: str) -> OverlayLoader:
    """Our templates first, then Flower's (from its ``template_path`` setting)."""
    return OverlayLoader(HERE, Path(flower_templates))
