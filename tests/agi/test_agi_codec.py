"""The pure FastAGI codec: header block, command quoting, replies and the line state machine."""

from __future__ import annotations

from pathlib import Path

import pytest

from callgate.agi.client import ChannelSpec, build_header_block
from callgate.agi.codec import (
    HANGUP,
    HEADER_ORDER,
    AgiReply,
    ReplyReader,
    encode_command,
    parse_header_block,
    parse_reply_line,
    split_command,
)
from callgate.agi.errors import AgiProtocolError

TRANSCRIPTS = Path(__file__).resolve().parents[1] / "data" / "transcripts"


def _header_of(name: str) -> bytes:
    raw = (TRANSCRIPTS / f"agi-{name}.raw").read_bytes()
    end = raw.index(b"\n\n") + 2
    return raw[:end]


# --------------------------------------------------------------------------- header


def test_header_of_the_full_transcript() -> None:
    env = parse_header_block(_header_of("full"))
    assert env.network_script == "call"
    assert env.script == "call"
    assert dict(env.query) == {}
    assert env.request == "agi://127.0.0.1:4574/call"
    assert env.channel == "Local/999002@from-customer-00000051;2"
    assert env.language == "en"
    assert env.type == "Local"
    assert env.uniqueid == "t1174-full-2"
    assert env.version == "22.10.1"
    assert env.callerid == "5551001"
    assert env.calleridname == "Alice"
    assert (env.callingpres, env.callingani2, env.callington, env.callingtns) == ("0",) * 4
    assert env.dnid == "" and env.raw["dnid"] == "unknown"
    assert env.rdnis == "" and env.raw["rdnis"] == "unknown"
    assert env.context == "from-customer"
    assert env.extension == "999002"
    assert env.priority == "2"
    assert env.enhanced == "0.0"
    assert env.accountcode == "acct-1001"
    assert env.threadid == "139687137937088"
    assert env.args == ("999002",)


def test_header_args_and_query_string() -> None:
    env = parse_header_block(_header_of("args"))
    assert env.network_script == "some/script.agi?card=1001&mode=test"
    assert env.script == "some/script.agi"
    assert dict(env.query) == {"card": "1001", "mode": "test"}
    assert env.args == ("12345", "second arg", "quoted, with comma", "x=y&z|w", "", "last")


def test_header_without_final_empty_line_and_without_network_script() -> None:
    env = parse_header_block(b"agi_request: agi://h:4573/card/x?pin=1\nagi_uniqueid: 1.2\n")
    assert env.script == "card/x"
    assert dict(env.query) == {"pin": "1"}
    assert env.uniqueid == "1.2"
    assert env.args == ()
    assert env.callerid == ""


def test_header_unknown_caller_becomes_empty() -> None:
    block = b"agi_network_script: call\nagi_callerid: unknown\nagi_calleridname: unknown\n\n"
    env = parse_header_block(block)
    assert (env.callerid, env.calleridname) == ("", "")
    assert env.raw["callerid"] == "unknown"


def test_header_leading_slash_is_not_part_of_the_script() -> None:
    assert parse_header_block(b"agi_network_script: /call?x=1\n\n").script == "call"


def test_header_lines_ending_in_crlf_with_bytes_that_are_not_utf8() -> None:
    block = (
        b"agi_network_script: call\r\nagi_calleridname: Jos\xe9 \xe2\x82\r\nagi_arg_1: \xff\r\n\r\n"
    )
    env = parse_header_block(block)
    # each line decoded on its own, the bad bytes replaced; the CR is not part of the value
    assert (env.script, env.calleridname, env.args) == ("call", "Jos\ufffd \ufffd", ("\ufffd",))
    assert env.query == {}
    with pytest.raises(AgiProtocolError, match="after the end"):  # NBSP is not a blank here
        parse_header_block(b"agi_network_script: call\n\n\xc2\xa0\n")


@pytest.mark.parametrize(
    ("block", "message"),
    [
        (b"", "empty header"),
        (b"\n", "empty header"),
        (b"agi_network: yes\nhello\n\n", "not an agi_ variable"),
        (b"agi_network yes\n\n", "malformed"),
        (b"agi_net work: yes\n\n", "malformed"),
        (b"agi_uniqueid: 1\nagi_uniqueid: 2\n\n", "duplicate agi_uniqueid"),
        (b"agi_arg_1: a\nagi_arg_3: c\n\n", "not numbered"),
        (b"agi_network: yes\n\n200 result=0\n", "after the end"),
    ],
)
def test_header_errors(block: bytes, message: str) -> None:
    with pytest.raises(AgiProtocolError, match=message):
        parse_header_block(block)


