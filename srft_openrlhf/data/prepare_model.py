"""``srft prepare-model SRC DST --rope-theta 40000 --max-position-embeddings 16384``.

The paper (like LUFFY) trains Qwen2.5-Math-7B with RoPE theta raised from 10,000 to 40,000
and the context extended from 4,096 to 16,384 tokens. This command writes a copy of a local
model folder with those config.json edits; SRC is never modified.

Files are hard-linked when SRC and DST share a file system (a 7B model is 15 GB), else
copied; ``--copy`` always copies. config.json is always written anew, so the edit never
reaches SRC through a link. The RoPE base is edited wherever the source config keeps it:
top-level ``rope_theta`` (transformers 4) and/or ``rope_parameters`` / ``rope_scaling``
dicts (transformers 5); if none is present, a top-level ``rope_theta`` is added, which
transformers 5 still reads.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from srft_openrlhf.errors import ConfigError, DataError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="srft prepare-model",
        description="Copy a local model folder to DST with an edited config.json "
        "(the paper uses --rope-theta 40000 --max-position-embeddings 16384 for Qwen2.5-Math-7B).",
    )
    p.add_argument("src", metavar="SRC", help="local model folder (with config.json); never modified")
    p.add_argument("dst", metavar="DST", help="new folder to write")
    p.add_argument("--rope-theta", type=float, help="new RoPE base (rope_theta)")
    p.add_argument("--max-position-embeddings", type=int, help="new max_position_embeddings")
    p.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    p.add_argument(
        "--copy",
        action="store_true",
        help="copy every file instead of hard-linking (hard links share storage with SRC)",
    )
    return p


def edit_config(config: dict[str, Any], rope_theta: float | None, max_position_embeddings: int | None) -> list[str]:
    """Apply the edits to a config.json dict in place; return one line per changed key."""
    changes: list[str] = []

    def set_key(holder: dict[str, Any], key: str, value: Any, label: str) -> None:
        changes.append(f"{label}: {holder.get(key, '(absent)')} -> {value}")
        holder[key] = value

    if rope_theta is not None:
        nested = [
            k
            for k in ("rope_parameters", "rope_scaling")
            if isinstance(config.get(k), dict) and "rope_theta" in config[k]
        ]
        for k in nested:
            set_key(config[k], "rope_theta", rope_theta, f"{k}.rope_theta")
        if "rope_theta" in config or not nested:
            set_key(config, "rope_theta", rope_theta, "rope_theta")
    if max_position_embeddings is not None:
        set_key(config, "max_position_embeddings", max_position_embeddings, "max_position_embeddings")
    return changes


def _check_args(src: Path, dst: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Validate the command line; return SRC's config.json."""
    if args.rope_theta is None and args.max_position_embeddings is None:
        raise ConfigError("nothing to change: give --rope-theta and/or --max-position-embeddings")
    if args.rope_theta is not None and not args.rope_theta > 0:
        raise ConfigError(f"--rope-theta must be positive, got {args.rope_theta}")
    if args.max_position_embeddings is not None and args.max_position_embeddings < 1:
        raise ConfigError(f"--max-position-embeddings must be positive, got {args.max_position_embeddings}")
    if not src.is_dir():
        raise DataError(
            f"model folder not found: {src} (SRC must be a local folder; download a hub "
            "model first, e.g. `huggingface-cli download NAME --local-dir DIR`)"
        )
    config_path = src / "config.json"
    if not config_path.is_file():
        raise DataError(f"{src} is not a model folder: it has no config.json")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{config_path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(config, dict):
        raise DataError(f"{config_path}: expected a JSON object")
    src_r, dst_r = src.resolve(), dst.resolve()
    if dst_r == src_r or src_r in dst_r.parents or dst_r in src_r.parents:
        raise ConfigError(f"DST {dst} and SRC {src} must not contain each other (SRC is never modified)")
    if dst.exists() and not args.overwrite:
        raise ConfigError(f"{dst} already exists (choose another DST or pass --overwrite)")
    return config


def _link_or_copy(src: Path, dst: Path, copy: bool) -> bool:
    """Hard-link ``src`` (following symlinks, as in a hub cache snapshot) to ``dst``; copy if that fails.
    Returns whether it linked."""
    if not copy:
        try:
            os.link(src, dst)
            return True
        except OSError:  # another file system, or links not supported: copy instead
            pass
    shutil.copy2(src, dst)
    return False


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    src, dst = Path(args.src).expanduser(), Path(args.dst).expanduser()
    config = _check_args(src, dst, args)
    changes = edit_config(config, args.rope_theta, args.max_position_embeddings)

    # Build next to DST and rename at the end, so a failed copy never looks like a model.
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        files = linked = 0
        for path in sorted(src.rglob("*")):
            rel = path.relative_to(src)
            if path.is_dir():
                (tmp / rel).mkdir(parents=True, exist_ok=True)
            elif rel != Path("config.json"):
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                linked += _link_or_copy(path, tmp / rel, args.copy)
                files += 1
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        if dst.is_dir() and not dst.is_symlink():  # only reachable with --overwrite
            shutil.rmtree(dst)
        elif dst.exists() or dst.is_symlink():
            dst.unlink()
        tmp.rename(dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    print(f"wrote {dst} from {src}: {files + 1} files ({linked} hard-linked, config.json rewritten)")
    for line in changes:
        print(f"  config.json {line}")
    sliding = config.get("sliding_window")
    if (
        config.get("use_sliding_window")
        and isinstance(sliding, int)
        and args.max_position_embeddings
        and sliding < args.max_position_embeddings
    ):
        print(f"  note: use_sliding_window is on with sliding_window={sliding}; attention beyond it stays windowed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
