"""Names and paths: zero-padded token counts, and every traversal attempt refused."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wsm.store import InvalidNameError, Store, checkpoint_name, layout, parse_checkpoint_name, validate_name

BAD_NAMES: list[Any] = [
    "",
    "..",
    "a/..",
    "../x",
    "a/b",
    "/abs",
    ".hidden",
    "a..b",
    "x" * 129,
    "sp ace",
    "a\x00",
    3,
    None,
]


@given(st.integers(min_value=0, max_value=10**18 - 1))
def test_checkpoint_name_round_trip_and_order(tokens: int) -> None:
    name = checkpoint_name(tokens)
    assert len(name) == 18 and parse_checkpoint_name(name) == tokens
    assert (name < checkpoint_name(tokens + 1)) if tokens + 1 < 10**18 else True


def test_checkpoint_name_examples_and_errors() -> None:
    assert checkpoint_name(80_000_000_000) == "000000080000000000"
    for bad in (-1, 10**18, 1.5, True, "80"):
        with pytest.raises(InvalidNameError):
            checkpoint_name(bad)  # type: ignore[arg-type]
    for bad in ("80", "00000008000000000a", "0" * 19, "../000000000000000001"):
        with pytest.raises(InvalidNameError):
            parse_checkpoint_name(bad)


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_bad_names_refused_with_the_value_named(bad: Any) -> None:
    with pytest.raises(InvalidNameError) as e:
        validate_name(bad, "run name")
    assert isinstance(e.value, ValueError) and repr(bad) in str(e.value) and e.value.value == bad


def test_good_names() -> None:
    for good in ("r1", "A", "run-2024.06_v2", "x" * 128, "model.safetensors"):
        assert validate_name(good) == good


@pytest.mark.parametrize(
    "path",
    ["../x", "runs/../../etc/passwd", "/etc/passwd", "runs//x", "runs/.tmp-x/y", "", "runs/r1/", "a\\..\\b"],
)
def test_traversal_refused_by_every_entry_point(local_store: Store, path: str) -> None:
    s = local_store
    for call in (
        lambda: s.read_bytes(path),
        lambda: s.read_range(path, 0, 1),
        lambda: s.open(path),
        lambda: s.exists(path),
        lambda: s.local_path(path),
        lambda: s.write_bytes(path, b"x"),
    ):
        with pytest.raises(InvalidNameError):
            call()


@pytest.mark.parametrize("bad", ["..", "../r", "a/b", ".x", ""])
def test_api_refuses_bad_run_and_artifact_names(local_store: Store, bad: str) -> None:
    s = local_store
    for call in (
        lambda: s.get_run(bad),
        lambda: s.create_run(bad),
        lambda: s.list_checkpoints(bad),
        lambda: s.publish_checkpoint(bad, 1),
        lambda: s.get_model("r1", bad),
        lambda: s.publish_model("r1", bad, kind="anneal", tokens=1, dtype="bf16"),
        lambda: s.publish_eval("r1", bad, model_id="runs/r1/models/m"),
        lambda: s.pin("r1", bad, [1]),
        lambda: s.append_metrics(bad, []),
    ):
        with pytest.raises(InvalidNameError):
            call()
    with pytest.raises(InvalidNameError), s.publish_checkpoint("r1", 1) as pub:
        pub.write_bytes(bad, b"x")


def test_layout_paths() -> None:
    assert layout.checkpoint_dir("r1", 5) == "runs/r1/checkpoints/000000000000000005"
    assert layout.model_dir("r1", "m") == "runs/r1/models/m"
    assert layout.eval_dir("r1", "e") == "runs/r1/evals/e"
    assert layout.pin_path("r1", "job-1") == "runs/r1/pins/job-1.json"
    assert layout.metrics_segment_path("r1", 7) == "runs/r1/metrics/0000000007.jsonl"
    assert layout.parse_segment_name("0000000007.jsonl") == 7
    assert layout.parse_segment_name(".tmp-0000000007.jsonl-x") is None
    assert layout.artifact_dir_of("runs/r1/models/m/model.safetensors") == "runs/r1/models/m"
    assert layout.artifact_dir_of("runs/r1/manifest.json") is None


def test_split_artifact_dir_accepts_only_whole_artifact_dirs() -> None:
    from wsm.store import layout

    assert layout.split_artifact_dir("runs/r/models/m") == ("r", "models", "m")
    assert layout.split_artifact_dir(layout.checkpoint_dir("r", 10) + "/") == (
        "r",
        "checkpoints",
        "000000000000000010",
    )
    for not_a_dir in ("runs/r/models/m/model.safetensors", "runs/r/models", "runs/r/pins/j", "elsewhere"):
        assert layout.split_artifact_dir(not_a_dir) is None
