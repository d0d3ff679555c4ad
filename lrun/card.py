"""`lrun card`: a shipped model's card (Hugging Face's format: YAML metadata, then Markdown) from its eval.json
and PROVENANCE, so a model directory can be published as it is (`huggingface-cli upload`, or a copy).

The metadata's `model-index` holds the evaluation as rl-zoo's cards do (task reinforcement-learning, the env
and setting as the dataset, `mean_reward` as "mean +/- std"), plus the Learning to Run figures: mean distance,
fall rate with its 95 % interval, speed. Every number comes from eval.json; the text comes from PROVENANCE.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from lrun.checkpoint import LATEST, load_checkpoint
from lrun.env import ENV_ID

CARD_NAME = "README.md"
PROVENANCE_NAME = "PROVENANCE"
#: A PROVENANCE field starts at column 0 with `name:` and continues on indented lines.
FIELD = re.compile(r"^([a-z][a-z ]*[a-z]):\s+(.*)$")


class CardError(ValueError):
    """A model directory a card cannot be written for (no eval.json, no PROVENANCE, no checkpoint)."""


def parse_provenance(text: str) -> tuple[str, dict[str, str]]:
    """(the opening paragraphs, {field: text}) of a PROVENANCE file; continuation lines keep their indentation
    beyond the fields' column so commands stay readable."""
    summary: list[str] = []
    fields: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        match = FIELD.match(line)
        if match and not line.startswith(" "):
            current = fields.setdefault(match.group(1), [])
            current.append(match.group(2))
        elif current is not None and line.strip():
            # continuation lines are indented to the fields' text (13 columns): keep any indentation beyond it
            current.append(line[13:].rstrip() if line.startswith(" " * 13) else line.strip())
        elif current is None:
            summary.append(line)
    return "\n".join(summary).strip(), {key: "\n".join(lines) for key, lines in fields.items()}


