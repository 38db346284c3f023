"""Prompt cleanup: hidden staging names carry their writer, and a dead writer's leftovers go at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.conftest import make_settings
from wsm.store import Store, backend, owner


def _dead_writers_marker() -> str:
    """The marker a writer that was SIGKILLed would have left (a real process, now gone)."""
    child = subprocess.Popen(
        [sys.executable, "-c", "from wsm.store import owner; print(owner.marker(), flush=True); input()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert child.stdout is not None
    mark = child.stdout.readline().strip()
    os.kill(child.pid, signal.SIGKILL)
    child.wait(30)
    return mark


def test_marker_names_this_process_and_judges_it_alive() -> None:
    name = backend.hidden_name(backend.TMP_PREFIX, "anneal-x")
    who = owner.owner_of(name)
    assert who is not None and who.pid == os.getpid() and who.is_dead() is False
    assert owner.owner_of(".tmp-anneal-x-0123456789ab") is None  # older names carry no marker


def test_reused_pid_other_boot_and_other_host_are_told_apart() -> None:
    me = owner.owner_of(owner.marker())
    assert me is not None
    assert owner.Owner(me.host, me.boot, me.pid, me.start + 1).is_dead() is True  # pid reused later
    assert owner.Owner(me.host, "000000", me.pid, me.start).is_dead() is True  # an earlier boot
    assert owner.Owner("ffffff", me.boot, me.pid, me.start).is_dead() is None  # another host: not judged


def test_cleanup_removes_only_dead_writers_leftovers(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "store"), settings=make_settings())
    with store.publish_checkpoint("r1", 10) as pub:
        pub.write_bytes("model.safetensors", b"published")
    root = Path(store.root)
    dead = _dead_writers_marker()
    assert owner.owner_of(dead) is not None and owner.owner_of(dead).is_dead() is True  # type: ignore[union-attr]
    me = owner.marker()
    foreign = "-wffffff000000p1s1"
    leftovers = {
        "runs/r1/checkpoints/.tmp-000000000000000020-aaaa" + dead: "dir",  # a killed checkpoint save
        "runs/r1/models/.tmp-anneal-x-bbbb" + dead: "dir",  # a killed merge's publish
        "runs/r1/jobs/.tmp-job-1.json-cccc" + dead: "file",  # a killed record write
        ".tmp-write-probe-dddd" + dead: "file",
    }
    kept = {
        "runs/r1/models/.tmp-anneal-live-eeee" + me: "dir",  # this process: alive
        "runs/r1/models/.tmp-anneal-far-ffff" + foreign: "dir",  # another host: the age sweep's
        "runs/r1/models/.tmp-anneal-old-0000": "dir",  # no marker
    }
    for rel, kind in {**leftovers, **kept}.items():
        path = root / rel
        if kind == "dir":
            (path / "model.safetensors").parent.mkdir(parents=True)
            (path / "model.safetensors").write_bytes(b"partial")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"partial")
    assert store.cleanup_dead_writers("runs/r1/models") == ["runs/r1/models/.tmp-anneal-x-bbbb" + dead]
    assert sorted(store.cleanup_dead_writers()) == sorted(
        set(leftovers) - {"runs/r1/models/.tmp-anneal-x-bbbb" + dead}
    )
    assert all((root / rel).exists() for rel in kept)
    assert [c.tokens for c in store.list_checkpoints("r1")] == [10]
    assert store.read_file(store.get_checkpoint("r1", 10), "model.safetensors") == b"published"
