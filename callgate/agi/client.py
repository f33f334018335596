"""A FastAGI *client* that speaks like Asterisk 22: for tests, ``callgate demo`` and load runs.

* `FakeAsterisk` connects to a FastAGI server, sends a header block in Asterisk's exact order,
  then answers each command through a `Responder` and records everything it received. It
  reports a server that never closes the socket (``lingered``): on a real Asterisk that keeps
  the channel and its CDR alive.
* `AsteriskEmulator` is the stateful default responder: variables, SHARED(), DATABASE, GET DATA
  digits, STREAM FILE, and an ``EXEC Dial`` whose outcome is scripted by `DialOutcome` (answer
  after ring, talk time, BUSY/NOANSWER/CONGESTION/CHANUNAVAIL, the caller hanging up), honouring
  ``L(ms...)`` and stamping ``SHARED(CALLGATE_ANSWER_MS)`` through ``U(callgate-answered^<id>)``
  like the dialplan of DESIGN.md §5. Time is simulated by default (``real_time=False``): talk
  time moves a clock offset instead of sleeping, so ``ANSWEREDTIME_MS`` and the STRFTIME stamps
  stay consistent while tests run fast.
* `run_load` drives many calls with bounded concurrency and returns per-call latencies.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import math
import re
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from callgate.agi.codec import HEADER_ORDER, decode_line, split_command
from callgate.agi.session import MAX_LINE_BYTES, release_transport

__all__ = [
    "ANSWER_SUBROUTINE",
    "AsteriskEmulator",
    "ChannelSpec",
    "DialOutcome",
    "DialRecord",
    "DialStatus",
    "Emit",
    "FakeAsterisk",
    "FakeCallResult",
    "LoadResult",
    "ReceivedCommand",
    "Responder",
    "build_header_block",
    "run_load",
]

#: The ``U()`` subroutine of DESIGN.md §5 that stamps ``SHARED(CALLGATE_ANSWER_MS)``.
ANSWER_SUBROUTINE: Final = "callgate-answered"
_ANSWER_STAMP: Final = "CALLGATE_ANSWER_MS"
_DEAD_511: Final = b"511 Command Not Permitted on a dead channel or intercept routine\n"
_HANGUP_LINE: Final = b"HANGUP\n"

# Verbs, longest first so "GET FULL VARIABLE" wins over "GET".
_VERBS: Final[tuple[tuple[str, ...], ...]] = tuple(
    sorted(
        (
            tuple(v.split())
            for v in (
                "ANSWER",
                "ASYNCAGI BREAK",
                "CHANNEL STATUS",
                "CONTROL STREAM FILE",
                "DATABASE DEL",
                "DATABASE DELTREE",
                "DATABASE GET",
                "DATABASE PUT",
                "EXEC",
                "GET DATA",
                "GET FULL VARIABLE",
                "GET OPTION",
                "GET VARIABLE",
                "HANGUP",
                "NOOP",
                "RECORD FILE",
                "SAY ALPHA",
                "SAY DATE",
                "SAY DATETIME",
                "SAY DIGITS",
                "SAY NUMBER",
                "SAY PHONETIC",
                "SAY TIME",
                "SET AUTOHANGUP",
                "SET CALLERID",
                "SET CONTEXT",
                "SET EXTENSION",
                "SET MUSIC",
                "SET PRIORITY",
                "SET VARIABLE",
                "STREAM FILE",
                "VERBOSE",
                "WAIT FOR DIGIT",
            )
        ),
        key=len,
        reverse=True,
    )
)
#: Commands res_agi still runs on a dead channel (its ``dead`` flag); the rest get 511.
_DEAD_OK: Final = frozenset(
    {
        "ASYNCAGI BREAK",
        "DATABASE DEL",
        "DATABASE DELTREE",
        "DATABASE GET",
        "DATABASE PUT",
        "EXEC",
        "GET FULL VARIABLE",
        "GET VARIABLE",
        "NOOP",
        "SET VARIABLE",
        "VERBOSE",
    }
)
_KNOWN_APPS: Final = frozenset(
    {
        "answer",
        "busy",
        "congestion",
        "dial",
        "gosub",
        "hangup",
        "log",
        "mset",
        "noop",
        "playback",
        "progress",
        "ringing",
        "set",
        "userevent",
        "verbose",
        "wait",
    }
)


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


# --------------------------------------------------------------------------- header


@dataclass(frozen=True, slots=True)
class ChannelSpec:
    """What the fake Asterisk puts in the header block of one call.

    ``script`` is the URL path after ``host:port/``, query included (``card?mode=test``).
    ``dnid``/``rdnis`` default to the word Asterisk sends when unset: ``unknown``.
    """

    script: str = "call"
    uniqueid: str = "1700000000.1"
    channel: str = "PJSIP/customer-00000001"
    extension: str = "999002"
    callerid: str = "5551001"
    calleridname: str = "Alice"
    accountcode: str = "acct-1001"
    context: str = "from-customer"
    language: str = "en"
    type: str = "PJSIP"
    priority: str = "1"
    dnid: str = "unknown"
    rdnis: str = "unknown"
    callingpres: str = "0"
    callingani2: str = "0"
    callington: str = "0"
    callingtns: str = "0"
    version: str = "22.10.1"
    enhanced: str = "0.0"
    threadid: str = "139687137937088"
    args: tuple[str, ...] = ()


def build_header_block(spec: ChannelSpec, *, host: str = "127.0.0.1", port: int = 4573) -> bytes:
    """The header block exactly as Asterisk 22 sends it (order, ``agi_arg_N: `` for empty)."""
    values = {
        "network": "yes",
        "network_script": spec.script,
        "request": f"agi://{host}:{port}/{spec.script}",
        "channel": spec.channel,
        "language": spec.language,
        "type": spec.type,
        "uniqueid": spec.uniqueid,
        "version": spec.version,
        "callerid": spec.callerid,
        "calleridname": spec.calleridname,
        "callingpres": spec.callingpres,
        "callingani2": spec.callingani2,
        "callington": spec.callington,
        "callingtns": spec.callingtns,
        "dnid": spec.dnid,
        "rdnis": spec.rdnis,
        "context": spec.context,
        "extension": spec.extension,
        "priority": spec.priority,
        "enhanced": spec.enhanced,
        "accountcode": spec.accountcode,
        "threadid": spec.threadid,
    }
    lines = [f"agi_{name}: {values[name]}\n" for name in HEADER_ORDER]
    lines += [f"agi_arg_{n}: {arg}\n" for n, arg in enumerate(spec.args, start=1)]
    text = "".join(lines)
    if text.count("\n") != len(lines) or "\r" in text or "\x00" in text:
        raise ValueError("header values must not hold CR, LF or NUL")
    return (text + "\n").encode("utf-8")


# --------------------------------------------------------------------------- commands


@dataclass(frozen=True, slots=True)
class ReceivedCommand:
    """One command line the server sent. ``at_ms``: milliseconds since the header was sent."""

    line: str
    argv: tuple[str, ...]
    verb: str
    args: tuple[str, ...]
    at_ms: float

    @classmethod
    def parse(cls, line: str, at_ms: float = 0.0) -> ReceivedCommand:
        argv = split_command(line)
        upper = tuple(word.upper() for word in argv)
        for verb in _VERBS:
            if upper[: len(verb)] == verb:
                return cls(line, argv, " ".join(verb), argv[len(verb) :], at_ms)
        return cls(line, argv, " ".join(upper[:1]), argv[1:], at_ms)

    @property
    def is_dial(self) -> bool:
        return self.verb == "EXEC" and bool(self.args) and self.args[0].lower() == "dial"


@dataclass(frozen=True, slots=True)
class Emit:
    """Bytes to write, after waiting ``delay_ms`` (real time)."""

    data: bytes
    delay_ms: float = 0.0


class Responder(Protocol):
    """Maps one received command to the chunks Asterisk would write back."""

    def __call__(self, command: ReceivedCommand) -> Sequence[Emit]: ...


# --------------------------------------------------------------------------- the emulator


class DialStatus(enum.StrEnum):
    ANSWER = "ANSWER"
    BUSY = "BUSY"
    NOANSWER = "NOANSWER"
    CONGESTION = "CONGESTION"
    CHANUNAVAIL = "CHANUNAVAIL"
    CANCEL = "CANCEL"


@dataclass(frozen=True, slots=True)
class DialOutcome:
    """How one ``EXEC Dial`` attempt goes.

    ``ring_ms``: from Dial to answer (or to BUSY/NOANSWER/...). ``talk_ms``: how long the callee
    talks before hanging up (ANSWER only; cut by ``L()``). ``caller_hangup_ms``: the caller hangs
    up this long after Dial started (during ringing: CANCEL; during talk: the call ends there);
    Dial then returns -1 and ``HANGUP`` follows. ``hangupcause`` is HANGUPCAUSE after that.
    ``first_ring_ms`` (optional): when the callee started ringing, for ``RINGTIME_MS``.
    """

    status: DialStatus = DialStatus.ANSWER
    ring_ms: int = 0
    talk_ms: int = 60_000
    caller_hangup_ms: int | None = None
    hangupcause: int = 16
    first_ring_ms: int | None = None  # sets RINGTIME(_MS) when the callee rang (<= ring_ms)

    @classmethod
    def answered(cls, talk_ms: int, *, ring_ms: int = 0) -> DialOutcome:
        return cls(DialStatus.ANSWER, ring_ms=ring_ms, talk_ms=talk_ms)

    @classmethod
    def failed(cls, status: DialStatus, *, ring_ms: int = 0) -> DialOutcome:
        return cls(status, ring_ms=ring_ms, talk_ms=0)

    @classmethod
    def caller_hangs_up(
        cls, after_ms: int, *, ring_ms: int = 0, talk_ms: int = 3_600_000
    ) -> DialOutcome:
        return cls(DialStatus.ANSWER, ring_ms=ring_ms, talk_ms=talk_ms, caller_hangup_ms=after_ms)


@dataclass(frozen=True, slots=True)
class DialRecord:
    """What one emulated Dial did. Times are the emulator's epoch milliseconds."""

    args: str
    destination: str
    options: str
    limit_ms: int | None
    status: DialStatus
    result: int
    started_ms: int
    answered_ms: int | None
    ended_ms: int
    talk_ms: int
    ended_by: str  # "callee", "limit", "caller", "failed", "cancel"
    stamped: bool  # SHARED(CALLGATE_ANSWER_MS) was set by the U() subroutine