def card_metrics(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The model-index metrics of an eval.json summary (rounded as printed: metres to the centimetre)."""
    low, high = summary["fall_rate_ci95"]
    return [
        {"type": "mean_reward", "name": "mean_reward", "value": f"{summary['mean_task_return']:.2f}"},
        {
            "type": "mean_distance",
            "name": "mean distance (m)",
            "value": f"{summary['mean_distance_m']:.2f} +/- {summary['std_distance_m']:.2f}",
        },
        {"type": "median_distance", "name": "median distance (m)", "value": round(summary["median_distance_m"], 2)},
        {"type": "fall_rate", "name": "fall rate", "value": round(summary["fall_rate"], 4)},
        {"type": "fall_rate_ci95", "name": "fall rate, 95 % Wilson interval", "value": [round(low, 4), round(high, 4)]},
        {"type": "mean_speed", "name": "mean speed (m/s)", "value": round(summary["mean_speed_m_s"], 2)},
        {"type": "episodes", "name": "evaluation episodes", "value": int(summary["episodes"])},
    ]


def dataset_name(settings: dict[str, Any]) -> str:
    """The evaluation's task in words: env, setting or difficulty/obstacles, physics, policy mode."""
    setting = settings.get("setting") or ""
    task = f"setting {setting}" if setting else f"difficulty {settings['difficulty']}"
    if not setting and settings["difficulty"]:
        task += f", {settings['obstacles']} obstacles"
    mode = "deterministic" if settings.get("deterministic", True) else "stochastic"
    return f"{ENV_ID} {task}, {settings['physics']} physics, {mode} policy"


def yaml_value(value: Any) -> str:
    """A YAML scalar or flow sequence (JSON is valid YAML flow style, so strings are quoted exactly)."""
    return json.dumps(value)


def front_matter(name: str, algorithm: str, evaluation: dict[str, Any]) -> str:
    """The card's YAML metadata block."""
    lines = [
        "---",
        "library_name: lrun",
        "tags:",
        *(
            f"- {tag}"
            for tag in (
                "reinforcement-learning",
                "deep-reinforcement-learning",
                "opensim",
                "learning-to-run",
                "musculoskeletal",
                algorithm.lower(),
            )
        ),
        "model-index:",
        f"- name: {yaml_value(name)}",
        "  results:",
        "  - task:",
        "      type: reinforcement-learning",
        "      name: reinforcement-learning",
        "    dataset:",
        f"      name: {yaml_value(dataset_name(evaluation['settings']))}",
        f"      type: {ENV_ID}",
        "    metrics:",
    ]
    for metric in card_metrics(evaluation["summary"]):
        lines += [
            f"    - type: {metric['type']}",
            f"      name: {yaml_value(metric['name'])}",
            f"      value: {yaml_value(metric['value'])}",
            "      verified: false",
        ]
    return "\n".join([*lines, "---"])


def model_card(model_dir: str | Path) -> str:
    """The card of a model directory (checkpoint.pt, eval.json, PROVENANCE; a GIF or MP4 if there is one)."""
    model_dir = Path(model_dir)
    for required in (LATEST, "eval.json", PROVENANCE_NAME):
        if not (model_dir / required).is_file():
            hint = " (lrun eval MODEL --out MODEL_DIR writes it)" if required == "eval.json" else ""
            raise CardError(f"{model_dir}: no {required}{hint}")
    evaluation = json.loads((model_dir / "eval.json").read_text())
    provenance = (model_dir / PROVENANCE_NAME).read_text()
    summary_text, fields = parse_provenance(provenance)
    if not fields:
        raise CardError(f"{model_dir}/{PROVENANCE_NAME}: no 'name:  text' fields (command, commit, env steps, ...)")
    payload = load_checkpoint(model_dir / LATEST)
    algorithm = payload["config"]["run"].get("algorithm", "ppo").upper()
    name = f"lrun-{model_dir.name}"
    s, e = evaluation["settings"], evaluation["summary"]
    low, high = e["fall_rate_ci95"]
    videos = sorted(p.name for p in model_dir.iterdir() if p.suffix in (".gif", ".mp4"))
    parts = [
        front_matter(name, algorithm, evaluation),
        f"# {name}: {algorithm} on {ENV_ID} (NIPS 2017 Learning to Run)",
        summary_text,
    ]
    if videos:
        parts.append(f"![an evaluation episode]({videos[0]})")
    parts += [
        "## Use it",
        "```python\nimport lrun\n\n"
        f'agent = lrun.load("{model_dir.name}")   # this directory (its checkpoint.pt)\n'
        "env = agent.make_env()          # the env it was trained on\n"
        "obs, info = env.reset(seed=0)\n"
        "terminated = truncated = False\n"
        "while not (terminated or truncated):\n"
        "    obs, reward, terminated, truncated, info = env.step(agent.act(obs))\n```",
        "## Evaluation",
        f"`lrun eval`, {e['episodes']} episodes: {dataset_name(s)}, seed {s['seed']} "
        f"(eval.json, episodes.csv).\n\n"
        "| mean distance | median | fall rate (95 % CI) | mean speed | mean task return |\n"
        "|---|---|---|---|---|\n"
        f"| {e['mean_distance_m']:.2f} m (std {e['std_distance_m']:.2f}) | {e['median_distance_m']:.2f} m "
        f"| {100 * e['fall_rate']:.1f} % ({100 * low:.1f}-{100 * high:.1f} %) | {e['mean_speed_m_s']:.2f} m/s "
        f"| {e['mean_task_return']:.2f} |",
    ]
    if "command" in fields:
        parts += ["## Reproduce it", f"```sh\n{fields['command']}\n```"]
    details = provenance.strip().replace(summary_text, "", 1).strip("\n")  # the fields, as written
    if details:
        parts += ["## Provenance", f"```\n{details}\n```"]
    parts.append("Written by `lrun card` from this directory's eval.json and PROVENANCE: edit those, not this file.")
    return "\n\n".join(parts) + "\n"


def write_card(model_dir: str | Path) -> Path:
    """Write MODEL_DIR/README.md; returns its path."""
    path = Path(model_dir) / CARD_NAME
    path.write_text(model_card(model_dir))
    return path
