"""The process supervisor behind ``wsm up``: prefixed logs, fail-fast, orderly stop."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import sys
import threading
import time
from pathlib import Path

from tests.api.worker import alive, children, service_env, wait_for
from tests.conftest import make_settings
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


def _group(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``, from /proc."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            found.append(int(entry.name))
    return found


def test_stopping_a_real_worker_ends_its_pool_without_an_error(tmp_path: Path) -> None:
    settings = make_settings(store_url=str(tmp_path / "store"), state_dir=str(tmp_path / "state"))
    argv = [sys.executable, "-m", "wsm.cli", "worker", "--no-recovery"]
    worker = Component("worker", argv, service_env(settings))
    out = io.StringIO()
    sup = Supervisor([worker], out=out, grace_seconds=30)
    sup.start()
    try:
        assert worker.process is not None
        leader = worker.process.pid
        wait_for(lambda: " ready." in out.getvalue(), 120, "the worker to be ready", out.getvalue)
        pool = wait_for(lambda: children(leader), 60, "the pool processes", out.getvalue)
    finally:
        sup.stop()
    text = out.getvalue()
    assert "ERROR" not in text and "SIGTERM" not in text, text
    assert worker.process.returncode == 0, text
    assert not [pid for pid in pool if alive(pid)] and not _group(leader)


def test_stop_kills_what_a_stopped_component_left_behind() -> None:
    out = io.StringIO()
    leaver = Component(
        "leaver",
        _python(
            "import subprocess, sys, time\n"
            "code = 'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            'print("ready", flush=True); time.sleep(60)\'\n'
            "child = subprocess.Popen([sys.executable, '-c', code])\n"
            "print('child', child.pid); time.sleep(60)"
        ),
    )
    sup = Supervisor([leaver], out=out, grace_seconds=10)
    sup.start()
    while "ready" not in out.getvalue() or "child " not in out.getvalue():
        time.sleep(0.05)
    child = int(out.getvalue().split("child ")[1].split()[0])
    sup.stop()
    assert leaver.process is not None and leaver.process.returncode == -15
    pgid = leaver.process.pid  # SIGKILLed, the child may take a moment to die
    try:
        wait_for(lambda: not alive(child) and not _group(pgid), 10, "the left-behind child to die")
    except AssertionError:
        with contextlib.suppress(ProcessLookupError):  # a failure leaves no stray behind
            os.kill(child, signal.SIGKILL)
        raise
