"""Model cards (`lrun card`): every shipped model's card is current and its numbers are its eval.json's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import LRUN, run

from lrun.card import CARD_NAME, model_card, parse_provenance

ROOT = Path(__file__).resolve().parent.parent
EVALUATED = sorted(p.parent for p in (ROOT / "models").glob("*/eval.json"))


def front_matter(card: str) -> dict:
    yaml = pytest.importorskip("yaml")
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


@pytest.mark.parametrize("model_dir", EVALUATED, ids=[p.name for p in EVALUATED])
def test_a_shipped_model_s_card_is_current_and_quotes_its_evaluation(model_dir):
    card = (model_dir / CARD_NAME).read_text()
    assert card == model_card(model_dir), f"run: lrun card {model_dir.relative_to(ROOT)}"
    summary = json.loads((model_dir / "eval.json").read_text())["summary"]
    (entry,) = front_matter(card)["model-index"]
    (result,) = entry["results"]
    metrics = {m["type"]: m["value"] for m in result["metrics"]}
    assert result["task"]["type"] == "reinforcement-learning" and result["dataset"]["type"] == "lrun/Run-v0"
    assert float(metrics["mean_reward"]) == round(summary["mean_task_return"], 2)
    mean, std = (float(x) for x in metrics["mean_distance"].split(" +/- "))
    assert (mean, std) == (round(summary["mean_distance_m"], 2), round(summary["std_distance_m"], 2))
    assert metrics["median_distance"] == round(summary["median_distance_m"], 2)
    assert metrics["fall_rate"] == round(summary["fall_rate"], 4)
    assert metrics["fall_rate_ci95"] == [round(x, 4) for x in summary["fall_rate_ci95"]]
    assert metrics["mean_speed"] == round(summary["mean_speed_m_s"], 2)
    assert metrics["episodes"] == summary["episodes"]
    assert f"{summary['mean_distance_m']:.2f} m" in card  # the text's table too


def test_provenance_fields_keep_their_text_and_indentation():
    summary, fields = parse_provenance(
        "models/x: a policy.\nIt walks.\n\ncommand:     lrun train a.toml\n                 --set b=1\nseed:        3\n"
    )
    assert summary == "models/x: a policy.\nIt walks."
    assert fields == {"command": "lrun train a.toml\n    --set b=1", "seed": "3"}


def test_lrun_card_writes_cards_and_refuses_a_directory_without_an_evaluation(tmp_path):
    good = tmp_path / "walk"
    shutil.copytree(ROOT / "models" / "walk", good)
    (good / CARD_NAME).unlink()
    bad = tmp_path / "untested"
    shutil.copytree(ROOT / "models" / "walk", bad)
    (bad / CARD_NAME).unlink()
    (bad / "eval.json").unlink()
    result = run([LRUN, "card", str(good), str(bad)])
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert f"{bad}: no eval.json" in result.stderr
    assert not (good / CARD_NAME).exists()  # nothing written before every directory passed
    result = run([LRUN, "card", str(good)])
    assert result.returncode == 0, result.stderr
    assert (good / CARD_NAME).read_text().startswith("---\nlibrary_name: lrun\n")
