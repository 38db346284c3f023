"""wsm's own INFO lines show; third-party INFO chatter does not, unless asked for with DEBUG."""

from __future__ import annotations

import logging

import pytest

from wsm.logs import setup_logging


@pytest.fixture(autouse=True)
def _restore_logging() -> object:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    yield
    root.handlers[:], level = saved
    root.setLevel(level)


def test_third_party_info_stays_out_at_info(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("INFO")
    logging.getLogger("merger.engine").info("merged 4 checkpoints")
    logging.getLogger("httpx").info('HTTP Request: GET http://x "HTTP/1.1 200 OK"')
    logging.getLogger("megatron.core.datasets").info("Build and save the dataset index")
    logging.getLogger("botocore").warning("a real warning")
    err = capsys.readouterr().err
    assert "merged 4 checkpoints" in err and "a real warning" in err
    assert "HTTP/1.1 200 OK" not in err and "dataset index" not in err


def test_debug_shows_everything(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("DEBUG")
    logging.getLogger("httpx").info("third-party detail")
    assert "third-party detail" in capsys.readouterr().err


def test_unknown_level_is_one_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown log level 'LOUD'"):
        setup_logging("LOUD")
