"""A rate at or above the pods' capacity is named before the run starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from lbbench.config.parse import load_config
from lbbench.run.experiment import overloaded_rates

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_utilisation_at_or_above_one_is_overload(tmp_path: Path) -> None:
    text = (CONFIGS / "quickstart.toml").read_text().replace("utilisation = 0.7", "utilisation = [0.7, 1.2]")
    cfg = tmp_path / "over.toml"
    cfg.write_text(text)
    over = overloaded_rates(load_config(cfg))
    assert len(over) == 1 and over[0][0] == pytest.approx(480.0) and over[0][1] == pytest.approx(1.2)
    assert overloaded_rates(load_config(CONFIGS / "quickstart.toml")) == []


def test_warnings_are_said_even_with_quiet(capsys: pytest.CaptureFixture[str]) -> None:
    from lbbench.run.live import LiveView

    live = LiveView(quiet=True)
    live.say("progress")
    live.warn("could not write the report")
    out, err = capsys.readouterr()
    assert "progress" not in out + err
    assert err == "lbbench run: warning: could not write the report\n"