def test_built_header_matches_asterisk_bytes() -> None:
    spec = ChannelSpec(
        script="some/script.agi?card=1001&mode=test",
        uniqueid="t1278-args-2",
        channel="Local/12345@agi-args-test-00000065;2",
        extension="12345",
        context="agi-args-test",
        type="Local",
        threadid="139687170705088",
        args=("12345", "second arg", "quoted, with comma", "x=y&z|w", "", "last"),
    )
    assert build_header_block(spec, host="127.0.0.1", port=4574) == _header_of("args")
    assert [line.split(b":")[0] for line in _header_of("full").splitlines()[:22]] == [
        f"agi_{name}".encode() for name in HEADER_ORDER
    ]


# --------------------------------------------------------------------------- commands


@pytest.mark.parametrize(
    ("parts", "wire"),
    [
        (("ANSWER",), b"ANSWER\n"),
        (("GET VARIABLE", "DIALSTATUS"), b"GET VARIABLE DIALSTATUS\n"),
        (
            ("SET VARIABLE", "MYVAR", "value with spaces"),
            b'SET VARIABLE MYVAR "value with spaces"\n',
        ),
        (
            ("SET VARIABLE", "SHARED(CALLGATE_ANSWER_MS)", ""),
            b'SET VARIABLE SHARED(CALLGATE_ANSWER_MS) ""\n',
        ),
        (("STREAM FILE", "no-such-file", ""), b'STREAM FILE no-such-file ""\n'),
        (("VERBOSE", "harness transcript", 1), b'VERBOSE "harness transcript" 1\n'),
        (("GET DATA", "custom/beep", 1500, 4), b"GET DATA custom/beep 1500 4\n"),
        (
            ("EXEC", "Dial", "Local/999030@carrier,30,L(5000:2000)"),
            b"EXEC Dial Local/999030@carrier,30,L(5000:2000)\n",
        ),
        (
            ("GET FULL VARIABLE", "${STRFTIME(,,%s%3q)}"),
            b"GET FULL VARIABLE ${STRFTIME(,,%s%3q)}\n",
        ),
        (("VERBOSE", 'say "hi"'), b'VERBOSE "say \\"hi\\""\n'),
        (("VERBOSE", "back\\slash"), b'VERBOSE "back\\\\slash"\n'),
        (("VERBOSE", "tab\there"), b'VERBOSE "tab\there"\n'),
        (("VERBOSE", "caf\u00e9"), "VERBOSE caf\u00e9\n".encode()),
    ],
)
def test_encode_command(parts: tuple[str, ...], wire: bytes) -> None:
    command, *args = parts
    assert encode_command(command, *args) == wire
    # What Asterisk's parse_args() sees is exactly what we meant.
    expected = (*command.split(), *(str(a) for a in args))
    assert split_command(wire.decode()) == expected


@pytest.mark.parametrize("bad", ["a\nHANGUP", "x\r", "nul\x00"])
def test_encode_command_rejects_injection(bad: str) -> None:
    with pytest.raises(ValueError, match="CR, LF or NUL"):
        encode_command("SET VARIABLE", "X", bad)


@pytest.mark.parametrize("verb", ["", "GET\nVARIABLE", '"ANSWER"', "1NOOP"])
def test_encode_command_rejects_bad_verbs(verb: str) -> None:
    with pytest.raises(ValueError, match="verb"):
        encode_command(verb)


@pytest.mark.parametrize(
    ("line", "argv"),
    [
        ('STREAM FILE custom/beep "#"', ("STREAM", "FILE", "custom/beep", "#")),
        ('SAY DIGITS 123 ""', ("SAY", "DIGITS", "123", "")),
        ("  NOOP   a\tb  ", ("NOOP", "a", "b")),
        (r'VERBOSE a\ b "c\"d"', ("VERBOSE", "a b", 'c"d')),
        ('VERBOSE ab"c d"e', ("VERBOSE", "abc de")),
        ("", ()),
    ],
)
def test_split_command_like_asterisk(line: str, argv: tuple[str, ...]) -> None:
    assert split_command(line) == argv


# --------------------------------------------------------------------------- replies


def test_reply_plain_and_with_data() -> None:
    assert parse_reply_line("200 result=0") == AgiReply(
        code=200, result=0, result_text="0", lines=("200 result=0",)
    )
    reply = parse_reply_line("200 result=1 (value with spaces)")
    assert (reply.result, reply.data) == (1, "value with spaces")
    assert parse_reply_line("200 result=1 ()").data == ""
    assert parse_reply_line('200 result=1 ("Alice" <5551001>)').data == '"Alice" <5551001>'
    assert parse_reply_line("200 result=-2").result == -2
    assert parse_reply_line("200 result=0").data is None


