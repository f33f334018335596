"""The pure AMI codec against the recorded Asterisk 22.10.1 session (ami-session.raw)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callgate.ami.codec import (
    AmiMessage,
    AmiMessageKind,
    AmiParser,
    encode_action,
    encode_message,
)
from callgate.ami.errors import AmiProtocolError
from callgate.ami.fakeserver import (
    Direction,
    RecordedFrame,
    load_session,
    recorded_messages,
    recorded_stream,
)

SESSION = Path(__file__).parents[1] / "data" / "transcripts" / "ami-session.raw"
FRAMES: list[RecordedFrame] = load_session(SESSION)
RECV = recorded_stream(FRAMES, Direction.RECV)
BANNER = b"Asterisk Call Manager/11.0.0\r\n"


def parse_all(data: bytes, sizes: list[int] | None = None) -> list[AmiMessage]:
    parser = AmiParser()
    out: list[AmiMessage] = []
    if sizes is None:
        out.extend(parser.feed(data))
    else:
        pos = 0
        for size in sizes:
            out.extend(parser.feed(data[pos : pos + size]))
            pos += size
        out.extend(parser.feed(data[pos:]))
    assert parser.pending_bytes == 0
    return out


ONE_SHOT = parse_all(RECV)


def random_sizes(seed: int, total: int, largest: int) -> list[int]:
    rng = random.Random(seed)
    sizes: list[int] = []
    covered = 0
    while covered < total:
        sizes.append(rng.randint(1, largest))
        covered += sizes[-1]
    return sizes


# -- the recorded session --------------------------------------------------------------------


def test_recorded_session_parses_one_message_per_recorded_read() -> None:
    recv_frames = [f for f in FRAMES if f.direction is Direction.RECV]
    assert recv_frames[0].data == BANNER
    # Asterisk wrote each message in its own read: one frame, one message.
    assert len(ONE_SHOT) == len(recv_frames) - 1 == 1125
    for frame, message in zip(recv_frames[1:], ONE_SHOT, strict=True):
        assert parse_all(BANNER + frame.data) == [message]
    sent_ids = [
        m.action_id
        for f in FRAMES
        if f.direction is Direction.SEND
        for m in AmiParser(expect_banner=False).feed(f.data)
    ]
    responses = [m.action_id for m in ONE_SHOT if m.kind is AmiMessageKind.RESPONSE]
    assert responses == sent_ids and len(sent_ids) == 36
    assert [m.name for m in ONE_SHOT].count("Cdr") == 41


def test_recorded_messages_helper_gives_the_exact_bytes() -> None:
    raw = recorded_messages(FRAMES)
    assert len(raw) == len(ONE_SHOT)
    assert b"".join(raw) == RECV[len(BANNER) :]
    assert [parse_all(BANNER + r) for r in raw[:50]] == [[m] for m in ONE_SHOT[:50]]


@pytest.mark.parametrize(("seed", "largest"), [(1, 7), (2, 64), (3, 1500), (4, 70000)])
def test_recorded_session_in_random_chunks_equals_one_shot(seed: int, largest: int) -> None:
    assert parse_all(RECV, random_sizes(seed, len(RECV), largest)) == ONE_SHOT


def test_recorded_session_byte_by_byte_prefix() -> None:
    prefix = BANNER + b"".join(recorded_messages(FRAMES)[:100])
    assert parse_all(prefix, [1] * len(prefix)) == ONE_SHOT[:100]


SAMPLE = (
    BANNER
    + b"".join(recorded_messages(FRAMES)[:12])
    + "Event: Newchannel\r\nCallerIDName: Jos\u00e9 \u00c7a\u011f\u0131\r\n\r\n".encode()
)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(SAMPLE)), max_size=40))
def test_any_cut_points_give_the_same_messages(cuts: list[int]) -> None:
    sample = SAMPLE
    expected = parse_all(sample)
    bounds = sorted({c for c in cuts if 0 < c < len(sample)})
    sizes = [b - a for a, b in zip([0, *bounds], bounds, strict=False)]
    assert parse_all(sample, sizes) == expected


def test_repeated_keys_are_kept_in_order() -> None:
    user_event = next(m for m in ONE_SHOT if m.name == "UserEvent")
    assert user_event.get_all("Exten") == ["999030", "999030"]
    endpoints = next(m for m in ONE_SHOT if m.action_id == "h26")
    lines = endpoints.output
    assert len(lines) == 22
    assert lines[0] == ""
    # CLI indentation survives: only the one space after the colon is Asterisk's.
    assert lines[2] == "    I/OAuth:  <AuthId/UserName" + "." * 59 + ">"
    assert endpoints.get("Output") == ""


def test_values_containing_colons() -> None:
    cdr = next(m for m in ONE_SHOT if m.name == "Cdr" and m.get("UniqueID") == "t1174-full-2")
    assert cdr.get("StartTime") == "2026-11-21 22:46:14"
    assert cdr.get("EndTime") == "2026-11-21 22:46:20"
    assert cdr.get("CallerID") == '"Alice" <5551001>'
    auth = next(m for m in ONE_SHOT if m.name == "SuccessfulAuth")
    assert auth.get("EventTV") == "2026-11-21T22:46:14.909+0000"
    assert auth.get("LocalAddress") == "IPV4/TCP/127.0.0.1/5038"
    endpoint = next(m for m in ONE_SHOT if m.name == "EndpointList")
    assert endpoint.get("Contacts") == "customer/sip:customer@127.0.0.1:5070,"


def test_kinds_names_and_lookups() -> None:
    login = ONE_SHOT[0]
    assert login.kind is AmiMessageKind.RESPONSE
    assert (login.response, login.action_id, login.name) == ("Success", "h1", None)
    assert login.get("message") == "Authentication accepted"  # case-insensitive
    originate = next(m for m in ONE_SHOT if m.name == "OriginateResponse")
    assert originate.kind is AmiMessageKind.EVENT  # it has a Response header too
    assert originate.get("Response") == "Success"
    complete = next(m for m in ONE_SHOT if m.name == "StatusComplete")
    assert complete.completes_list
    assert not originate.completes_list
    assert "Reason" in originate
    assert "Nope" not in originate


# -- splits, several messages per read, encodings ---------------------------------------------


def test_split_inside_crlf_and_inside_the_final_empty_line() -> None:
    msg = b"Event: Hangup\r\nCause: 16\r\n\r\n"
    for cut in range(1, len(msg)):
        parser = AmiParser(expect_banner=False)
        assert parser.feed(msg[:cut]) == []
        (got,) = parser.feed(msg[cut:])
        assert got.headers == (("Event", "Hangup"), ("Cause", "16"))


def test_banner_split_and_followed_by_messages_in_one_read() -> None:
    parser = AmiParser()
    assert parser.feed(b"Asterisk Call Mana") == []
    assert parser.banner is None
    msgs = parser.feed(b"ger/11.0.0\r\nResponse: Success\r\nActionID: 1\r\n\r\nEvent: A\r\n\r\nEv")
    assert parser.banner == "Asterisk Call Manager/11.0.0"
    assert [(m.action_id, m.name) for m in msgs] == [("1", None), (None, "A")]
    assert [m.name for m in parser.feed(b"ent: B\r\n\r\n")] == ["B"]


def test_utf8_split_across_reads_is_decoded_whole() -> None:
    data = "Event: Newchannel\r\nCallerIDName: Jos\u00e9 M\u00fcller \u5f20\r\n\r\n".encode()
    cut = data.index("\u00e9".encode()) + 1  # between the two bytes of é
    parser = AmiParser(expect_banner=False)
    assert parser.feed(data[:cut]) == []
    (msg,) = parser.feed(data[cut:])
    assert msg.get("CallerIDName") == "Jos\u00e9 M\u00fcller \u5f20"


def test_invalid_utf8_is_replaced_not_fatal() -> None:
    parser = AmiParser(expect_banner=False)
    (msg,) = parser.feed(b"Event: Newchannel\r\nCallerIDName: Jos\xe9 \xff\xfe\r\nExten: 1\r\n\r\n")
    assert msg.get("CallerIDName") == "Jos\ufffd \ufffd\ufffd"
    assert msg.get("Exten") == "1"


def test_line_without_colon_is_kept() -> None:
    (msg,) = AmiParser(expect_banner=False).feed(b"Event: X\r\nodd line\r\n\r\n")
    assert msg.get_all("") == ["odd line"]


def test_legacy_response_follows_at_every_split() -> None:
    data = (
        b"Response: Follows\r\nPrivilege: Command\r\nActionID: 7\r\n"
        b"Asterisk 11.25.3 built by x\n\nKey: looks like a header\n--END COMMAND--\r\n\r\n"
        b"Event: After\r\n\r\n"
    )
    for cut in range(len(data) + 1):
        parser = AmiParser(expect_banner=False)
        msgs = parser.feed(data[:cut]) + parser.feed(data[cut:])
        follows, after = msgs
        assert follows.kind is AmiMessageKind.RESPONSE
        assert (follows.response, follows.action_id) == ("Follows", "7")
        assert follows.output == [
            "Asterisk 11.25.3 built by x",
            "",
            "Key: looks like a header",
        ]
        assert after.name == "After"


def test_legacy_follows_without_newline_before_end_marker() -> None:
    data = b"Response: Follows\r\nPrivilege: Command\r\nonly line--END COMMAND--\r\n\r\n"
    (msg,) = AmiParser(expect_banner=False).feed(data)
    assert msg.output == ["only line"]


# -- bounds ------------------------------------------------------------------------------------


def test_message_without_end_is_capped() -> None:
    parser = AmiParser(expect_banner=False, max_message_bytes=4096)
    with pytest.raises(AmiProtocolError, match="larger than 4096"):
        for _ in range(1000):
            parser.feed(b"Variable: x=" + b"y" * 20 + b"\r\n")
    with pytest.raises(AmiProtocolError):
        parser.feed(b"\r\n")  # the parser is spent


def test_endless_line_is_capped() -> None:
    parser = AmiParser(expect_banner=False, max_message_bytes=4096)
    parser.feed(b"Event: X\r\nValue: " + b"a" * 4000)
    with pytest.raises(AmiProtocolError):
        parser.feed(b"a" * 200)


def test_a_message_at_the_cap_is_fine() -> None:
    body = b"Event: Big\r\nValue: " + b"v" * 1000 + b"\r\n"
    parser = AmiParser(expect_banner=False, max_message_bytes=len(body))
    (msg,) = parser.feed(body + b"\r\n")
    assert msg.get("Value") == "v" * 1000


def test_not_an_ami_banner() -> None:
    with pytest.raises(AmiProtocolError, match="banner"):
        AmiParser().feed(b"HTTP/1.1 400 Bad Request\r\n")
    with pytest.raises(AmiProtocolError, match="banner"):
        AmiParser().feed(b"x" * 2000)


# -- encoding ----------------------------------------------------------------------------------


def test_encode_action_matches_recorded_bytes() -> None:
    sent = [f.data for f in FRAMES if f.direction is Direction.SEND]
    login = encode_action(
        "Login", "h1", {"Username": "harness", "Secret": "secret", "Events": "on"}
    )
    assert login == sent[0]
    originate = encode_action(
        "Originate",
        "orig-t1174-full",
        {
            "Channel": "Local/999002@from-customer",
            "Application": "Wait",
            "Data": 3600,
            "CallerID": '"Alice" <5551001>',
            "Account": "acct-1001",
            "Async": True,
            "Timeout": 60000,
            "ChannelId": "t1174-full",
            "OtherChannelId": "t1174-full-2",
            "Variable": ["HARNESS_SET=hello world", "__CARRIER_TALK=2"],
        },
    )
    assert originate == sent[2]
    assert encode_action("Ping", "h33") == sent[-4]


@pytest.mark.parametrize("bad", ["a\r\nAction: Originate", "a\nb", "a\rb", "a\x00b"])
def test_encode_action_rejects_header_injection(bad: str) -> None:
    with pytest.raises(ValueError, match="header injection") as info:
        encode_action("Setvar", "1", {"Variable": "X", "Value": bad})
    assert bad not in str(info.value)
    with pytest.raises(ValueError, match="header injection"):
        encode_action(bad, "1")
    with pytest.raises(ValueError, match="header injection"):
        encode_action("Ping", bad)
    with pytest.raises(ValueError, match="header injection"):
        encode_action("Originate", "1", {"Variable": ["A=1", bad]})


def test_encode_rejects_bad_keys_and_our_own_headers() -> None:
    for key in ["", "Bad: key", " Lead", "Two\r\nLines"]:
        with pytest.raises(ValueError):
            encode_message([(key, "v")])
    with pytest.raises(ValueError, match="set by encode_action"):
        encode_action("Ping", "1", {"ActionID": "2"})


def test_encode_then_parse_round_trip_with_unicode() -> None:
    wire = encode_action("Setvar", "9", {"Variable": "NAME", "Value": "Jos\u00e9: 12:30"})
    (msg,) = AmiParser(expect_banner=False).feed(wire)
    assert msg.kind is AmiMessageKind.ACTION
    assert msg.name == "Setvar"
    assert msg.get("Value") == "Jos\u00e9: 12:30"
    assert AmiMessage.of(("Event", "X"), Foo="bar").to_bytes() == b"Event: X\r\nFoo: bar\r\n\r\n"


def test_repr_masks_credentials() -> None:
    (msg,) = AmiParser(expect_banner=False).feed(
        encode_action("Login", "1", {"Username": "u", "Secret": "hunter2", "Key": "abc123"})
    )
    assert msg.get("Secret") == "hunter2"
    assert "hunter2" not in repr(msg)
    assert "abc123" not in repr(msg)
    assert "'Username', 'u'" in repr(msg)
