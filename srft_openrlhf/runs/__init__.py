"""The run folder: one layout written by both backends and read by the analyses, plots and
result tables.

    RUN_DIR/config.yaml      the resolved config (``srft train --resume RUN_DIR`` reads it)
            backend          "local" or "openrlhf": what ``--resume`` continues the run on
            metrics.jsonl    one JSON line per training step or evaluation (``records``)
            summary.json     wall time, held-out accuracy before / after
            checkpoints/     local: step-N/ and ``latest``; cluster: OpenRLHF's DeepSpeed states
            model/           the final weights, Hugging Face format
            eval/            the local backend's evaluation samples
            tensorboard/ wandb/ openrlhf/ (the cluster launcher's data files)
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from srft_openrlhf.errors import ConfigError

CONFIG_FILE = "config.yaml"
BACKEND_FILE = "backend"
BACKENDS = ("local", "openrlhf")
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CHECKPOINTS = "checkpoints"
MODEL_DIR = "model"
EVAL_DIR = "eval"
TENSORBOARD_DIR = "tensorboard"
# saved checkpoints by step: the local backend's Hugging Face folders (and its eval/step-N.jsonl
# files), and OpenRLHF's HF copies (cluster.save_hf_checkpoints)
LOCAL_CHECKPOINT = re.compile(r"^step-(\d+)$")
OPENRLHF_CHECKPOINT = re.compile(r"^global_step(\d+)_hf$")


@dataclass(frozen=True)
class RunFiles:
    """Where a run keeps its files; the paths under ``openrlhf/`` are the cluster launcher's, the
    rest are written by both backends."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def backend(self) -> Path:  # "local" or "openrlhf"
        return self.root / BACKEND_FILE

    @property
    def train_data(self) -> Path:  # rows {"prompt": rendered text, "label": JSON answer + row}
        return self.root / "openrlhf" / "train.jsonl"

    @property
    def demos(self) -> Path:  # line k: {"demonstrations": [...]} of example k
        return self.root / "openrlhf" / "demos.jsonl"

    @property
    def eval_data(self) -> Path:
        return self.root / "openrlhf" / "eval.jsonl"

    @property
    def reward_func(self) -> Path:  # what --reward.remote_url points to
        return self.root / "openrlhf" / "reward_func.py"

    @property
    def checkpoints(self) -> Path:  # local: step-N/ + latest; OpenRLHF (--ckpt.path): DeepSpeed states
        return self.root / CHECKPOINTS

    @property
    def model(self) -> Path:  # --ckpt.output_dir: the final model, Hugging Face format
        return self.root / MODEL_DIR

    @property
    def summary(self) -> Path:  # wall time; held-out accuracy before / after
        return self.root / SUMMARY_FILE

    @property
    def metrics(self) -> Path:  # one JSON line per training step or evaluation (records.py)
        return self.root / METRICS_FILE

    @property
    def eval(self) -> Path:  # the local backend's evaluation samples
        return self.root / EVAL_DIR

    @property
    def tensorboard(self) -> Path:
        return self.root / TENSORBOARD_DIR


def run_files(output_dir: str | Path) -> RunFiles:
    return RunFiles(Path(output_dir).expanduser().resolve())


def check_new_run(files: RunFiles, resume: bool) -> None:
    """Refuse to start a run in a folder that already holds one, unless it is resumed."""
    if not resume and files.config.exists():
        raise ConfigError(
            f"{files.root} already holds a run; continue it with --resume {files.root} or choose another --output-dir"
        )


def start_run_folder(files: RunFiles, backend: str) -> None:
    """Create the run folder and record which backend the run is on (``--resume`` reads it)."""
    files.root.mkdir(parents=True, exist_ok=True)
    files.backend.write_text(backend + "\n")


def saved_backend(files: RunFiles) -> str:
    """The backend a run folder was made with. Folders from before ``backend`` was recorded: a
    cluster run is the one with the launcher's ``openrlhf/`` data files."""
    if files.backend.is_file():
        backend = files.backend.read_text().strip()
        if backend not in BACKENDS:
            raise ConfigError(f"{files.backend}: {backend!r} is not a backend ({', '.join(BACKENDS)})")
        return backend
    return "openrlhf" if files.train_data.parent.is_dir() else "local"


def config_differences(saved: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two config dicts, with both values."""
    out = []
    for key in sorted(saved.keys() | new.keys()):
        a, b = saved.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def run_record(run_dir: Path) -> dict[str, Any]:
    """A finished run's summary numbers, with its learning rate when its config.yaml is there."""
    summary_path = run_dir / SUMMARY_FILE
    if not summary_path.is_file():
        raise ConfigError(f"{run_dir}: no summary.json (the run is not finished)")
    summary = json.loads(summary_path.read_text())
    record = {k: v for k, v in summary.items() if k.startswith("accuracy_") or k in ("seed", "wall_seconds", "steps")}
    config = run_dir / CONFIG_FILE
    if config.is_file():
        import yaml

        record["lr"] = yaml.safe_load(config.read_text())["train"]["lr"]
    return record


def method_runs(root: Path) -> dict[str, list[Path]]:
    """``{method: [ROOT/method/seed-N, ...]}`` for every finished run (one with summary.json)."""
    runs: dict[str, list[Path]] = {}
    for summary in sorted(Path(root).glob("*/*/summary.json")):
        runs.setdefault(summary.parent.parent.name, []).append(summary.parent)
    if not runs:
        raise ConfigError(f"{root}: no finished runs (expected METHOD/seed-N/summary.json)")
    return runs


def checkpoint_folders(run_dir: Path) -> dict[int, Path]:
    """``{step: folder}`` of the checkpoints under ``RUN_DIR/checkpoints`` in either backend's layout."""
    root = Path(run_dir) / CHECKPOINTS
    found = {}
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        match = LOCAL_CHECKPOINT.match(folder.name) or OPENRLHF_CHECKPOINT.match(folder.name)
        if match and folder.is_dir():
            found[int(match.group(1))] = folder
    return found
