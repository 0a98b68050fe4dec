"""`lbbench theory`: the table, the JSON, and clear errors for bad input."""

from __future__ import annotations

import json
import subprocess

import pytest

from lbbench.cli import main
from lbbench.system.procs import lbbench_argv

MODELS = ("random_split", "shared_queue", "round_robin", "p2c")


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["theory", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_table_shows_every_model(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "--pods", "4", "--slots", "1", "--service", "exp:10ms", "--rate", "320")
    assert code == 0 and err == ""
    assert "utilisation 0.800" in out
    rows = {line.split()[0]: line for line in out.splitlines() if line.split() and line.split()[0] in MODELS}
    assert set(rows) == set(MODELS)
    # The headline: 4 x M/M/1 mean 50 ms, p99 230 ms; M/M/4 mean 17.5 ms, p99 68.9 ms.
    assert rows["random_split"].split()[-4:] == ["50.00", "34.66", "230.26", "exact"]
    assert "17.46" in rows["shared_queue"] and "68.93" in rows["shared_queue"]
    assert rows["p2c"].endswith("approx")
    assert "p2c: Mitzenmacher mean-field" in out  # the notes follow the table


def test_json_has_model_keys_and_nulls(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "--pods", "4", "--service", "const:10ms", "--rate", "280", "--json")
    assert code == 0
    doc = json.loads(out)
    assert set(doc) == {"inputs", *MODELS}
    assert doc["inputs"]["utilisation"] == pytest.approx(0.7)
    for key in MODELS:
        assert {"model", "mean_s", "p50_s", "p99_s", "utilisation", "p_wait", "mean_wait_s", "exact", "note"} <= set(
            doc[key]
        )
    assert doc["random_split"]["mean_s"] == pytest.approx(
        0.01 + 0.7 / (2 * 100 * 0.3)
    )  # M/D/1 at 70 rps: rho / (2 mu (1 - rho))
    assert doc["random_split"]["p99_s"] is None  # Pollaczek-Khinchine gives the mean only
    assert doc["p2c"]["mean_s"] is None and doc["p2c"]["note"].startswith("no model")


def test_utilisation_sets_the_rate(capsys: pytest.CaptureFixture[str]) -> None:
    _, by_rate, _ = _run(capsys, "--pods", "3", "--slots", "2", "--service", "exp:5ms", "--rate", "900", "--json")
    _, by_util, _ = _run(
        capsys, "--pods", "3", "--slots", "2", "--service", "exp:5ms", "--utilisation", "0.75", "--json"
    )
    a, b = json.loads(by_rate), json.loads(by_util)
    assert b["inputs"]["rate_rps"] == pytest.approx(900)
    for key in MODELS:
        assert a[key]["mean_s"] == pytest.approx(b[key]["mean_s"], rel=1e-9)


def test_constant_arrivals(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(
        capsys, "--pods", "4", "--service", "exp:10ms", "--utilisation", "0.5", "--arrivals", "constant"
    )
    assert code == 0 and "4 x D/M/1" in out and "D/M/4" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--pods", "0", "--service", "exp:10ms", "--rate", "10"], "--pods must be >= 1"),
        (["--pods", "4", "--slots", "0", "--service", "exp:10ms", "--rate", "10"], "--slots must be >= 1"),
        (["--pods", "4", "--service", "exp:10ms", "--rate", "0"], "--rate must be > 0"),
        (["--pods", "4", "--service", "exp:10ms", "--rate", "-3"], "--rate must be > 0"),
        (["--pods", "4", "--service", "exp:10ms", "--rate", "nan"], "--rate must be > 0"),
        (["--pods", "4", "--service", "exp:10ms", "--rate", "400"], "unstable: utilisation >= 1"),
        (["--pods", "4", "--service", "exp:10ms", "--utilisation", "1.2"], "unstable: utilisation >= 1"),
        (["--pods", "4", "--service", "exp:10ms", "--utilisation", "0"], "--utilisation must be > 0"),
        (["--pods", "4", "--service", "gamma:10ms", "--rate", "10"], "--service: expected"),
        (["--pods", "4", "--service", "const:0ms", "--rate", "10"], "mean service time must be > 0"),
    ],
)
def test_bad_input_exits_2_with_one_line(capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    code, out, err = _run(capsys, *args)
    assert code == 2 and out == ""
    assert err.startswith("lbbench theory: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_argparse_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for args in (["--pods", "4", "--service", "exp:10ms"], ["--pods", "x", "--service", "exp:10ms", "--rate", "1"]):
        with pytest.raises(SystemExit) as e:
            main(["theory", *args])
        assert e.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_real_process_unstable_is_a_clear_error() -> None:
    argv = lbbench_argv("theory", "--pods", "2", "--service", "exp:10ms", "--rate", "500")
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert "unstable: utilisation >= 1" in proc.stderr and "Traceback" not in proc.stderr
