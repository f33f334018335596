"""AMI wire format, pure: bytes <-> messages. No I/O, no asyncio, no clock.

Asterisk greets with one banner line (``Asterisk Call Manager/11.0.0\\r\\n``), then every
message is ``Key: Value\\r\\n`` lines ended by an empty ``\\r\\n`` line. Keys repeat
(``Output:`` once per CLI line, ``Variable:`` once per variable, two ``Exten:`` in a recorded
``UserEvent``), so a message keeps its headers as an ordered tuple of pairs.

:class:`AmiParser` is incremental: feed it whatever the socket returned, split anywhere (even
between ``\\r`` and ``\\n``), and it returns the messages completed so far. Bytes are decoded once
per complete message (UTF-8, invalid bytes replaced), never per read, so a multi-byte character
split across reads survives. A message may not grow past ``max_message_bytes``: a peer that never
sends the empty line gets :class:`AmiProtocolError` instead of our memory.

The legacy command form (Asterisk <= 13) ``Response: Follows`` / raw output lines /
``--END COMMAND--`` is folded into the modern shape: each output line becomes an ``Output``
header, so callers read ``get_all("Output")`` for both.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from callgate.ami.errors import AmiProtocolError

DEFAULT_MAX_MESSAGE_BYTES = 1 << 20  # 1 MiB: a `pjsip show endpoints` of ~2000 endpoints
MAX_BANNER_BYTES = 1024
BANNER_MARK = b"Call Manager/"  # "Asterisk Call Manager/11.0.0"

# Header keys whose values are credentials: masked in every repr and log line.
SENSITIVE_KEYS = frozenset({"secret", "key"})
MASK = "********"

_END = b"\r\n\r\n"
_FOLLOWS_LINE = b"Response: Follows\r\n"
_END_COMMAND = "--END COMMAND--"
_END_FOLLOWS = b"--END COMMAND--\r\n\r\n"
_FOLLOWS_HEADERS = frozenset({"privilege", "actionid"})
_FORBIDDEN_IN_VALUE = ("\r", "\n", "\x00")

FieldValue = str | int | Sequence[str]


class AmiMessageKind(StrEnum):
    """What a message is, from its first identifying header."""

    RESPONSE = "response"
    EVENT = "event"
    ACTION = "action"  # what a server (our fake) receives
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class AmiMessage:
    """One AMI message: ordered ``(key, value)`` headers, keys may repeat.

    Lookups are case-insensitive, like Asterisk's own ``astman_get_header``. A line without a colon
    (never seen from Asterisk 22) is kept with the key ``""``.
    """

    headers: tuple[tuple[str, str], ...]
    # lower-cased key -> index of its first header: every lookup is O(1)
    _first: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        first: dict[str, int] = {}
        for i, (key, _) in enumerate(self.headers):
            first.setdefault(key.lower(), i)
        object.__setattr__(self, "_first", first)

    @classmethod
    def of(cls, *pairs: tuple[str, str], **fields: str) -> AmiMessage:
        """Build a message from pairs then keyword fields (for tests and the fake server)."""
        return cls(tuple(pairs) + tuple(fields.items()))

    def get(self, key: str, default: str | None = None) -> str | None:
        """The first value of ``key``, or ``default``."""
        i = self._first.get(key.lower())
        return default if i is None else self.headers[i][1]

    def get_all(self, key: str) -> list[str]:
        """Every value of ``key``, in order (``Output`` lines, ``Variable`` ...)."""
        wanted = key.lower()
        return [v for k, v in self.headers if k.lower() == wanted]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.lower() in self._first

    @property
    def kind(self) -> AmiMessageKind:
        first = self._first
        if "event" in first:
            return AmiMessageKind.EVENT
        if "response" in first:
            return AmiMessageKind.RESPONSE
        if "action" in first:
            return AmiMessageKind.ACTION
        return AmiMessageKind.OTHER

    @property
    def name(self) -> str | None:
        """The event name for an event, the action name for an action, else None."""
        kind = self.kind
        if kind is AmiMessageKind.EVENT:
            return self.get("Event")
        if kind is AmiMessageKind.ACTION:
            return self.get("Action")
        return None

    @property
    def action_id(self) -> str | None:
        return self.get("ActionID")

    @property
    def response(self) -> str | None:
        """``Success``, ``Error``, ``Follows``, ``Goodbye`` ... for a response."""
        return self.get("Response")

    @property
    def output(self) -> list[str]:
        """The CLI output lines of a ``Command`` response."""
        return self.get_all("Output")

    @property
    def completes_list(self) -> bool:
        """True for the event that closes a list action (``EventList: Complete``)."""
        if self.kind is not AmiMessageKind.EVENT:
            return False
        marker = self.get("EventList")
        if marker is not None:
            return marker.lower() == "complete"
        return (self.get("Event") or "").endswith("Complete")

    def scrubbed(self) -> tuple[tuple[str, str], ...]:
        """The headers with credentials masked: what may be logged."""
        return tuple((k, MASK if k.lower() in SENSITIVE_KEYS else v) for k, v in self.headers)

    def __repr__(self) -> str:
        return f"AmiMessage({self.scrubbed()!r})"

    def to_bytes(self) -> bytes:
        """The wire form (used by the fake server to send responses and events)."""
        return encode_message(self.headers)


class AmiParser:
    """Incremental AMI parser. ``feed`` returns the messages completed by the new bytes.

    A message is found by searching the buffer for its ``\\r\\n\\r\\n`` end (in C, resuming
    where the last search stopped), then decoded and split in one go. After an
    :class:`AmiProtocolError` the parser is spent: drop the connection.
    """

    __slots__ = ("_buf", "_scan", "_max", "_need_banner", "_banner", "_failed")

    def __init__(
        self, *, expect_banner: bool = True, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    ) -> None:
        if max_message_bytes < 64:
            raise ValueError("max_message_bytes must be at least 64")
        self._buf = bytearray()  # only ever the message not yet complete
        self._scan = 0  # where the next search for an end may start
        self._max = max_message_bytes
        self._need_banner = expect_banner
        self._banner: str | None = None
        self._failed = False

    @property
    def banner(self) -> str | None:
        """The banner line (``Asterisk Call Manager/11.0.0``) once received."""
        return self._banner

    @property
    def pending_bytes(self) -> int:
        """Bytes held for the message not yet complete."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[AmiMessage]:
        if self._failed:
            raise AmiProtocolError("parser already failed; the connection must be dropped")
        try:
            return self._feed(data)
        except AmiProtocolError:
            self._failed = True
            raise

    def _feed(self, data: bytes) -> list[AmiMessage]:
        buf = self._buf
        buf += data
        out: list[AmiMessage] = []
        pos = 0
        if self._need_banner:
            nl = buf.find(b"\n")
            if nl < 0:
                if len(buf) > MAX_BANNER_BYTES:
                    raise AmiProtocolError(f"no AMI banner within {MAX_BANNER_BYTES} bytes")
                return out
            line = bytes(buf[:nl]).rstrip(b"\r")
            if BANNER_MARK not in line:
                raise AmiProtocolError(f"not an AMI banner: {line[:80]!r}")
            self._banner = line.decode("utf-8", "replace")
            self._need_banner = False
            pos = self._scan = nl + 1
        while True:
            while buf.startswith(b"\r\n", pos):  # blank lines between messages are harmless
                pos += 2
            rest = len(buf) - pos
            if rest < len(_FOLLOWS_LINE) and _FOLLOWS_LINE.startswith(buf[pos:]):
                break  # too short to know whether this is the legacy command form
            follows = buf.startswith(_FOLLOWS_LINE, pos)
            end_mark = _END_FOLLOWS if follows else _END
            idx = buf.find(end_mark, max(pos, self._scan))
            if idx < 0:
                self._scan = max(pos, len(buf) - len(end_mark) + 1)
                break
            size = idx + 2 - pos  # the message's lines, each with its CRLF
            if size > self._max:
                raise AmiProtocolError(f"AMI message of {size} bytes, above {self._max}")
            if follows:
                text = buf[pos : idx + len(_END_COMMAND)].decode("utf-8", "replace")
                out.append(AmiMessage(_parse_follows(text.split("\n"))))
            else:
                # One decode per complete message: a character split across reads is whole here.
                text = buf[pos:idx].decode("utf-8", "replace")
                out.append(AmiMessage(_split_headers(text)))
            pos = idx + len(end_mark)
            self._scan = pos
        del buf[:pos]
        self._scan -= pos
        if len(buf) > self._max + 2:
            raise AmiProtocolError(f"AMI message larger than {self._max} bytes without its end")
        return out


