"""FastAGI codec: pure bytes <-> values. No I/O, no asyncio, no clock.

What Asterisk 22 sends (see tests/data/transcripts/README.md):

* a header block of ``agi_<name>: <value>\\n`` lines ended by an empty line;
* one reply per command: ``200 result=<r>[ (<data>)][ endpos=<n>]``, ``510 ...``, ``511 ...``,
  ``520 ...`` or the multi-line ``520-...`` form that ends with a line starting ``520 ``;
  ``100 result=0 Trying...`` is an intermediate line, not the reply;
* ``HANGUP`` on a line of its own, unasked, at any point between replies (before or after the
  reply of the command in flight).

Commands are tokenised by Asterisk's ``parse_args()`` (res_agi.c): words split on blanks,
double quotes group, a backslash escapes the next character (and is dropped). `encode_command`
quotes what needs it; `split_command` is the exact inverse (what Asterisk would see).
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Final, Literal
from urllib.parse import parse_qsl, urlsplit

from callgate.agi.errors import AgiProtocolError

__all__ = [
    "HANGUP",
    "HEADER_ORDER",
    "AgiEnv",
    "AgiEvent",
    "AgiReply",
    "ReplyReader",
    "decode_line",
    "encode_command",
    "parse_header_block",
    "parse_reply_line",
    "split_command",
]

#: Order of the header lines exactly as Asterisk 22 sends them (args follow: agi_arg_1..N).
HEADER_ORDER: Final[tuple[str, ...]] = (
    "network",
    "network_script",
    "request",
    "channel",
    "language",
    "type",
    "uniqueid",
    "version",
    "callerid",
    "calleridname",
    "callingpres",
    "callingani2",
    "callington",
    "callingtns",
    "dnid",
    "rdnis",
    "context",
    "extension",
    "priority",
    "enhanced",
    "accountcode",
    "threadid",
)

_UNKNOWN_MEANS_EMPTY: Final = frozenset({"callerid", "calleridname", "dnid", "rdnis"})
_ARG_KEY = re.compile(r"arg_([1-9][0-9]{0,3})")
_MAX_USAGE_LINES: Final = 500
_MAX_ARGS: Final = 127  # res_agi MAX_ARGS is 128 including the terminating NULL


def decode_line(raw: bytes) -> str:
    """Bytes of one line (with or without its LF) -> text. UTF-8, undecodable bytes replaced."""
    if raw.endswith(b"\n"):
        raw = raw[:-1]
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    return raw.decode("utf-8", errors="replace")


# --------------------------------------------------------------------------- header block


@dataclass(frozen=True, slots=True)
class AgiEnv:
    """The header block of one FastAGI session, parsed.

    ``script`` is the route: the URL path without query string and leading slash. Values sent as
    ``unknown`` for caller id, caller name, dnid and rdnis become ``""`` here (``raw`` keeps them).
    """

    network_script: str
    script: str
    query: Mapping[str, str] = field(hash=False)
    request: str
    channel: str
    language: str
    type: str
    uniqueid: str
    version: str
    callerid: str
    calleridname: str
    callingpres: str
    callingani2: str
    callington: str
    callingtns: str
    dnid: str
    rdnis: str
    context: str
    extension: str
    priority: str
    enhanced: str
    accountcode: str
    threadid: str
    args: tuple[str, ...]
    raw: Mapping[str, str] = field(hash=False, repr=False)


def parse_header_block(data: bytes) -> AgiEnv:
    """Parse the header block (the final empty line may be included or not).

    Raises `AgiProtocolError` for a line that is not ``agi_<name>: <value>``, a duplicate name,
    a gap in ``agi_arg_N`` or an empty block.
    """
    # One decode for the block (every call parses one, some 25 lines): a UTF-8 sequence never
    # holds the LF byte, so it decodes line by line as it would (decode_line) one line at a time.
    lines = data.decode("utf-8", errors="replace").split("\n")
    raw: dict[str, str] = {}
    args: dict[int, str] = {}
    for number, line in enumerate(lines, start=1):
        if line[-1:] == "\r":
            line = line[:-1]
        if line == "":
            if any(rest.strip() for rest in data.split(b"\n")[number:]):
                raise AgiProtocolError(f"header line {number}: data after the end of the header")
            break
        if not line.startswith("agi_"):
            raise AgiProtocolError(f"header line {number}: not an agi_ variable: {line[:80]!r}")
        name, sep, value = line[4:].partition(":")
        if not sep or not name or " " in name:
            raise AgiProtocolError(f"header line {number}: malformed: {line[:80]!r}")
        if value[:1] == " ":
            value = value[1:]
        if name in raw:
            raise AgiProtocolError(f"header line {number}: duplicate agi_{name}")
        raw[name] = value
        if name.startswith("arg_"):
            match = _ARG_KEY.fullmatch(name)
            if match:
                args[int(match.group(1))] = value
    if not raw:
        raise AgiProtocolError("empty header block")
    if args and sorted(args) != list(range(1, len(args) + 1)):
        raise AgiProtocolError(f"agi_arg_N are not numbered 1..N: {sorted(args)}")

    def get(name: str) -> str:
        value = raw.get(name, "")
        if value == "unknown" and name in _UNKNOWN_MEANS_EMPTY:
            return ""
        return value

    network_script = raw.get("network_script")
    if network_script is None:
        # Not sent by a non-network AGI; derive it from the URL when there is one.
        parts = urlsplit(raw.get("request", ""))
        network_script = parts.path.lstrip("/") + (f"?{parts.query}" if parts.query else "")
    path, _, query_string = network_script.partition("?")
    query = dict(parse_qsl(query_string, keep_blank_values=True)) if query_string else {}
    return AgiEnv(
        network_script=network_script,
        script=path.lstrip("/"),
        query=MappingProxyType(query),
        request=get("request"),
        channel=get("channel"),
        language=get("language"),
        type=get("type"),
        uniqueid=get("uniqueid"),
        version=get("version"),
        callerid=get("callerid"),
        calleridname=get("calleridname"),
        callingpres=get("callingpres"),
        callingani2=get("callingani2"),
        callington=get("callington"),
        callingtns=get("callingtns"),
        dnid=get("dnid"),
        rdnis=get("rdnis"),
        context=get("context"),
        extension=get("extension"),
        priority=get("priority"),
        enhanced=get("enhanced"),
        accountcode=get("accountcode"),
        threadid=get("threadid"),
        args=tuple(args[n] for n in range(1, len(args) + 1)),
        raw=MappingProxyType(raw),
    )


# --------------------------------------------------------------------------- commands

_NEEDS_QUOTES = re.compile(r'[\s"\\]')
_FORBIDDEN = re.compile(r"[\r\n\x00]")
_VERB = re.compile(r"[A-Za-z][A-Za-z0-9 _]*")


def _quote(arg: str) -> str:
    if arg and not _NEEDS_QUOTES.search(arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def encode_command(command: str, *args: str | int) -> bytes:
    """One command line, LF-terminated, UTF-8.

    ``command`` is the verb, sent as is (``"GET VARIABLE"``). Each argument is quoted when it is
    empty or holds blanks, double quotes or backslashes, so Asterisk sees exactly one argument
    with exactly this text. CR, LF and NUL cannot be sent (they would end the command and let
    the rest run as another one): `ValueError`.
    """
    if not _VERB.fullmatch(command):
        raise ValueError(f"invalid AGI command verb: {command!r}")
    parts = [command]
    for arg in args:
        text = str(arg)
        if _FORBIDDEN.search(text):
            raise ValueError(f"AGI argument holds CR, LF or NUL: {text!r}")
        parts.append(_quote(text))
    if len(parts) > _MAX_ARGS:
        raise ValueError(f"too many AGI arguments: {len(parts)}")
    return (" ".join(parts) + "\n").encode("utf-8")


def split_command(line: str) -> tuple[str, ...]:
    """Split a command line exactly as Asterisk's ``parse_args()`` does (the inverse of
    `encode_command`)."""
    line = line.rstrip("\r\n")
    if '"' not in line and "\\" not in line:
        return tuple(word for word in line.replace("\t", " ").split(" ") if word)
    argv: list[str] = []
    current: list[str] = []
    in_word = False
    quoted = False
    escaped = False
    for char in line:
        if char == '"' and not escaped:
            quoted = not quoted
            if quoted and not in_word:
                in_word = True
            continue
        if char in " \t" and not quoted and not escaped:
            if in_word:
                argv.append("".join(current))
                current = []
            in_word = False
            continue
        if char == "\\" and not escaped:
            escaped = True
            continue
        in_word = True
        current.append(char)
        escaped = False
    if in_word:
        argv.append("".join(current))
    return tuple(argv)


# --------------------------------------------------------------------------- replies


class AgiEvent(enum.Enum):
    """Unsolicited lines from Asterisk."""

    HANGUP = "HANGUP"


HANGUP: Final = AgiEvent.HANGUP


@dataclass(frozen=True, slots=True)
class AgiReply:
    """One final reply.

    ``result`` is the integer after ``result=`` or None when it is empty (``200 result=
    (timeout)``) or not an integer; ``result_text`` keeps it verbatim (GET DATA digits such as
    ``0012``). ``data`` is the text inside the outer parentheses, None when there are none
    (``()`` gives ``""``). ``text`` is what follows the code of an error reply; ``usage`` the
    usage lines of a multi-line 520. ``extra`` is anything after the data we do not model.
    """

    code: int
    result: int | None = None
    result_text: str = ""
    data: str | None = None
    endpos: int | None = None
    text: str = ""
    usage: str = ""
    extra: str = ""
    lines: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.code == 200


_CODE_LINE = re.compile(r"([1-5][0-9]{2})([ -])(.*)")
_RESULT = re.compile(r"result=(\S*)(?: (.*))?")
_ENDPOS = re.compile(r"(?:^| )endpos=(-?[0-9]+)")


def _int_or_none(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


@functools.lru_cache(maxsize=256)  # a call's replies are mostly the same few lines
def parse_reply_line(line: str) -> AgiReply:
    """Parse a one-line final reply (``200 ...``, ``510 ...``, ``511 ...``, ``520 ...``, 5xx).

    Multi-line ``520-`` replies, ``100`` and ``HANGUP`` lines need `ReplyReader`. The reply is
    immutable, so the same line gives the same object (a line that is not a reply raises, and
    is not remembered).
    """
    match = _CODE_LINE.fullmatch(line)
    if match is None or match.group(2) != " ":
        raise AgiProtocolError(f"malformed reply line: {line[:120]!r}")
    code = int(match.group(1))
    rest = match.group(3)
    if code == 200:
        return _parse_200(rest, line)
    if code >= 500:
        return AgiReply(code=code, text=rest, lines=(line,))
    raise AgiProtocolError(f"unexpected reply code {code}: {line[:120]!r}")


def _parse_200(rest: str, line: str) -> AgiReply:
    match = _RESULT.fullmatch(rest)
    if match is None:
        raise AgiProtocolError(f"200 reply without result=: {line[:120]!r}")
    result_text = match.group(1)
    tail = (match.group(2) or "").strip(" ")
    data: str | None = None
    if tail.startswith("("):
        close = tail.rfind(")")
        if close < 0:
            raise AgiProtocolError(f"unterminated (data) in reply: {line[:120]!r}")
        data = tail[1:close]
        tail = tail[close + 1 :].strip(" ")
    endpos: int | None = None
    endpos_match = _ENDPOS.search(tail)
    if endpos_match is not None:
        endpos = int(endpos_match.group(1))
        tail = (tail[: endpos_match.start()] + tail[endpos_match.end() :]).strip(" ")
    return AgiReply(
        code=200,
        result=_int_or_none(result_text),
        result_text=result_text,
        data=data,
        endpos=endpos,
        extra=tail,
        lines=(line,),
    )


class ReplyReader:
    """Line-fed state machine: feed each line from Asterisk, get back a final `AgiReply`, the
    `HANGUP` event, or None when more lines are needed (inside a ``520-`` block, after a
    ``100 Trying``). Raises `AgiProtocolError` on a line that fits nowhere."""

    __slots__ = ("_lines", "_usage")

    def __init__(self) -> None:
        self._usage: list[str] | None = None
        self._lines: list[str] = []

    @property
    def in_reply(self) -> bool:
        """True while a multi-line reply or an intermediate ``100`` line is pending."""
        return bool(self._lines)

    def feed(self, line: str) -> AgiReply | Literal[AgiEvent.HANGUP] | None:
        if line == "HANGUP":
            return HANGUP
        if self._usage is not None:
            return self._feed_usage(line)
        if line.startswith("520-"):
            self._usage = []
            self._lines.append(line)
            return None
        if line.startswith("100 "):
            self._lines.append(line)
            return None
        reply = parse_reply_line(line)
        if self._lines:
            reply = replace(reply, lines=(*self._lines, line))
            self._lines = []
        return reply

    def _feed_usage(self, line: str) -> AgiReply | None:
        assert self._usage is not None
        self._lines.append(line)
        if line.startswith("520 "):
            first = self._lines[0]
            reply = AgiReply(
                code=520,
                text=first[4:],
                usage="\n".join(self._usage),
                lines=tuple(self._lines),
            )
            self._usage = None
            self._lines = []
            return reply
        if len(self._usage) >= _MAX_USAGE_LINES:
            raise AgiProtocolError(f"520 usage longer than {_MAX_USAGE_LINES} lines")
        self._usage.append(line)
        return None
