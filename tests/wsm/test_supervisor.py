"""The process supervisor behind ``wsm up``: prefixed logs, fail-fast, orderly stop."""

from __future__ import annotations

import io
import sys
import threading
import time

from wsm.supervisor import Component, Supervisor


def _python(code: str) -> list[str]:
    return [sys.executable, "-u", "-c", code]


def test_output_is_prefixed_and_clean_exits_are_not_failures() -> None:
    out = io.StringIO()
    sup = Supervisor(
        [Component("alpha", _python("print('hello')")), Component("beta", _python("print('world')"))],
        out=out,
    )
    sup.start()
    assert sup.wait(poll_seconds=0.05) == 0
    text = out.getvalue()
    assert "[alpha   ] hello" in text and "[beta    ] world" in text


def test_a_crashing_component_stops_the_others() -> None:
    out = io.StringIO()
    sleeper = Component("sleeper", _python("import time; time.sleep(60)"))
    crasher = Component("crasher", _python("import sys, time; time.sleep(0.3); print('boom'); sys.exit(3)"))
    sup = Supervisor([sleeper, crasher], out=out, grace_seconds=5)
    sup.start()
    started = time.monotonic()
    assert sup.wait(poll_seconds=0.05) == 3
    assert time.monotonic() - started < 10
    assert sleeper.process is not None and sleeper.process.poll() is not None


def test_stop_request_terminates_gracefully_then_kills() -> None:
    out = io.StringIO()
    graceful = Component(
        "graceful",
        _python(
            "import signal, sys, time\n"
            "signal.signal(signal.SIGTERM, lambda *a: (print('saving'), sys.exit(0)))\n"
            "print('ready'); time.sleep(60)"
        ),
    )
    stubborn = Component(
        "stubborn",
        _python(
            "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ready'); time.sleep(60)"
        ),
    )
    sup = Supervisor([graceful, stubborn], out=out, grace_seconds=1)
    sup.start()
    while out.getvalue().count("ready") < 2:
        time.sleep(0.05)
    threading.Timer(0.2, sup.request_stop).start()
    assert sup.wait(poll_seconds=0.05) == 0
    assert "[graceful] saving" in out.getvalue()
    assert stubborn.process is not None and stubborn.process.returncode == -9
