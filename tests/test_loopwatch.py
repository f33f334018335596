"""The event-loop watch on a real loop and a real thread: holds made with ``time.sleep`` on the
loop are seen, timed, logged with the stack that held the loop, and counted once each."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest

from callgate import metrics
from callgate.config import SettingsError, load_settings
from callgate.loopwatch import KEPT_STALLS, LoopWatch


def _stalls_counted() -> float:
    return metrics.REGISTRY.get_sample_value("callgate_event_loop_stalls_total") or 0.0


def _beats_counted() -> float:
    return metrics.REGISTRY.get_sample_value("callgate_event_loop_lag_seconds_count") or 0.0


def hold_the_loop_for(seconds: float) -> None:
    time.sleep(seconds)  # what a blocking call slipped into a coroutine does to every call


async def test_a_hold_is_logged_once_with_its_length_and_the_stack_that_held_the_loop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    watch = LoopWatch(stall_ms=50)
    counted = _stalls_counted()
    caplog.set_level(logging.WARNING, logger="callgate.loopwatch")
    watch.start()
    try:
        await asyncio.sleep(0.05)
        hold_the_loop_for(0.2)
        await asyncio.sleep(0.1)  # the beat after the hold reports it
    finally:
        watch.stop()
    assert len(watch.stalls) == 1
    stall = watch.stalls[0]
    assert 150 <= stall.held_ms <= 400, stall.held_ms
    assert "hold_the_loop_for" in stall.stack and "time.sleep" in stall.stack
    assert _stalls_counted() - counted == 1
    warnings = [r for r in caplog.records if r.name == "callgate.loopwatch"]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert message.startswith(
        f"event loop held for {stall.held_ms} ms or more (every live call waited)"
    )
    assert "hold_the_loop_for" in message


async def test_a_free_loop_beats_and_reports_no_stall() -> None:
    watch = LoopWatch(stall_ms=50)
    beats, counted = _beats_counted(), _stalls_counted()
    watch.start()
    try:
        await asyncio.sleep(0.3)
    finally:
        watch.stop()
    assert list(watch.stalls) == []
    assert _stalls_counted() == counted
    assert 6 <= _beats_counted() - beats <= 13  # one beat each 25 ms, none lost


async def test_holds_shorter_than_the_threshold_are_not_stalls_but_show_as_lag() -> None:
    watch = LoopWatch(stall_ms=100)
    late = metrics.REGISTRY.get_sample_value(
        "callgate_event_loop_lag_seconds_bucket", {"le": "0.02"}
    )
    beats = _beats_counted()
    watch.start()
    try:
        for _ in range(3):
            await asyncio.sleep(0.03)
            hold_the_loop_for(0.06)
        await asyncio.sleep(0.03)
    finally:
        watch.stop()
    assert list(watch.stalls) == []
    within_20ms = metrics.REGISTRY.get_sample_value(
        "callgate_event_loop_lag_seconds_bucket", {"le": "0.02"}
    )
    assert late is not None and within_20ms is not None
    beats_late = (_beats_counted() - beats) - (within_20ms - late)
    assert beats_late >= 3  # each 60 ms hold made one beat more than 20 ms late


async def test_each_hold_is_one_stall_and_only_the_last_ones_are_kept() -> None:
    watch = LoopWatch(stall_ms=30)
    counted = _stalls_counted()
    holds = KEPT_STALLS + 2
    watch.start()
    try:
        for _ in range(holds):
            await asyncio.sleep(0.03)
            hold_the_loop_for(0.07)
        await asyncio.sleep(0.03)
    finally:
        watch.stop()
    assert _stalls_counted() - counted == holds
    assert len(watch.stalls) == KEPT_STALLS
    assert all(40 <= stall.held_ms <= 200 for stall in watch.stalls), watch.stalls


async def test_stop_ends_the_thread_and_the_beats() -> None:
    watch = LoopWatch(stall_ms=50)
    watch.start()
    await asyncio.sleep(0.03)
    watch.stop()
    assert not any(t.name == "callgate-loopwatch" for t in threading.enumerate())
    beats = _beats_counted()
    await asyncio.sleep(0.05)
    assert _beats_counted() == beats
    with pytest.raises(ValueError, match="stall_ms must be more than 0"):
        LoopWatch(stall_ms=0)


def test_the_setting_is_on_at_50_ms_and_0_turns_it_off() -> None:
    assert load_settings(environ={}).agi.loop_stall_ms == 50
    assert load_settings(environ={"CALLGATE_AGI_LOOP_STALL_MS": "0"}).agi.loop_stall_ms == 0
    for bad in ("-1", "25"):
        with pytest.raises(SettingsError, match="agi.loop_stall_ms: must be 0 \\(off\\) or more"):
            load_settings(environ={"CALLGATE_AGI_LOOP_STALL_MS": bad})
