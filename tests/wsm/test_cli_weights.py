"""``wsm weights``: table and JSON output, and clear errors with exit code 2."""

import json
import subprocess
import sys

import pytest

from wsm.cli import main


def test_table_lists_checkpoints_and_weights(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["weights", "--curve", "1-sqrt", "--window", "80B", "--interval", "20B"]) == 0
    out = capsys.readouterr().out
    assert "curve 1-sqrt, window 80B" in out
    assert "0.500000" in out and "0.207107" in out and "0.158919" in out and "0.133975" in out


def test_json_output_from_explicit_checkpoints(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["weights", "--curve", "linear", "--window", "30B", "--checkpoints", "10B,20B,30B,40B", "--json"]
    )
    assert code == 0
    payload = json.loads(capsys.readouterr().out)
    assert [c["tokens"] for c in payload["checkpoints"]] == [20 * 10**9, 30 * 10**9, 40 * 10**9]
    assert [round(c["c"], 6) for c in payload["checkpoints"]] == [round(1 / 3, 6)] * 3
    assert payload["curve"]["name"] == "linear"


def test_custom_coefficients(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["weights", "--coefficients", "0.8,0.4", "--window", "30B", "--interval", "10B", "--json"]) == 0
    )
    payload = json.loads(capsys.readouterr().out)
    assert [round(c["c"], 6) for c in payload["checkpoints"]] == [0.2, 0.4, 0.4]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--curve", "step", "--window", "8B", "--interval", "1B"], "unknown curve 'step'"),
        (["--window", "80X", "--interval", "10B"], "--window: '80X' has an unknown suffix"),
        (["--window", "80B"], "give --interval, --count or --checkpoints"),
        (["--window", "80B", "--checkpoints", "10B,20B"], "longer than the run so far"),
        (["--coefficients", "0.2,0.5", "--window", "3B", "--interval", "1B"], "is larger than w"),
        (["--coefficients", "a,b", "--window", "3B", "--interval", "1B"], "not a comma-separated list"),
    ],
)
def test_bad_input_is_one_clear_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["weights", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_console_script_help_works_without_torch() -> None:
    code = "import sys, wsm.cli; wsm.cli.main(['weights', '--window', '8B', '--interval', '1B']); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("False"), "wsm weights must not pay for importing torch"
