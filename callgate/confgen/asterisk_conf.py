"""A small parser of Asterisk's configuration syntax (``main/config.c``), pure.

What it follows:

* ``[name]`` opens a section; ``[name](!)`` is a template, ``[name](tpl1,tpl2)`` inherits the
  options of earlier templates (copied first, in order), ``[name](+)`` appends to the last
  section of that name; options may be combined (``[name](!,tpl)``).
* ``key = value`` and ``key => value`` (an "object" line); spaces around key and value are
  trimmed; the value may itself hold ``=``.
* ``;`` starts a comment unless escaped as ``\\;`` (which gives ``;``); ``;-- ... --;`` is a block
  comment that may span lines.
* ``#include`` / ``#tryinclude`` / ``#exec`` lines are kept as directives, not followed.

It raises :class:`ConfigSyntaxError` where Asterisk would log a parse error: an option before any
section, a line without ``=``, an unterminated ``[``, an unknown template, ``(+)`` without a
section to append to. The same section name may appear several times (pjsip.conf uses one name
for an endpoint, its auth and its aor).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from callgate.confgen.errors import ConfgenError


class ConfigSyntaxError(ConfgenError):
    """The text is not valid Asterisk configuration; the message gives the line number."""


@dataclass(slots=True)
class ConfItem:
    key: str
    value: str
    is_object: bool = False  # written with "=>"
    inherited: bool = False  # copied from a template


@dataclass(slots=True)
class ConfSection:
    name: str
    is_template: bool = False
    templates: tuple[str, ...] = ()
    items: list[ConfItem] = field(default_factory=list)
    line: int = 0

    def get(self, key: str) -> str | None:
        """The last value of ``key`` (later lines win, as for most single-valued options)."""
        values = self.getall(key)
        return values[-1] if values else None

    def getall(self, key: str) -> list[str]:
        return [item.value for item in self.items if item.key == key]

    def as_dict(self) -> dict[str, str]:
        """Single-valued view (the last value of each key)."""
        return {item.key: item.value for item in self.items}


@dataclass(slots=True)
class ConfFile:
    sections: list[ConfSection] = field(default_factory=list)
    directives: list[str] = field(default_factory=list)

    def named(self, name: str) -> list[ConfSection]:
        return [s for s in self.sections if s.name == name]

    def of_type(self, type_: str) -> list[ConfSection]:
        """Sections whose ``type`` option is ``type_`` (pjsip.conf objects, sip.conf peers)."""
        return [s for s in self.sections if s.get("type") == type_ and not s.is_template]


def _strip_comment(line: str, in_block: bool) -> tuple[str, bool]:
    """The line without comments, and whether a block comment is still open after it."""
    out: list[str] = []
    i = 0
    while i < len(line):
        if in_block:
            end = line.find("--;", i)
            if end < 0:
                return "".join(out), True
            i, in_block = end + 3, False
            continue
        char = line[i]
        if char == "\\" and line.startswith(";", i + 1):
            out.append(";")
            i += 2
            continue
        if char == ";":
            if line.startswith(";--", i):
                in_block = True
                i += 3
                continue
            break
        out.append(char)
        i += 1
    return "".join(out), in_block


def parse_config(text: str) -> ConfFile:
    """Parse the text of one Asterisk configuration file."""
    result = ConfFile()
    current: ConfSection | None = None
    in_block = False
    for number, raw in enumerate(text.splitlines(), start=1):
        if not in_block and raw.lstrip().startswith("#"):
            result.directives.append(raw.strip())
            continue
        line, in_block = _strip_comment(raw, in_block)
        line = line.strip()
        if not line:
            continue
        if line.startswith("["):
            current = _open_section(result, line, number)
            continue
        if current is None:
            raise ConfigSyntaxError(f"line {number}: option before any [section]: {raw!r}")
        key, sep, value = line.partition("=")
        if not sep:
            raise ConfigSyntaxError(f"line {number}: no '=' in {raw!r}")
        is_object = value.startswith(">")
        if is_object:
            value = value[1:]
        key = key.strip()
        if not key:
            raise ConfigSyntaxError(f"line {number}: empty option name in {raw!r}")
        current.items.append(ConfItem(key, value.strip(), is_object))
    if in_block:
        raise ConfigSyntaxError("unterminated ;-- block comment")
    return result


def _open_section(result: ConfFile, line: str, number: int) -> ConfSection:
    close = line.find("]")
    if close < 0:
        raise ConfigSyntaxError(f"line {number}: no closing ']' in {line!r}")
    name = line[1:close].strip()
    if not name:
        raise ConfigSyntaxError(f"line {number}: empty section name")
    rest = line[close + 1 :].strip()
    options: list[str] = []
    if rest:
        if not (rest.startswith("(") and rest.endswith(")")):
            raise ConfigSyntaxError(f"line {number}: unexpected text after ']': {rest!r}")
        options = [o.strip() for o in rest[1:-1].split(",") if o.strip()]
    if "+" in options:
        for section in reversed(result.sections):
            if section.name == name:
                return section
        raise ConfigSyntaxError(f"line {number}: [{name}](+) but no [{name}] before it")
    section = ConfSection(name=name, is_template="!" in options, line=number)
    templates = tuple(o for o in options if o != "!")
    for template_name in templates:
        template = next((s for s in reversed(result.sections) if s.name == template_name), None)
        if template is None:
            raise ConfigSyntaxError(f"line {number}: unknown template {template_name!r}")
        section.items.extend(
            ConfItem(i.key, i.value, i.is_object, inherited=True) for i in template.items
        )
    section.templates = templates
    result.sections.append(section)
    return section
