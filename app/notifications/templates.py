"""Jinja2 templates of notifications: a text body for every channel, an HTML alternative for email."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, TemplateNotFound, select_autoescape

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"

#: Subject line of each template (a Jinja2 string); a plain message uses the subject it was given.
SUBJECTS = {
    "message": "{{ subject }}",
    "password_reset": "Reset your password",
    "account_verification": "Verify your email address",
    "mfa_code": "Your code",
    "security_alert": "Security alert: {{ kind }}",
}


@dataclass(frozen=True)
class Rendered:
    """A template's output for one recipient."""

    subject: str
    text: str
    html: str | None


@lru_cache
def _environment() -> Environment:
    return Environment(
        loader=FileSystemLoader(TEMPLATE_DIR),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
    )


def exists(template: str) -> bool:
    """True when `template` has at least a text body."""
    return (TEMPLATE_DIR / f"{template}.txt").is_file()


def render(template: str, context: dict[str, Any], *, html: bool) -> Rendered:
    """Render `template` (text, and HTML when asked and present) with `context`."""
    env = _environment()
    subject = env.from_string(SUBJECTS.get(template, "{{ subject }}")).render(context)
    text = env.get_template(f"{template}.txt").render(context)
    body_html = None
    if html:
        try:
            body_html = env.get_template(f"{template}.html").render({**context, "subject": subject})
        except TemplateNotFound:
            body_html = None
    return Rendered(subject=subject.strip(), text=text, html=body_html)