def test_reply_data_keeps_inner_parentheses() -> None:
    reply = parse_reply_line("200 result=1 (value (with) parens)")
    assert reply.data == "value (with) parens"
    assert parse_reply_line("200 result=1 (a) b) c)").data == "a) b) c"
    assert parse_reply_line("200 result=1 (()").data == "("


def test_reply_empty_result_timeout() -> None:
    reply = parse_reply_line("200 result= (timeout)")
    assert reply.result is None
    assert reply.result_text == ""
    assert reply.data == "timeout"
    digits = parse_reply_line("200 result=0012 (timeout)")
    assert (digits.result, digits.result_text, digits.data) == (12, "0012", "timeout")


def test_reply_endpos() -> None:
    reply = parse_reply_line("200 result=0 endpos=4000")
    assert (reply.result, reply.endpos, reply.data) == (0, 4000, None)
    assert parse_reply_line("200 result=-1 endpos=0").endpos == 0
    recorded = parse_reply_line("200 result=0 (timeout) endpos=16000")
    assert (recorded.data, recorded.endpos) == ("timeout", 16000)
    speech = parse_reply_line("200 result=1 (speech) endpos=10 results=2")
    assert (speech.endpos, speech.extra) == (10, "results=2")


def test_reply_errors_one_line() -> None:
    unknown = parse_reply_line("510 Invalid or unknown command")
    assert (unknown.code, unknown.text, unknown.ok) == (510, "Invalid or unknown command", False)
    dead = parse_reply_line("511 Command Not Permitted on a dead channel or intercept routine")
    assert dead.code == 511
    usage = parse_reply_line("520 Invalid command syntax.  Proper usage not available.")
    assert (usage.code, usage.usage) == (520, "")
    other = parse_reply_line("503 result=-2 Memory allocation failure")
    assert (other.code, other.text) == (503, "result=-2 Memory allocation failure")


@pytest.mark.parametrize(
    "line",
    ["", "OK", "200", "200 ok", "200 result=1 (unterminated", "2000 result=1", "300 x", "20 x"],
)
def test_reply_malformed(line: str) -> None:
    with pytest.raises(AgiProtocolError):
        parse_reply_line(line)


# --------------------------------------------------------------------------- state machine


def _feed_all(reader: ReplyReader, lines: list[str]) -> list[object]:
    return [event for line in lines if (event := reader.feed(line)) is not None]


def test_reader_multiline_520_then_next_reply() -> None:
    reader = ReplyReader()
    events = _feed_all(
        reader,
        [
            "520-Invalid command syntax.  Proper usage follows:",
            "Returns <literal>0</literal> if <replaceable>variablename</replaceable> is not set.",
            "Example return code: 200 result=1 (testvariable)",
            "520 End of proper usage.",
            "200 result=1 (ANSWER)",
        ],
    )
    assert len(events) == 2
    first, second = events
    assert isinstance(first, AgiReply) and isinstance(second, AgiReply)
    assert first.code == 520
    assert first.text == "Invalid command syntax.  Proper usage follows:"
    assert first.usage.splitlines() == [
        "Returns <literal>0</literal> if <replaceable>variablename</replaceable> is not set.",
        "Example return code: 200 result=1 (testvariable)",
    ]
    assert len(first.lines) == 4
    assert (second.code, second.data) == (200, "ANSWER")
    assert not reader.in_reply


def test_reader_hangup_anywhere_and_twice() -> None:
    reader = ReplyReader()
    assert reader.feed("HANGUP") is HANGUP
    assert reader.feed("HANGUP") is HANGUP
    reply = reader.feed("200 result=-1")
    assert isinstance(reply, AgiReply) and reply.result == -1
    assert reader.feed("HANGUP") is HANGUP
    assert reader.feed("520-Invalid command syntax.  Proper usage follows:") is None
    assert reader.in_reply
    assert reader.feed("HANGUP") is HANGUP
    assert reader.feed("usage") is None
    done = reader.feed("520 End of proper usage.")
    assert isinstance(done, AgiReply) and done.usage == "usage"


def test_reader_100_trying_is_not_final() -> None:
    reader = ReplyReader()
    assert reader.feed("100 result=0 Trying...") is None
    assert reader.in_reply
    final = reader.feed("200 result=0 endpos=8000")
    assert isinstance(final, AgiReply)
    assert final.endpos == 8000
    assert final.lines == ("100 result=0 Trying...", "200 result=0 endpos=8000")


def test_reader_rejects_garbage_and_endless_usage() -> None:
    with pytest.raises(AgiProtocolError):
        ReplyReader().feed("hello")
    reader = ReplyReader()
    reader.feed("520-Invalid command syntax.  Proper usage follows:")
    with pytest.raises(AgiProtocolError, match="usage longer"):
        for _ in range(1000):
            reader.feed("more usage")
