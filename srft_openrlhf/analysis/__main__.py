"""``srft analyze`` (also ``python -m srft_openrlhf.analysis``): the paper's analyses.

    srft analyze token-shift --base BASE --models M1 [M2 ...] --data toy|FILE|BENCH --out DIR
    srft analyze trajectory [--refs NAME=MODEL ...] --runs RUN_DIR ... --data toy|FILE --out DIR

``token-shift``: paper Sec. 3.1.1, Fig. 2 / A1 (``analysis.token_shift``); ``trajectory``:
Sec. 3.1.2, Fig. 3 / Appendix E (``analysis.trajectory``). Responses and token scores are
cached under ``DIR/cache`` (or ``--cache``): running the command again reuses them and an
interrupted run resumes.
"""

from __future__ import annotations

import argparse
import sys

from srft_openrlhf.errors import UserError


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data",
        nargs="+",
        metavar="SOURCE",
        help="prompts: 'toy', local .json/.jsonl/.parquet files ([NAME=]FILE, one benchmark each) "
        "or benchmark names of the evaluation harness (from the hub)",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--limit", type=int, default=128, help="problems per --data entry (default 128)")
    p.add_argument(
        "--template",
        choices=("srft", "qwen_math", "none", "chat"),
        help="prompt template (default: none for the toy, as its training config, else srft)",
    )
    p.add_argument("--prompt-key", default="prompt", help="question field of --data files (dotted paths allowed)")
    p.add_argument("--answer-key", default="answer", help="answer field of --data files")
    p.add_argument("--demo-key", default="demonstration", help="demonstration field of --data files")
    p.add_argument(
        "--tokenizer",
        choices=("auto", "toy"),
        default="auto",
        help="'toy': the toy task's tokenizer (implied by --data toy); auto: the models' own, checked to agree",
    )
    p.add_argument(
        "--temperature", type=float, default=0.0, help="sampling temperature of generated responses (default 0: greedy)"
    )
    p.add_argument("--max-new-tokens", type=int, help="response length limit (default 48 on the toy, else 1024)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--batch-size", type=int, default=32, help="prompts per generation batch")
    p.add_argument("--max-batch-tokens", type=int, default=16384, help="padded tokens per scoring batch")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    p.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", "bf16", "fp16", "fp32"),
        help="model dtype (auto: bf16 on GPU, fp32 on CPU)",
    )
    p.add_argument("--cache", help="cache folder of responses and scores (default OUT/cache)")


def parser() -> argparse.ArgumentParser:
    from srft_openrlhf.analysis import token_shift, trajectory

    p = argparse.ArgumentParser(
        prog="srft analyze", description="The SRFT paper's analyses for your own models and runs."
    )
    sub = p.add_subparsers(dest="command", required=True)
    commands = {
        "token-shift": (token_shift, "token probability change vs the base model (Fig. 2 / A1)"),
        "trajectory": (trajectory, "checkpoints as points by their distances to references (Fig. 3 / App. E)"),
    }
    for name, (module, summary) in commands.items():
        command = sub.add_parser(
            name, help=summary, description=module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        module.add_arguments(command)
        add_common(command)
    return p


def main(argv: list[str] | None = None) -> int:
    from srft_openrlhf.analysis import token_shift, trajectory

    args = parser().parse_args(argv)
    command = {"token-shift": token_shift.run, "trajectory": trajectory.run}[args.command]
    command(args)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as e:
        print(f"srft analyze: error: {e}", file=sys.stderr)
        sys.exit(2)