def _parse_dial_options(options: str) -> dict[str, str]:
    """``U(sub^arg)L(5000:2000)g`` -> {"U": "sub^arg", "L": "5000:2000", "g": ""}."""
    parsed: dict[str, str] = {}
    index = 0
    while index < len(options):
        letter = options[index]
        index += 1
        value = ""
        if index < len(options) and options[index] == "(":
            depth = 0
            start = index + 1
            while index < len(options):
                if options[index] == "(":
                    depth += 1
                elif options[index] == ")":
                    depth -= 1
                    if depth == 0:
                        break
                index += 1
            value = options[start:index]
            index += 1
        parsed[letter] = value
    return parsed


def split_app_args(text: str) -> list[str]:
    """An application's arguments split the way Asterisk's ``ast_app_separate_args`` does: on
    commas outside parentheses and double quotes; the quotes dropped, a backslash keeps the next
    character as it is; a trailing comma ends in one more, empty, argument. (Asterisk also keeps
    commas inside square brackets together; callgate never sends brackets.)"""
    out: list[str] = []
    current: list[str] = []
    depth, quoted, escaped = 0, False, False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "," and depth == 0 and not quoted:
            out.append("".join(current))
            current = []
        else:
            if not quoted:
                depth += {"(": 1, ")": -1}.get(char, 0)
            current.append(char)
    out.append("".join(current))
    return out


