"""EvalConfig's benchmark stage: refused without lm-eval, with the install hint; invisible when off."""

from __future__ import annotations

import importlib.util
import json
from typing import Any

import pytest
from pydantic import ValidationError

from tests.conftest import make_settings
from wsm.eval_config import INSTALL_HINT, EvalConfig


@pytest.fixture()
def no_lm_eval(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any, **kwargs: Any) -> Any:
        return None if name == "lm_eval" else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def test_stage_is_refused_without_lm_eval(no_lm_eval: None) -> None:
    with pytest.raises(ValidationError) as info:
        EvalConfig.model_validate({"bench": {"enabled": True}})
    message = info.value.errors()[0]["msg"]
    assert INSTALL_HINT in message and "\n" not in message
    EvalConfig.model_validate({"bench": {"enabled": False, "limit": 3}})  # off: nothing to install


def test_settings_refuse_it_at_start_up(no_lm_eval: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WSM_EVAL_CONFIG", json.dumps({"bench": {"enabled": True}}))
    with pytest.raises(ValidationError, match=r"pip install 'wsm\[eval\]'"):
        make_settings()


def test_an_off_stage_leaves_dumps_unchanged() -> None:
    """Job ids and evaluation cache keys digest this dump: the new field must not move them."""
    off = EvalConfig.model_validate({"bench": {"limit": 5}})
    assert "bench" not in off.model_dump(mode="json") and "bench" not in json.loads(off.model_dump_json())
    assert off.seeds() == EvalConfig().seeds()
    assert EvalConfig.model_validate(off.model_dump(mode="json")) == EvalConfig()


def test_an_on_stage_is_dumped_and_round_trips() -> None:
    pytest.importorskip("lm_eval")
    on = EvalConfig.model_validate({"bench": {"enabled": True, "tasks": ["wsm_pack", "mine"], "limit": 5}})
    dumped = on.model_dump(mode="json")
    assert dumped["bench"]["tasks"] == ["wsm_pack", "mine"]
    assert EvalConfig.model_validate(dumped) == on
    with pytest.raises(ValidationError, match="task name is empty"):
        EvalConfig.model_validate({"bench": {"tasks": [" "]}})