def _split_header(line: str) -> tuple[str, str]:
    key, sep, value = line.partition(":")
    if not sep:
        return ("", line)
    # Asterisk writes "Key: Value": drop exactly that one space, keep the rest (CLI indentation).
    return (key, value[1:] if value[:1] == " " else value)


def _split_headers(text: str) -> tuple[tuple[str, str], ...]:
    out: list[tuple[str, str]] = []
    for line in text.split("\r\n"):
        key, sep, value = line.partition(": ")  # the common case, in one C call
        if sep and ":" not in key:
            out.append((key, value))
        else:
            out.append(_split_header(line))
    return tuple(out)


def _parse_follows(lines: list[str]) -> tuple[tuple[str, str], ...]:
    """``Response: Follows`` + Privilege/ActionID + raw output + ``--END COMMAND--``."""
    lines = [line.removesuffix("\r") for line in lines]
    headers: list[tuple[str, str]] = [_split_header(lines[0])]
    i = 1
    while i < len(lines):
        key, value = _split_header(lines[i])
        if key.lower() not in _FOLLOWS_HEADERS:
            break
        headers.append((key, value))
        i += 1
    for raw in lines[i:]:
        if raw.endswith(_END_COMMAND):
            rest = raw[: -len(_END_COMMAND)]
            if rest:
                headers.append(("Output", rest))
            break
        headers.append(("Output", raw))
    return tuple(headers)