_EXPR = re.compile(r"\$\{([^{}]*)\}")


class AsteriskEmulator:
    """A stateful `Responder` that answers like Asterisk 22 on one channel.

    Scripted inputs: ``variables`` (preset channel variables), ``dial_outcomes`` (one per Dial
    attempt; the last one repeats), ``digits`` (one entry per GET DATA; ``""`` = timeout),
    ``missing_files`` (STREAM FILE/GET DATA fail), ``hangup_during`` (verbs during which the
    caller hangs up: ``200 result=-1`` then ``HANGUP``), ``missing_apps`` (applications this
    Asterisk lacks: EXEC answers ``-2``). Recorded: `dials`, `violations`
    (protocol misuse the flow should never do, e.g. ``L(0)`` or ``${...}`` in EXEC).
    """

    def __init__(
        self,
        spec: ChannelSpec | None = None,
        *,
        variables: Mapping[str, str] | None = None,
        dial_outcomes: Iterable[DialOutcome] = (DialOutcome(),),
        digits: Iterable[str] = (),
        missing_files: Iterable[str] = (),
        hangup_during: Iterable[str] = (),
        real_time: bool = False,
        hangup_delay_ms: float = 40.0,
        usage_delay_ms: float = 0.0,
        answer_delay_ms: float = 0.0,
        clock_ms: Callable[[], int] = _wall_ms,
        missing_apps: Iterable[str] = (),
    ) -> None:
        self.spec = spec or ChannelSpec()
        self.missing_apps = frozenset(app.lower() for app in missing_apps)
        self.variables: dict[str, str] = dict(variables or {})
        self.shared: dict[str, str] = {}
        self.database: dict[tuple[str, str], str] = {}
        self._outcomes = deque(dial_outcomes)
        if not self._outcomes:
            raise ValueError("dial_outcomes must hold at least one outcome")
        self._digits = deque(digits)
        self.missing_files = frozenset(missing_files)
        self.hangup_during = frozenset(v.upper() for v in hangup_during)
        self.real_time = real_time
        self.hangup_delay_ms = hangup_delay_ms
        self.usage_delay_ms = usage_delay_ms
        self.answer_delay_ms = answer_delay_ms
        self._clock_ms = clock_ms
        self.offset_ms = 0
        self.created_ms = self.now_ms()
        self.answered_ms: int | None = None
        self.hung_up = False
        self.hangupcause = 0
        self.dials: list[DialRecord] = []
        self.violations: list[str] = []

    # ------------------------------------------------------------------ clock

    def now_ms(self) -> int:
        """The emulated Asterisk clock: wall clock plus the simulated time that passed."""
        return self._clock_ms() + self.offset_ms

    def _pass_time(self, ms: int) -> float:
        """Let ``ms`` pass: returns the real delay to apply (0 when simulated)."""
        if self.real_time:
            return float(ms)
        self.offset_ms += ms
        return 0.0

    # ------------------------------------------------------------------ responder

    def __call__(self, command: ReceivedCommand) -> Sequence[Emit]:
        verb = command.verb
        if self.hung_up and verb not in _DEAD_OK:
            return [Emit(_DEAD_511)]
        if verb in self.hangup_during and not self.hung_up:
            return self._caller_hangs_up(b"200 result=-1\n")
        handler = getattr(self, "_cmd_" + verb.replace(" ", "_").lower(), None)
        if handler is None:
            return [Emit(b"510 Invalid or unknown command\n")]
        emits: Sequence[Emit] = handler(command.args)
        return emits

    def _caller_hangs_up(self, reply: bytes, delay_ms: float = 0.0) -> list[Emit]:
        self.hung_up = True
        if self.hangupcause == 0:
            self.hangupcause = 16
        return [Emit(reply, delay_ms), Emit(_HANGUP_LINE, self.hangup_delay_ms)]

    def _usage(self, text: str) -> list[Emit]:
        return [
            Emit(b"520-Invalid command syntax.  Proper usage follows:\n"),
            Emit(
                (text + "\n520 End of proper usage.\n").encode("utf-8"),
                self.usage_delay_ms,
            ),
        ]

    @staticmethod
    def _ok(result: int | str, data: str | None = None) -> list[Emit]:
        tail = f" ({data})" if data is not None else ""
        return [Emit(f"200 result={result}{tail}\n".encode())]

    # ------------------------------------------------------------------ values

    def _read(self, name: str) -> str | None:
        """A variable or a dialplan function, as GET VARIABLE sees it (None: unset)."""
        if name.startswith("SHARED(") and name.endswith(")"):
            return self.shared.get(name[7:-1].split(",", 1)[0], "")
        functions = {
            "CALLERID(num)": self.spec.callerid,
            "CALLERID(name)": self.spec.calleridname,
            "CALLERID(all)": f'"{self.spec.calleridname}" <{self.spec.callerid}>',
            "CHANNEL(accountcode)": self.spec.accountcode,
            "CHANNEL(language)": self.spec.language,
            "CHANNEL": self.spec.channel,
            "UNIQUEID": self.spec.uniqueid,
            "EXTEN": self.spec.extension,
            "CONTEXT": self.spec.context,
            "EPOCH": str(self.now_ms() // 1000),
            "HANGUPCAUSE": str(self.hangupcause),
        }
        if name in functions:
            return functions[name]
        if name.startswith("STRFTIME(") and name.endswith(")"):
            fmt = name[9:-1].split(",", 2)[-1]
            now = self.now_ms()
            return {"%s%3q": str(now), "%s": str(now // 1000)}.get(fmt, "")
        return self.variables.get(name)

    def _expand(self, expr: str) -> str:
        previous = None
        while previous != expr:
            previous = expr
            expr = _EXPR.sub(lambda m: self._read(m.group(1)) or "", expr)
        return expr

    def _write(self, name: str, value: str) -> None:
        if name.startswith("SHARED(") and name.endswith(")"):
            self.shared[name[7:-1].split(",", 1)[0]] = value
        else:
            self.variables[name] = value

    # ------------------------------------------------------------------ commands

    def _cmd_answer(self, args: tuple[str, ...]) -> list[Emit]:
        if self.answered_ms is None:
            self.answered_ms = self.now_ms()
        return [Emit(b"200 result=0\n", self.answer_delay_ms)]

    def _cmd_channel_status(self, args: tuple[str, ...]) -> list[Emit]:
        return self._ok(6 if self.answered_ms is not None else 4)

    def _cmd_get_variable(self, args: tuple[str, ...]) -> list[Emit]:
        if len(args) != 1:
            return self._usage("Usage: GET VARIABLE <variablename>")
        value = self._read(args[0])
        return self._ok(0) if value is None else self._ok(1, value)

    def _cmd_get_full_variable(self, args: tuple[str, ...]) -> list[Emit]:
        if not 1 <= len(args) <= 2:
            return self._usage("Usage: GET FULL VARIABLE <expression> [<channel name>]")
        return self._ok(1, self._expand(args[0]))

    def _cmd_set_variable(self, args: tuple[str, ...]) -> list[Emit]:
        if len(args) != 2:
            return self._usage("Usage: SET VARIABLE <variablename> <value>")
        self._write(args[0], args[1])
        return self._ok(1)

    def _cmd_verbose(self, args: tuple[str, ...]) -> list[Emit]:
        if not 1 <= len(args) <= 2:
            return self._usage("Usage: VERBOSE <message> <level>")
        return self._ok(1)

    def _cmd_noop(self, args: tuple[str, ...]) -> list[Emit]:
        return self._ok(0)

    def _cmd_hangup(self, args: tuple[str, ...]) -> list[Emit]:
        return self._caller_hangs_up(b"200 result=1\n")

    def _cmd_wait_for_digit(self, args: tuple[str, ...]) -> list[Emit]:
        return self._ok(0)

    def _cmd_say_number(self, args: tuple[str, ...]) -> list[Emit]:
        if len(args) < 2:
            return self._usage("Usage: SAY NUMBER <number> <escape digits> [gender]")
        return self._ok(0)

    def _cmd_say_digits(self, args: tuple[str, ...]) -> list[Emit]:
        if len(args) != 2:
            return self._usage("Usage: SAY DIGITS <number> <escape digits>")
        return self._ok(0)

    def _cmd_stream_file(self, args: tuple[str, ...]) -> list[Emit]:
        if not 2 <= len(args) <= 3:
            return self._usage("Usage: STREAM FILE <filename> <escape_digits> [<sample offset>]")
        if args[0] in self.missing_files:
            return [Emit(b"200 result=-1 endpos=0\n")]
        return [Emit(b"200 result=0 endpos=4000\n")]

    def _cmd_get_data(self, args: tuple[str, ...]) -> list[Emit]:
        if not 1 <= len(args) <= 3:
            return self._usage("Usage: GET DATA <file to be streamed> [timeout] [maxdigits]")
        if args[0] in self.missing_files:
            return self._ok(-1)
        digits = self._digits.popleft() if self._digits else ""
        if digits == "":
            return [Emit(b"200 result= (timeout)\n")]
        return self._ok(digits)

    def _cmd_database_put(self, args: tuple[str, ...]) -> list[Emit]:
        if len(args) != 3:
            return self._usage("Usage: DATABASE PUT <family> <key> <value>")
        self.database[(args[0], args[1])] = args[2]
        return self._ok(1)

    def _cmd_database_get(self, args: tuple[str, ...]) -> list[Emit]:
        if len(args) != 2:
            return self._usage("Usage: DATABASE GET <family> <key>")
        value = self.database.get((args[0], args[1]))
        return self._ok(0) if value is None else self._ok(1, value)

    def _cmd_exec(self, args: tuple[str, ...]) -> list[Emit]:
        if not args:
            return self._usage("Usage: EXEC <application> <options>")
        app = args[0]
        app_args = args[1] if len(args) > 1 else ""
        if len(args) > 2:
            self.violations.append(f"EXEC {app} with {len(args) - 1} arguments: only one is used")
        if "${" in app_args:
            self.violations.append(f"EXEC {app} args hold ${{...}}, which EXEC does not expand")
        name = app.lower()
        if name not in _KNOWN_APPS or name in self.missing_apps:
            return self._ok(-2)
        if name == "dial":
            return self._dial(app_args)
        if name == "set":
            key, _, value = app_args.partition("=")
            self._write(key, value)
        elif name == "mset":
            for entry in split_app_args(app_args):
                key, eq, value = entry.partition("=")
                if not eq:
                    self.violations.append(f"MSet entry {entry!r} without '=': Asterisk ignores it")
                    continue
                self._write(key, value)
        elif name == "wait":
            seconds = float(app_args or "0")
            return [Emit(b"200 result=0\n", self._pass_time(int(seconds * 1000)))]
        elif name == "hangup":
            return self._caller_hangs_up(b"200 result=-1\n")
        elif name == "answer":
            return self._cmd_answer(())
        return self._ok(0)

    def _dial(self, app_args: str) -> list[Emit]:
        outcome = self._outcomes[0] if len(self._outcomes) == 1 else self._outcomes.popleft()
        fields = app_args.split(",")
        destination = fields[0]
        options = fields[2] if len(fields) > 2 else ""
        parsed = _parse_dial_options(options)
        limit_ms: int | None = None
        if "L" in parsed:
            try:
                limit_ms = int(parsed["L"].split(":", 1)[0])
            except ValueError:
                self.violations.append(f"Dial L() not an integer: {parsed['L']!r}")
            if limit_ms == 0:
                self.violations.append("Dial with L(0): no limit at all")
                limit_ms = None
        stamp_target: str | None = None
        if "U" in parsed:
            subroutine, _, sub_args = parsed["U"].partition("^")
            if subroutine != ANSWER_SUBROUTINE:
                self.violations.append(f"Dial U() runs unknown subroutine {subroutine!r}")
            else:
                stamp_target = sub_args.split("^", 1)[0]
                if stamp_target != self.spec.uniqueid:
                    self.violations.append(
                        f"Dial U({ANSWER_SUBROUTINE}^{stamp_target}): not this channel's "
                        f"uniqueid {self.spec.uniqueid!r}"
                    )

        started = self.now_ms()
        answered: int | None = None
        caller_gone = False
        stamped = False
        if outcome.caller_hangup_ms is not None and (
            outcome.caller_hangup_ms < outcome.ring_ms
            or (
                outcome.status is not DialStatus.ANSWER
                and outcome.caller_hangup_ms <= outcome.ring_ms
            )
        ):
            status, result, elapsed, talk, ended_by = (
                DialStatus.CANCEL,
                -1,
                outcome.caller_hangup_ms,
                0,
                "cancel",
            )
            caller_gone = True
        elif outcome.status is not DialStatus.ANSWER:
            status, result, elapsed, talk, ended_by = (
                outcome.status,
                0,
                outcome.ring_ms,
                0,
                "failed",
            )
        else:
            answered = started + outcome.ring_ms
            talk, ended_by = outcome.talk_ms, "callee"
            if limit_ms is not None and limit_ms <= talk:
                talk, ended_by = limit_ms, "limit"
            if (
                outcome.caller_hangup_ms is not None
                and outcome.caller_hangup_ms - outcome.ring_ms < talk
            ):
                talk, ended_by = outcome.caller_hangup_ms - outcome.ring_ms, "caller"
                caller_gone = True
            status, result, elapsed = DialStatus.ANSWER, -1, outcome.ring_ms + talk
            if stamp_target == self.spec.uniqueid:
                self.shared[_ANSWER_STAMP] = str(answered)
                stamped = True
            if self.answered_ms is None:
                self.answered_ms = answered  # Dial answers the caller at bridge time
        ended = started + elapsed

        self.variables["DIALSTATUS"] = status.value
        first_ring = outcome.first_ring_ms
        if first_ring is not None and first_ring <= elapsed:
            self.variables["RINGTIME_MS"] = str(first_ring)
            self.variables["RINGTIME"] = str(first_ring // 1000)
        self.variables["DIALEDTIME_MS"] = str(ended - self.created_ms)
        self.variables["DIALEDTIME"] = str((ended - self.created_ms) // 1000)
        if answered is not None and self.answered_ms is not None:
            answered_time = ended - self.answered_ms
            self.variables["ANSWEREDTIME_MS"] = str(answered_time)
            self.variables["ANSWEREDTIME"] = str(answered_time // 1000)
        else:
            self.variables["ANSWEREDTIME_MS"] = ""
            self.variables["ANSWEREDTIME"] = ""
        self.dials.append(
            DialRecord(
                args=app_args,
                destination=destination,
                options=options,
                limit_ms=limit_ms,
                status=status,
                result=result,
                started_ms=started,
                answered_ms=answered,
                ended_ms=ended,
                talk_ms=talk,
                ended_by=ended_by,
                stamped=stamped,
            )
        )
        delay = self._pass_time(elapsed)
        reply = f"200 result={result}\n".encode()
        if caller_gone:
            self.hangupcause = outcome.hangupcause
            return self._caller_hangs_up(reply, delay)
        return [Emit(reply, delay)]


# --------------------------------------------------------------------------- the client


@dataclass(frozen=True, slots=True)
class FakeCallResult:
    """What happened on one fake call.

    ``server_closed``: the server closed the socket (what it must always do). ``lingered``: it
    stopped sending commands but kept the socket open past the linger timeout (the client then
    closed it): on a real Asterisk the channel would stay up. ``setup_ms``: header sent -> first
    ``EXEC Dial`` received (None when it never dialled).
    """

    spec: ChannelSpec
    commands: tuple[ReceivedCommand, ...]
    server_closed: bool
    lingered: bool
    error: str | None
    setup_ms: float | None
    duration_ms: float

    @property
    def ok(self) -> bool:
        return self.server_closed and self.error is None

    @property
    def lines(self) -> tuple[str, ...]:
        return tuple(command.line for command in self.commands)


class FakeAsterisk:
    """Connects to a FastAGI server as Asterisk would, one call per `call`."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        linger_timeout_ms: int = 5_000,
        connect_timeout_ms: int = 5_000,
        write_timeout_ms: int = 5_000,
        source_address: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.source_address = source_address  # connect from this address (a second Asterisk)
        self.linger_timeout_ms = linger_timeout_ms
        self.connect_timeout_ms = connect_timeout_ms
        self.write_timeout_ms = write_timeout_ms

    async def call(
        self, spec: ChannelSpec | None = None, responder: Responder | None = None
    ) -> FakeCallResult:
        """Run one call to the end (the server closes, lingers, or the connection fails)."""
        spec = spec or ChannelSpec()
        responder = responder if responder is not None else AsteriskEmulator(spec)
        commands: list[ReceivedCommand] = []
        started = time.monotonic()
        setup_ms: float | None = None
        server_closed = lingered = False
        error: str | None = None
        try:
            async with asyncio.timeout(self.connect_timeout_ms / 1000):
                reader, writer = await asyncio.open_connection(
                    self.host,
                    self.port,
                    limit=MAX_LINE_BYTES,
                    local_addr=None if self.source_address is None else (self.source_address, 0),
                )
        except (OSError, TimeoutError) as exc:
            return FakeCallResult(
                spec, (), False, False, f"connect: {exc!r}", None, _since_ms(started)
            )
        try:
            header = build_header_block(spec, host=self.host, port=self.port)
            sent = time.monotonic()
            await self._write(writer, header)
            while True:
                try:
                    async with asyncio.timeout(self.linger_timeout_ms / 1000):
                        raw = await reader.readuntil(b"\n")
                except TimeoutError:
                    lingered = True
                    break
                except asyncio.IncompleteReadError as exc:
                    server_closed = True
                    if exc.partial:
                        error = f"server closed mid-command: {exc.partial[:80]!r}"
                    break
                command = ReceivedCommand.parse(decode_line(raw), _since_ms(sent))
                commands.append(command)
                if setup_ms is None and command.is_dial:
                    setup_ms = command.at_ms
                for emit in responder(command):
                    if emit.delay_ms > 0:
                        await asyncio.sleep(emit.delay_ms / 1000)
                    await self._write(writer, emit.data)
        except (ConnectionError, asyncio.LimitOverrunError) as exc:
            # The server went away while we wrote (e.g. it closed during a long EXEC Dial).
            server_closed = isinstance(exc, ConnectionError)
            error = None if server_closed else f"{exc!r}"
        except TimeoutError:
            error = "write timed out"
        finally:
            writer.close()
            try:
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()
            except (OSError, TimeoutError):
                pass
            else:
                release_transport(writer)
        return FakeCallResult(
            spec, tuple(commands), server_closed, lingered, error, setup_ms, _since_ms(started)
        )

    async def _write(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        async with asyncio.timeout(self.write_timeout_ms / 1000):
            await writer.drain()


def _since_ms(start: float) -> float:
    return (time.monotonic() - start) * 1000


# --------------------------------------------------------------------------- load


@dataclass(frozen=True, slots=True)
class LoadResult:
    """Outcome of `run_load`. Latencies in milliseconds, one per call that has one."""

    calls: int
    completed: int
    lingered: int
    failed: int
    wall_ms: float
    setup_ms: tuple[float, ...]
    session_ms: tuple[float, ...]
    errors: Mapping[str, int] = field(default_factory=dict)

    @property
    def sessions_per_second(self) -> float:
        return self.completed / (self.wall_ms / 1000) if self.wall_ms > 0 else 0.0

    @staticmethod
    def percentile(values: Sequence[float], pct: float) -> float:
        """Nearest-rank percentile (0 for no values)."""
        if not values:
            return 0.0
        ordered = sorted(values)
        rank = max(1, min(len(ordered), math.ceil(pct / 100 * len(ordered))))
        return ordered[rank - 1]

    def summary(self) -> str:
        p = self.percentile
        return (
            f"{self.completed}/{self.calls} sessions in {self.wall_ms / 1000:.2f} s = "
            f"{self.sessions_per_second:.0f} sessions/s; setup p50 {p(self.setup_ms, 50):.2f} ms "
            f"p99 {p(self.setup_ms, 99):.2f} ms; session p50 {p(self.session_ms, 50):.2f} ms "
            f"p99 {p(self.session_ms, 99):.2f} ms; lingered {self.lingered}, failed {self.failed}"
        )


def _default_spec(index: int, script: str) -> ChannelSpec:
    return ChannelSpec(
        script=script,
        uniqueid=f"1700000000.{index}",
        channel=f"PJSIP/customer-{index:08x}",
    )


async def run_load(
    host: str,
    port: int,
    *,
    calls: int,
    concurrency: int,
    script: str = "call",
    responder_factory: Callable[[ChannelSpec], Responder] | None = None,
    spec_factory: Callable[[int, str], ChannelSpec] = _default_spec,
    linger_timeout_ms: int = 5_000,
    connect_timeout_ms: int = 5_000,
) -> LoadResult:
    """Place ``calls`` fake calls, at most ``concurrency`` at once, and measure them.

    ``setup_ms`` per call: header sent -> first ``EXEC Dial`` seen; ``session_ms``: connect ->
    the server's close. The default responder is an `AsteriskEmulator` with simulated time.
    """
    if calls < 0 or concurrency < 1:
        raise ValueError("calls must be >= 0 and concurrency >= 1")
    client = FakeAsterisk(
        host, port, linger_timeout_ms=linger_timeout_ms, connect_timeout_ms=connect_timeout_ms
    )
    factory = responder_factory or (lambda spec: AsteriskEmulator(spec))
    counter = itertools.count()
    results: list[FakeCallResult] = []

    async def worker() -> None:
        while (index := next(counter)) < calls:
            spec = spec_factory(index, script)
            results.append(await client.call(spec, factory(spec)))

    started = time.monotonic()
    async with asyncio.TaskGroup() as group:
        for _ in range(min(concurrency, max(calls, 1))):
            group.create_task(worker())
    wall_ms = _since_ms(started)
    errors: Counter[str] = Counter()
    for result in results:
        if result.error is not None:
            errors[result.error.split(":", 1)[0]] += 1
        if result.lingered:
            errors["lingered"] += 1
    return LoadResult(
        calls=calls,
        completed=sum(1 for r in results if r.ok),
        lingered=sum(1 for r in results if r.lingered),
        failed=sum(1 for r in results if not r.ok and not r.lingered),
        wall_ms=wall_ms,
        setup_ms=tuple(r.setup_ms for r in results if r.setup_ms is not None),
        session_ms=tuple(r.duration_ms for r in results if r.ok),
        errors=dict(errors),
    )
