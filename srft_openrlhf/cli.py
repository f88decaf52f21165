"""``srft`` command line: train | eval | plot | prepare-model.

Each subcommand imports its backend lazily so that ``srft --help`` and ``import
srft_openrlhf`` stay light (no ray, vllm, deepspeed or openrlhf at import time).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from srft_openrlhf.config import load_config
from srft_openrlhf.errors import ConfigError, UserError
from srft_openrlhf.runs import BACKENDS, config_differences, run_files, saved_backend

# subcommand -> (module, function taking argv, one-line help); each owns its argparse.
_DELEGATED = {
    "eval": ("evaluation.__main__", "main", "evaluate a model on the paper's benchmarks"),
    "analyze": (
        "srft_openrlhf.analysis.__main__",
        "main",
        "the paper's analyses: token-shift (Fig. 2) and trajectory (Fig. 3)",
    ),
    "plot": ("srft_openrlhf.runs.plot", "main", "plot reward / length / entropy curves of runs"),
    "prepare-model": (
        "srft_openrlhf.data.prepare_model",
        "main",
        "copy a model folder with an edited rope_theta / max_position_embeddings",
    ),
}


# Config keys a --resume may change. The local backend can extend a run (train.steps); the cluster
# one cannot: its data file holds train.steps batches and its schedule was set for them.
RESUME_MAY_CHANGE = {"local": ("logging.", "train.steps:"), "openrlhf": ("logging.",)}


def train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="srft train",
        description="Train with SRFT or a baseline preset (local backend: one machine, CPU or one "
        "GPU; openrlhf backend: Ray cluster).",
    )
    p.add_argument("--config", help="YAML config (see configs/)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config key, e.g. --set train.lr=1e-5 (repeatable)",
    )
    p.add_argument("--algo", help="shorthand for --set loss.preset=NAME (srft, grpo, luffy, sft, ...)")
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        help="local (default): this machine; openrlhf: OpenRLHF's Ray trainer. A --resume continues on the "
        "run's own backend",
    )
    p.add_argument("--output-dir", help="run folder (shorthand for --set logging.output_dir=DIR)")
    p.add_argument(
        "--resume", metavar="RUN_DIR", help="continue a run from its latest checkpoint (uses the run's saved config)"
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the resolved config (and, for openrlhf, the launch command); start nothing",
    )
    return p


def train_main(argv: list[str]) -> int:
    args = train_parser().parse_args(argv)
    overrides = list(args.overrides)
    if args.algo:
        overrides.insert(0, f"loss.preset={args.algo}")
    if args.output_dir:
        overrides.append(f"logging.output_dir={args.output_dir}")
    backend = args.backend or "local"
    if args.resume:
        files = run_files(args.resume)
        if not files.config.is_file():
            raise ConfigError(f"--resume {args.resume}: no config.yaml there (is it a run folder?)")
        backend = saved_backend(files)
        if args.backend and args.backend != backend:
            raise ConfigError(
                f"--resume {args.resume}: the run was made with --backend {backend}, not {args.backend}; "
                f"it continues on {backend} (drop --backend)"
            )
        saved = load_config(str(files.config), [])
        cfg = load_config(args.config or str(files.config), [*overrides, f"logging.output_dir={args.resume}"])
        changed = [
            c
            for c in config_differences(saved.to_dict(), cfg.to_dict())
            if not c.startswith(RESUME_MAY_CHANGE[backend])
        ]
        if changed:
            raise ConfigError(
                f"--resume {args.resume}: a resumed run continues with its saved config, and this one differs in "
                f"{'; '.join(changed)} (start a new run with --output-dir to change them)"
            )
    else:
        cfg = load_config(args.config, overrides)
    if backend == "openrlhf":
        from srft_openrlhf.openrlhf.launcher import run as run_backend
    else:
        from srft_openrlhf.local.trainer import run as run_backend
    return int(run_backend(cfg, resume=bool(args.resume), dry_run=args.dry_run) or 0)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"train": "train with SRFT or a baseline", **{k: v[2] for k, v in _DELEGATED.items()}}
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: srft COMMAND [ARGS]\n\ncommands:")
        for name, text in commands.items():
            print(f"  {name:<14} {text}")
        print("\n`srft COMMAND --help` for a command's options.")
        return 0
    cmd, rest = argv[0], argv[1:]
    try:
        if cmd == "train":
            return train_main(rest)
        if cmd in _DELEGATED:
            module, func, _ = _DELEGATED[cmd]
            return int(getattr(importlib.import_module(module), func)(rest) or 0)
    except UserError as e:
        print(f"srft {cmd}: error: {e}", file=sys.stderr)
        return 2
    print(f"srft: unknown command '{cmd}' (known: {', '.join(commands)})", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