def _check_key(key: str) -> None:
    if not key or key != key.strip() or ":" in key or any(c in key for c in _FORBIDDEN_IN_VALUE):
        raise ValueError(f"invalid AMI header key {key!r}")


def _check_value(key: str, value: str) -> None:
    if any(c in value for c in _FORBIDDEN_IN_VALUE):
        # Never echo the value: it may be a secret.
        raise ValueError(f"AMI header {key!r} contains CR, LF or NUL (header injection)")


def encode_message(headers: Iterable[tuple[str, str]]) -> bytes:
    """``Key: Value\\r\\n`` lines and the closing empty line, UTF-8."""
    parts: list[str] = []
    for key, value in headers:
        _check_key(key)
        _check_value(key, value)
        parts.append(f"{key}: {value}\r\n")
    parts.append("\r\n")
    return "".join(parts).encode("utf-8")


def _field_values(value: FieldValue) -> list[str]:
    if isinstance(value, bool):
        return ["true" if value else "false"]
    if isinstance(value, int):
        return [str(value)]
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def encode_action(
    name: str, action_id: str | None, fields: Mapping[str, FieldValue] | None = None
) -> bytes:
    """``Action: <name>``, ``ActionID: <id>``, then the fields in order.

    A sequence value repeats the key (``Variable=["A=1", "B=2"]``). CR, LF or NUL in any key or
    value raises ValueError: one header must never become two.
    """
    headers: list[tuple[str, str]] = [("Action", name)]
    if action_id is not None:
        headers.append(("ActionID", action_id))
    for key, value in (fields or {}).items():
        if key.lower() in {"action", "actionid"}:
            raise ValueError(f"{key!r} is set by encode_action, not a field")
        headers.extend((key, v) for v in _field_values(value))
    return encode_message(headers)
