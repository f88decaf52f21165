"""Run logging: ``metrics.jsonl`` (always), a console progress bar with ETA, and optionally
Weights & Biases and TensorBoard.

``metrics.jsonl`` is written and read by ``srft_openrlhf.runs.records`` (the cluster backend
writes the same file): training records ``{"step": k, ...}`` (k = optimizer steps done) and
evaluation records ``{"step": k, "eval_accuracy": ...}``.

wandb is imported only when ``logging.wandb_project`` is set; it runs offline unless
``WANDB_API_KEY`` is set, and a resumed run continues the same wandb run (its id is kept
in ``RUN_DIR/wandb_id``; offline, each session writes its own folder
``RUN_DIR/wandb/offline-run-<time>-<id>``, and ``wandb sync`` uploads the folders of one id
in start order into that one run). TensorBoard (``logging.tensorboard: true``) writes to
``RUN_DIR/tensorboard`` through ``torch.utils.tensorboard``.
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from srft_openrlhf.config import LoggingConfig, SRFTConfig
from srft_openrlhf.errors import ConfigError
from srft_openrlhf.runs import run_files
from srft_openrlhf.runs.records import append_record, drop_records_after


def check_logging(cfg: LoggingConfig) -> None:
    """Requested sinks must be installed (checked before any expensive start-up)."""
    if cfg.wandb_project and importlib.util.find_spec("wandb") is None:
        raise ConfigError(
            "logging.wandb_project is set but the 'wandb' package is not installed; "
            "pip install wandb, or unset logging.wandb_project"
        )
    if cfg.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError(
            "logging.tensorboard is true but the 'tensorboard' package is not installed; "
            "pip install tensorboard, or set logging.tensorboard=false"
        )


class MetricsLogger:
    """Writes every record to metrics.jsonl (+ wandb / TensorBoard) and drives the progress bar."""

    def __init__(self, run_dir: Path, cfg: SRFTConfig, start_step: int) -> None:
        from tqdm.auto import tqdm

        self.run_dir = Path(run_dir)
        self.path = run_files(self.run_dir).metrics
        self.log_every = cfg.logging.log_every
        drop_records_after(self.path, start_step)
        # wandb first: wandb.init prints a few lines to the console that would split the bar
        self.wandb = self._start_wandb(cfg) if cfg.logging.wandb_project else None
        self.bar = tqdm(
            total=cfg.train.steps,
            initial=start_step,
            desc="srft train",
            unit="step",
            dynamic_ncols=True,
            file=sys.stderr,
            mininterval=1.0,
        )
        self.tensorboard = None
        if cfg.logging.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=start_step + 1)

    def _start_wandb(self, cfg: SRFTConfig):
        import wandb

        id_file = self.run_dir / "wandb_id"
        run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:12]
        id_file.write_text(run_id + "\n")
        mode: Literal["online", "offline"] = "online" if os.environ.get("WANDB_API_KEY") else "offline"
        if mode == "offline":
            # init(mode="offline") covers the run only: wandb 0.31's process-wide analytics still
            # read the global settings and try to reach the W&B server from a background thread
            wandb.setup(settings=wandb.Settings(mode="offline"))
        return wandb.init(
            project=cfg.logging.wandb_project,
            name=cfg.logging.wandb_run_name,
            id=run_id,
            resume="allow",
            dir=str(self.run_dir),
            mode=mode,
            config=cfg.to_dict(),
        )

    def log(self, step: int, record: Mapping[str, float | str], force: bool = False) -> None:
        """One record for ``step`` (written when step % log_every == 0, or ``force``)."""
        if not force and step % self.log_every:
            return
        append_record(self.path, {"step": step, "time": round(time.time(), 3), **record})
        numbers = {k: v for k, v in record.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        if self.wandb is not None:
            self.wandb.log(numbers, step=step)
        if self.tensorboard is not None:
            for key, value in numbers.items():
                self.tensorboard.add_scalar(key, value, step)

    def advance(self, postfix: dict[str, float]) -> None:
        self.bar.set_postfix({k: f"{v:.3g}" for k, v in postfix.items()}, refresh=False)
        self.bar.update(1)

    def message(self, text: str) -> None:
        """A console line that does not break the progress bar."""
        self.bar.write(text)

    def close(self, failed: bool = False) -> None:
        """``failed``: the run stopped on an error (or was interrupted); wandb marks it failed."""
        self.bar.close()
        if self.wandb is not None:
            self.wandb.finish(exit_code=1 if failed else 0)
        if self.tensorboard is not None:
            self.tensorboard.close()
