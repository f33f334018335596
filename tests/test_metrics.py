"""Metrics scraped over HTTP from a real port: the whole ``serve`` runtime (FastAGI, AMI listener,
reaper, gauges) with calls going through it, on both databases; and the pure pieces."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import threading
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.ext.asyncio import AsyncEngine

from callgate import metrics
from callgate.agi.client import AsteriskEmulator, ChannelSpec, DialOutcome, FakeAsterisk
from callgate.ami.fakeserver import FakeAmiServer, load_session, recorded_messages
from callgate.cli.demo import seed_demo
from callgate.cli.runtime import StartupError, open_runtime
from callgate.config import AgiSettings, AmiSettings, MetricsSettings, Secret, load_settings
from callgate.schema.tables import CallStatus
from callgate.templates import read_template

SESSION = Path(__file__).parent / "data" / "transcripts" / "ami-session.raw"
RAW_EVENTS = [m for m in recorded_messages(load_session(SESSION)) if m.startswith(b"Event: ")]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def http_get(port: int, path: str = "/metrics") -> tuple[str, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        async with asyncio.timeout(5):
            writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            await writer.drain()
            data = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = data.decode().partition("\r\n\r\n")
    return head.split("\r\n", 1)[0], body


async def scrape(port: int) -> Samples:
    status, body = await http_get(port)
    assert status == "HTTP/1.1 200 OK"
    out: Samples = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def until(predicate: object, within: float = 5.0) -> None:
    assert callable(predicate)
    async with asyncio.timeout(within):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.02)


def _hold_the_loop(seconds: float) -> None:
    time.sleep(seconds)  # a blocking call on the serve loop


def _spec(uniqueid: str, accountcode: str) -> ChannelSpec:
    return ChannelSpec(uniqueid=uniqueid, accountcode=accountcode, extension="0044207946")


async def test_serve_exposes_metrics_that_move_with_calls(engine: AsyncEngine, db_url: str) -> None:
    base = load_settings(environ={"CALLGATE_DATABASE_URL": db_url})
    await seed_demo(engine, base)
    async with FakeAmiServer(username="callgate", secret="m-secret") as ami:
        settings = dataclasses.replace(
            base,
            agi=AgiSettings(host="127.0.0.1", port=0),
            metrics=MetricsSettings(enabled=True, host="127.0.0.1", port=0),
            ami=AmiSettings(
                enabled=True, port=ami.port, username="callgate", secret=Secret("m-secret")
            ),
        )
        runtime = await open_runtime(settings, engine=engine, monitoring=True)
        try:
            assert runtime.metrics_server is not None and runtime.ami is not None
            port = runtime.metrics_server.port
            await until(lambda: runtime.ami is not None and runtime.ami.connected)
            before = await scrape(port)
            assert value(before, "callgate_ami_connected", server="asterisk") == 1
            assert value(before, "callgate_rates_indexed") > 0
            assert value(before, "callgate_rate_tables_indexed") == 2
            asterisk = FakeAsterisk("127.0.0.1", runtime.server.port)
            answered = AsteriskEmulator(
                _spec("m-1", "7000000003"),
                clock_ms=lambda: 1_763_769_600_000,  # simulated time only: billsec is exact
                dial_outcomes=[
                    dataclasses.replace(
                        DialOutcome.answered(12_000, ring_ms=3_000), first_ring_ms=1_500
                    )
                ],
            )
            assert (await asterisk.call(answered.spec, answered)).ok
            refused = AsteriskEmulator(_spec("m-2", "no-such-account"))
            assert (await asterisk.call(refused.spec, refused)).ok
            assert refused.variables["CALLGATE_STATUS"] == "NO_ACCOUNT"
            # the listener counts live channels from the recorded events
            newchannels = [r for r in RAW_EVENTS if r.startswith(b"Event: Newchannel\r\n")][:3]
            await ami.push(b"".join(newchannels))
            assert runtime.listener is not None
            await until(
                lambda: runtime.listener is not None and len(runtime.listener.channels()) == 3
            )
            # the loop watch is on by default: hold the serve loop past agi.loop_stall_ms
            assert runtime.loopwatch is not None and runtime.loopwatch.stall_ms == 50
            _hold_the_loop(0.12)
            await until(lambda: runtime.loopwatch is not None and len(runtime.loopwatch.stalls) > 0)
            after = await scrape(port)
        finally:
            await runtime.stop(1)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("callgate_calls_total", status="OK", dial_status="ANSWER") == 1
    assert delta("callgate_calls_total", status="NO_ACCOUNT", dial_status="none") == 1
    assert delta("callgate_calls_answered_total") == 1
    assert delta("callgate_calls_billsec_total") == 12
    assert delta("callgate_call_attempts_total") == 2
    assert delta("callgate_pdd_seconds_count") == 1
    assert delta("callgate_pdd_seconds_sum") == 1.5
    assert delta("callgate_agi_latency_seconds_count") == 1  # only the dialled call
    assert value(after, "callgate_asr_ratio") > 0 and value(after, "callgate_acd_seconds") > 0
    assert value(after, "callgate_ami_live_channels", server="asterisk") == 3
    assert delta("callgate_agi_sessions_total", outcome="ok") == 2  # the global registry too
    assert delta("callgate_event_loop_stalls_total") == 1
    assert delta("callgate_event_loop_lag_seconds_count") > 0
    for (name, labels), _ in after.items():  # bounded labels: never an account or a number
        for key, label in labels:
            assert "7000000003" not in label and "0044207946" not in label, (name, key)


async def test_the_metrics_port_taken_is_a_startup_error(engine: AsyncEngine, db_url: str) -> None:
    blocker = metrics.MetricsServer("127.0.0.1", 0)
    await blocker.start()
    try:
        settings = dataclasses.replace(
            load_settings(environ={"CALLGATE_DATABASE_URL": db_url}),
            agi=AgiSettings(host="127.0.0.1", port=0),
            metrics=MetricsSettings(enabled=True, host="127.0.0.1", port=blocker.port),
        )
        try:
            await open_runtime(settings, engine=engine, monitoring=True)
        except StartupError as exc:
            assert "cannot serve metrics" in str(exc)
        else:  # pragma: no cover
            raise AssertionError("open_runtime started with its metrics port taken")
    finally:
        await blocker.close()


def _watch_threads() -> int:
    return sum(thread.name == "callgate-loopwatch" for thread in threading.enumerate())


async def test_the_loop_watch_runs_with_serve_and_stops_with_it_or_is_off(
    engine: AsyncEngine, db_url: str
) -> None:
    base = load_settings(environ={"CALLGATE_DATABASE_URL": db_url})
    for stall_ms, watched in ((50, 1), (0, 0)):
        settings = dataclasses.replace(
            base, agi=AgiSettings(host="127.0.0.1", port=0, loop_stall_ms=stall_ms)
        )
        runtime = await open_runtime(settings, engine=engine, monitoring=True)
        try:
            await asyncio.sleep(0.05)  # the spawned watch has started
            assert (runtime.loopwatch is not None) == bool(watched)
            assert _watch_threads() == watched
        finally:
            await runtime.stop(1)
        assert _watch_threads() == 0


async def test_http_server_answers_only_metrics() -> None:
    server = metrics.MetricsServer("127.0.0.1", 0)
    await server.start()
    try:
        status, body = await http_get(server.port, "/metrics")
        assert status == "HTTP/1.1 200 OK" and "callgate_calls_total" in body
        status, _ = await http_get(server.port, "/nope")
        assert status == "HTTP/1.1 404 Not Found"
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"POST /metrics HTTP/1.1\r\n\r\n")
        await writer.drain()
        async with asyncio.timeout(5):
            answer = await reader.read()
        writer.close()
        await writer.wait_closed()
        assert answer.startswith(b"HTTP/1.1 405")
    finally:
        await server.close()


def test_call_window_asr_acd_cps() -> None:
    now = [1000.0]
    window = metrics.CallWindow(window_seconds=60, clock=lambda: now[0])
    assert (window.asr(), window.acd(), window.cps()) == (0.0, 0.0, 0)
    for _ in range(3):
        window.attempt()
    window.finished(True, 30)
    window.finished(True, 90)
    window.finished(False, 0)
    window.finished(False, 0)
    assert window.asr() == 0.5 and window.acd() == 60.0 and window.cps() == 3
    now[0] += 1.5
    assert window.cps() == 0 and window.asr() == 0.5
    now[0] += 60
    assert window.asr() == 0.0 and window.acd() == 0.0


def test_labels_are_bounded() -> None:
    assert metrics.dial_status_label("answer") == "ANSWER"
    assert metrics.dial_status_label("") == "none"
    assert metrics.dial_status_label("5551234") == "other"
    assert metrics.status_label("OK") == "OK" and metrics.status_label("x") == "other"


def test_every_call_status_is_counted_under_its_own_label() -> None:
    # CLI_REJECTED was once counted as "other": the label list is now the enum itself.
    for status in CallStatus:
        before = metrics.REGISTRY.get_sample_value(
            "callgate_calls_total", {"status": status.value, "dial_status": "none"}
        )
        metrics.observe_call(status.value, "", 0, None)
        after = metrics.REGISTRY.get_sample_value(
            "callgate_calls_total", {"status": status.value, "dial_status": "none"}
        )
        assert after == (before or 0.0) + 1, status
    assert metrics.status_label(CallStatus.CLI_REJECTED) == "CLI_REJECTED"


def test_grafana_dashboard_uses_only_metrics_that_exist() -> None:
    dashboard = json.loads(read_template("grafana-callgate.json"))
    families = {family.name for family in metrics.exposition_registry().collect()}
    used: set[str] = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            used.update(re.findall(r"callgate_[a-z_]+", target["expr"]))
    assert used
    for name in used:
        base = re.sub(r"_(total|bucket|count|sum)$", "", name)
        assert base in families, name


def test_asterisk_templates_grant_only_what_callgate_uses() -> None:
    manager = read_template("manager_callgate.conf")
    lines = [line.strip() for line in manager.splitlines() if not line.startswith(";")]
    assert "[callgate]" in lines
    assert "read = call,cdr" in lines and "write = reporting,command" in lines
    assert "permit = 127.0.0.1/255.255.255.255" in lines
    cdr = read_template("cdr_manager_callgate.conf")
    assert "enabled = yes" in cdr and "linkedid => LinkedID" in cdr
