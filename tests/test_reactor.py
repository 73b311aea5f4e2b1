"""Reactor on real sockets: registration, write interest, timers, signals, callback isolation."""

import os
import signal
import socket

import pytest

from bridge.core.reactor import EVENT_READ, Reactor


@pytest.fixture
def reactor():
    r = Reactor()
    yield r
    r.close()


def test_reader_fires_on_data(reactor):
    a, b = socket.socketpair()
    got = []
    reactor.add_reader(a.fileno(), lambda: got.append(a.recv(100)))
    b.send(b"hello")
    reactor.run_once(timeout=1)
    assert got == [b"hello"]
    a.close(), b.close()


def test_write_interest_only_while_asked(reactor):
    a, b = socket.socketpair()
    calls = []
    reactor.add_reader(a.fileno(), lambda: None)
    reactor.add_writer(a.fileno(), lambda: calls.append(1))
    reactor.run_once(timeout=0)
    assert calls == [1]
    reactor.remove_writer(a.fileno())
    assert reactor.interest(a.fileno()) == EVENT_READ
    reactor.run_once(timeout=0)
    assert calls == [1]
    reactor.forget(a.fileno())
    assert reactor.interest(a.fileno()) == 0
    a.close(), b.close()


def test_timers_fire_in_order_and_cancel(reactor):
    order = []
    reactor.call_later(0.03, lambda: order.append("late"))
    reactor.call_later(0.01, lambda: order.append("early"))
    h = reactor.call_later(0.02, lambda: order.append("cancelled"))
    h.cancel()
    reactor.call_later(0.05, reactor.stop)
    reactor.run()
    assert order == ["early", "late"]


def test_failing_callback_does_not_kill_loop(reactor, caplog):
    ran = []

    def boom():
        raise RuntimeError("boom")

    reactor.call_soon(boom)
    reactor.call_soon(lambda: ran.append(1))
    reactor.run_once(timeout=0)
    assert ran == [1]
    assert reactor.callback_errors == 1
    assert "boom" in caplog.text


def test_end_of_pass_hook_runs_after_io(reactor):
    a, b = socket.socketpair()
    seen = []
    reactor.add_reader(a.fileno(), lambda: seen.append(("read", a.recv(10))))
    reactor.add_end_of_pass(lambda: seen.append(("flush",)))
    b.send(b"x")
    reactor.run_once(timeout=1)
    assert seen == [("read", b"x"), ("flush",)]
    a.close(), b.close()


def test_sigterm_stops_run_cleanly(reactor):
    reactor.stop_on_signals(signal.SIGTERM)
    reactor.call_later(0.01, lambda: os.kill(os.getpid(), signal.SIGTERM))
    reactor.call_later(5, lambda: pytest.fail("signal did not stop the loop"))
    reactor.run()
    assert reactor.stop_requested


def test_call_every_outlives_a_failing_run_and_stops_when_cancelled(reactor):
    runs = []

    def tick():
        runs.append(len(runs))
        if len(runs) == 2:
            raise RuntimeError("one bad run")

    handle = reactor.call_every(0.01, tick, first=0)
    while len(runs) < 4:
        reactor.run_once(timeout=1)
    assert reactor.callback_errors == 1  # the second run raised; the third and fourth still came
    handle.cancel()
    for _ in range(5):
        reactor.run_once(timeout=0.02)
    assert len(runs) == 4


def test_injected_clock_runs_timers_without_sleeping():
    """Reactor(clock=...): timers follow the given clock, so a test advances time instead of sleeping."""
    now = [1000.0]
    reactor = Reactor(clock=lambda: now[0])
    fired = []
    reactor.call_later(30.0, lambda: fired.append("once"))
    handle = reactor.call_every(10.0, lambda: fired.append(now[0]))
    reactor.run_once(0)
    assert fired == [] and reactor.time() == 1000.0
    now[0] += 10.0
    reactor.run_once(0)
    now[0] += 20.0
    reactor.run_once(0)
    assert fired == [1010.0, 1030.0, "once"]  # the series' overdue run (due 1020) first, once per pass
    handle.cancel()
    now[0] += 100.0
    reactor.run_once(0)
    assert fired == [1010.0, 1030.0, "once"]
    reactor.close()
