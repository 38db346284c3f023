"""Crash safety in a real process: SIGKILL mid-save leaves nothing half-visible; restart resumes; SIGTERM saves."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.trainer.conftest import tiny_overrides

ROOT = Path(__file__).resolve().parents[2]


def _start(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "wsm.cli", "train", *[a for s in args for a in ("--set", s)]],
        cwd=ROOT,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


def _wait_for(predicate, timeout: float, proc: subprocess.Popen[bytes], log: Path) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"trainer exited early ({proc.returncode}):\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"timed out:\n{log.read_text()[-3000:]}")


def test_sigkill_mid_save_then_resume_then_sigterm(data_cache: Path, tmp_path: Path) -> None:
    from wsm.store import Store

    store_dir = tmp_path / "store"
    store = Store(str(store_dir))
    args = tiny_overrides(data_cache, run="k", store=str(store_dir), train_tokens="1M")
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "WSM_TRAINER_TEST_UPLOAD_DELAY": "60:5120"}
    ckpt_dir = store_dir / "runs" / "k" / "checkpoints"

    # 1. The second checkpoint, its shards written asynchronously, hangs inside its publish: kill
    #    the process there.
    log1 = tmp_path / "first.log"
    proc = _start(args, log1, env)
    staging = ".tmp-000000000000005120-"  # the publisher's staging dir of the second checkpoint
    _wait_for(
        lambda: ckpt_dir.is_dir() and any(p.name.startswith(staging) for p in ckpt_dir.iterdir()),
        240,
        proc,
        log1,
    )
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert [c.tokens for c in store.list_checkpoints("k")] == [2560]  # no half checkpoint visible
    hidden = {p.name.split("-")[1] for p in ckpt_dir.iterdir() if p.name.startswith(".tmp-")}
    assert hidden == {"dcp", "000000000000005120"}  # the shards' scratch dir and the staging dir

    # 2. Restart without the delay: resumes from 2560, then a SIGTERM stops it with a final save.
    env.pop("WSM_TRAINER_TEST_UPLOAD_DELAY")
    log2 = tmp_path / "second.log"
    proc = _start(args, log2, env)
    _wait_for(lambda: "step 13 " in log2.read_text() or "step 15 " in log2.read_text(), 240, proc, log2)
    assert "resumed from runs/k/checkpoints/000000000000002560" in log2.read_text()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(120) == 0, log2.read_text()[-3000:]
    tokens = [c.tokens for c in store.list_checkpoints("k")]
    assert tokens[0] == 2560 and tokens[-1] > 2560
    latest = store.latest_checkpoint("k")
    assert latest is not None and (latest.extra.get("final") is True or tokens[-1] % 2560 == 0)
    store.cleanup_stale(older_than=0)  # the killed save's scratch and staging dirs are removable leftovers
    assert not any(p.name.startswith(".tmp-") for p in ckpt_dir.iterdir())
