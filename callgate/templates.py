"""Where the Asterisk templates live, from a checkout and from an installed wheel.

The folder ``etc-asterisk-templates/`` at the top of the checkout is mapped into the wheel as the
resource package ``callgate.etc_asterisk_templates``; an editable install maps it the same way.
"""

from __future__ import annotations

from importlib import resources
from importlib.abc import Traversable
from pathlib import Path


def templates_dir() -> Traversable:
    """The folder holding the Asterisk templates (``extensions_callgate.conf``, ``*.j2``...)."""
    checkout = Path(__file__).resolve().parent.parent / "etc-asterisk-templates"
    if checkout.is_dir():
        return checkout
    return resources.files("callgate.etc_asterisk_templates")


def read_template(name: str) -> str:
    """The text of one template file, by name."""
    return templates_dir().joinpath(name).read_text(encoding="utf-8")
