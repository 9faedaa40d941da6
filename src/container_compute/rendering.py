"""The one template loader: jinja2 templates shipped as package data, rendered strictly.

The templates live in ``container_compute/templates/`` (the repository's top-level
``templates/`` is a link to that folder), so an installed wheel, the packed charm and a source
checkout all read the same files through ``importlib.resources``.
"""

import functools
from importlib import resources
from typing import Any

import jinja2

TEMPLATES_PACKAGE = "container_compute"
TEMPLATES_FOLDER = "templates"


class _PackageLoader(jinja2.BaseLoader):
    """Load templates from the package's data with importlib.resources (zip-safe)."""

    def get_source(
        self, environment: jinja2.Environment, template: str
    ) -> tuple[str, str | None, Any]:
        """Return the template's text; raise TemplateNotFound when there is none."""
        path = resources.files(TEMPLATES_PACKAGE).joinpath(TEMPLATES_FOLDER, template)
        if "/" in template or "\\" in template or not path.is_file():
            raise jinja2.TemplateNotFound(template)
        return path.read_text(encoding="utf-8"), None, lambda: True


@functools.cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=_PackageLoader(),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # noqa: S701 - renders YAML, shell, sysctl and systemd text, never HTML
    )


def render(name: str, **values: Any) -> str:
    """Render template ``name`` with ``values``; a value the template uses but lacks raises."""
    return _environment().get_template(name).render(**values)


def template_names() -> list[str]:
    """Return the names of every shipped template."""
    folder = resources.files(TEMPLATES_PACKAGE).joinpath(TEMPLATES_FOLDER)
    return sorted(entry.name for entry in folder.iterdir() if entry.name.endswith(".j2"))
