"""``srft analyze trajectory``: checkpoints as points in probability space (paper Sec. 3.1.2,
Fig. 3, Appendix E).

A model M is placed by its distances to k references R_1..R_k (Eq. A11):
d_R(M) = (d_R1(M), ..., d_Rk(M)). Each reference brings a fixed set of responses to the same
prompts: a *model reference* its own generations (made once, cached), a *text reference* fixed
texts (``demos``: the data's demonstrations; ``toy:solver``: the toy's correct solutions).
Every checkpoint of every run is then scored on all reference responses, and each run becomes
a path; its points are coloured by held-out accuracy where the run folder recorded it.

On the toy (``--data toy``) the default references are the base model, the flawed teacher
(its demonstrations) and a perfect solver (correct worked solutions), on training problems
of which half have a chained carry (where the teacher errs half of the time), so that the
two text references differ on enough tokens to be told apart.

Outputs in ``--out``: ``trajectory.json`` (references, and per run each point's step,
checkpoint, accuracy and distances, overall and per benchmark or toy problem group) and
``trajectory.png`` (every pair of references as a 2-D projection, arrows along the steps).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from srft_openrlhf.analysis import plots, scoring, sources
from srft_openrlhf.analysis.scoring import Response
from srft_openrlhf.errors import ConfigError

TOY_REFERENCES = ("base=toy", f"teacher={sources.DEMOS}", f"solver={sources.TOY_SOLVER}")


# ----------------------------------------------------------------------------- the distance


def reference_distance(model_logprobs: Sequence[np.ndarray], reference_logprobs: Sequence[np.ndarray] | None) -> float:
    """d_R(M) of Appendix E (Eq. A11): how far M's probabilities of R's response tokens are from R's.

        d_R(M) = 1/|Y_R| Σ_{y ∈ Y_R} 1/|y| Σ_t | p_R(y_t | x, y_<t) − p_M(y_t | x, y_<t) |

    Y_R: the reference's responses (one or more per prompt); per response the mean over its
    tokens, then the mean over responses ("for each response ... then aggregate over all
    responses", App. E), so long responses do not outweigh short ones. For a text reference
    (``reference_logprobs`` None) p_R(y_t) = 1: a fixed text is what a model emitting exactly
    that text assigns, so d_R(M) = mean (1 − p_M(y_t)), the probability mass M puts off R's texts.

    Why absolute differences of probabilities (not of log-probabilities, not a KL): they are
    bounded in [0, 1], so a token M finds near-impossible counts at most 1 instead of
    dominating the mean; they need only the probabilities of the observed tokens, which is all
    a text reference has; they are the |Δp| of Fig. 2, so both analyses use one unit; and
    d_R(M) = 0 exactly when M assigns R's probabilities to all of R's tokens (d_R(R) = 0).
    """
    if not model_logprobs:
        raise ValueError("reference_distance: no responses")
    per_response = []
    for i, lp in enumerate(model_logprobs):
        own = 1.0 if reference_logprobs is None else np.exp(reference_logprobs[i])
        per_response.append(float(np.abs(own - np.exp(lp)).mean()))
    return float(np.mean(per_response))


def grouped_distances(model_logprobs, reference_logprobs, groups: Sequence[str]) -> dict[str, float]:
    """``reference_distance`` over the responses of each group (benchmark, or toy problem group)."""
    out = {}
    for g in dict.fromkeys(groups):
        idx = [i for i, x in enumerate(groups) if x == g]
        ref = None if reference_logprobs is None else [reference_logprobs[i] for i in idx]
        out[g] = reference_distance([model_logprobs[i] for i in idx], ref)
    return out


# ----------------------------------------------------------------------------- references and points


@dataclass
class Reference:
    name: str
    source: str  # what the user wrote after NAME=
    model: sources.ModelRef | None  # None for a text reference
    responses: list[Response] = field(default_factory=list)
    own_logprobs: list[np.ndarray] | None = None  # the model reference's own scores of its responses
    groups: list[str] = field(default_factory=list)


def parse_references(values: Sequence[str]) -> list[Reference]:
    refs = []
    for value in values:
        name, spec = sources.split_name(value)
        if spec in sources.TEXT_SOURCES:
            refs.append(Reference(name or spec, spec, None))
        else:
            model = sources.resolve_model(value, "--refs")
            refs.append(Reference(model.name, spec, model))
    names = [r.name for r in refs]
    if len(set(names)) < len(names):
        raise ConfigError(f"--refs: names must differ (got {', '.join(names)}); write NAME=MODEL")
    if len(refs) < 2:
        raise ConfigError("--refs: give at least two references (a position needs two coordinates)")
    return refs


@dataclass
class Point:
    run: str
    step: int
    model: sources.ModelRef
    accuracy: float | None
    initial: bool = False


def run_folders(values: Sequence[str]) -> dict[str, tuple[Path, list[sources.Checkpoint]]]:
    """The checkpoints of each run folder (``NAME=RUN_DIR`` names it), checked before any work."""
    runs: dict[str, tuple[Path, list[sources.Checkpoint]]] = {}
    for value in values:
        name, spec = sources.split_name(value)
        run_dir = Path(spec).expanduser()
        name = name or run_dir.name
        if name in runs:
            raise ConfigError(f"--runs: two runs are named {name!r}; write NAME=RUN_DIR")
        ckpts = sources.run_checkpoints(run_dir)
        if not ckpts:
            raise ConfigError(
                f"--runs {value}: no checkpoints under {run_dir / 'checkpoints'} (a trajectory needs "
                "them: train with train.save_every > 0 and keep them with train.keep_checkpoints)"
            )
        runs[name] = (run_dir, ckpts)
    return runs


def run_points(runs: dict[str, tuple[Path, list[sources.Checkpoint]]], include_initial: bool) -> dict[str, list[Point]]:
    """Every checkpoint of each run as a point, by step; with ``include_initial`` the model the
    run started from as step 0; accuracy where the run folder recorded it."""
    points: dict[str, list[Point]] = {}
    for name, (run_dir, ckpts) in runs.items():
        if include_initial:
            ckpts = [sources.initial_model(run_dir), *ckpts]
        accuracy = sources.run_accuracy(run_dir)
        points[name] = [
            Point(
                name,
                c.step,
                sources.ModelRef(f"{name}@{c.step}", c.path, f"{run_dir}@{c.step}"),
                accuracy.get(c.step),
                c.initial,
            )
            for c in ckpts
        ]
    return points


def response_groups(prompts: Sequence[sources.Prompt], responses: Sequence[Response]) -> list[str]:
    """Benchmark of each response; on the toy alone, its problem group (chained_carry / other)."""
    by_key = {(p.benchmark, p.id): p for p in prompts}
    if {p.benchmark for p in prompts} == {sources.TOY}:
        from srft_openrlhf.data import toy

        return [toy.problem_group(by_key[(r.benchmark, r.prompt_id)].question) for r in responses]
    return [r.benchmark for r in responses]


# ----------------------------------------------------------------------------- the command


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--refs",
        nargs="+",
        metavar="NAME=SOURCE",
        help="references: NAME=MODEL (model folder, run folder, RUN_DIR@STEP, 'toy'), NAME=demos (the "
        "data's demonstrations) or NAME=toy:solver; default with --data toy: " + " ".join(TOY_REFERENCES),
    )
    p.add_argument(
        "--runs",
        nargs="+",
        default=[],
        metavar="[NAME=]RUN_DIR",
        help="run folders: each checkpoint is a point, each run a path",
    )
    p.add_argument(
        "--models", nargs="+", default=[], metavar="[NAME=]MODEL", help="single models to place as points as well"
    )
    p.add_argument(
        "--no-initial",
        dest="initial",
        action="store_false",
        help="leave out each run's step 0 (the model.path it started from)",
    )
    p.add_argument("--samples", type=int, default=1, help="responses per prompt of each model reference (default 1)")


def run(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    cache = Path(args.cache) if args.cache else out / "cache"
    if not args.data:
        raise ConfigError("--data is required (toy, a .json/.jsonl/.parquet file or a benchmark name)")
    toy_task = sources.fill_task_defaults(args)
    if not args.refs and args.data != [sources.TOY]:
        raise ConfigError("--refs is required unless --data toy (which defaults to " + " ".join(TOY_REFERENCES) + ")")
    if not args.runs and not args.models:
        raise ConfigError("nothing to place: give --runs RUN_DIR ... and/or --models MODEL ...")
    folders = run_folders(args.runs)  # cheap checks first: resolving 'toy' may build the toy base model
    singles = [sources.resolve_model(m, "--models") for m in args.models]
    refs = parse_references(args.refs or TOY_REFERENCES)
    runs = run_points(folders, args.initial)
    points = [p for pts in runs.values() for p in pts] + [Point(m.name, 0, m, None) for m in singles]
    ref_models = [r.model for r in refs if r.model is not None]
    everyone = list({m.path: m for m in ref_models + [p.model for p in points]}.values())
    prompts = sources.command_prompts(args, everyone[0], toy_task, toy_split="train", toy_balanced=toy_task)
    texts = {r.name: sources.reference_texts(r.source, prompts) for r in refs if r.model is None}
    probes = [p.text for p in prompts[:16]] + [t for ts in texts.values() for t in ts[:8]]
    tokenizer = sources.shared_tokenizer(everyone, probes, toy_task)
    score = sources.scoring_options(args, tokenizer, cache)

    for r in refs:  # reference responses, made once and cached
        if r.model is None:
            r.responses = scoring.text_responses(tokenizer, prompts, texts[r.name])
        else:
            options = sources.generation_options(args, cache)
            r.responses = scoring.generate_responses(r.model, tokenizer, prompts, **options)
            r.own_logprobs = scoring.score_responses(r.model, r.responses, **score)
        r.groups = response_groups(prompts, r.responses)

    def position(model: sources.ModelRef) -> dict:
        """Distances of one model to every reference (one scoring pass over all their responses)."""
        everything = [resp for r in refs for resp in r.responses]
        lp = scoring.score_responses(model, everything, **score)
        result, by_group, start = {}, {}, 0
        for r in refs:
            mine = lp[start : start + len(r.responses)]
            start += len(r.responses)
            result[r.name] = reference_distance(mine, r.own_logprobs)
            by_group[r.name] = grouped_distances(mine, r.own_logprobs, r.groups)
        return {"distances": result, "group_distances": by_group}

    report: dict = {
        "references": {
            r.name: {
                "kind": "text" if r.model is None else "model",
                "source": r.source,
                "path": str(r.model.path) if r.model else None,
                "responses": len(r.responses),
                "tokens": int(sum(len(x.token_ids) for x in r.responses)),
            }
            for r in refs
        },
        "distance": "d_R(M) = mean over R's responses of the token mean of |p_R(y_t) - p_M(y_t)|; "
        "p_R = 1 for a text reference (Appendix E, Eq. A11)",
        "settings": {
            k: getattr(args, k, None)
            for k in ("data", "limit", "template", "temperature", "max_new_tokens", "samples", "seed", "dtype")
        },
        "reference_points": {r.name: position(r.model) for r in refs if r.model is not None},
        "runs": {},
        "models": {},
    }
    for name, pts in runs.items():
        report["runs"][name] = {
            "points": [
                {
                    "step": p.step,
                    "checkpoint": str(p.model.path),
                    "initial": p.initial,
                    "accuracy": p.accuracy,
                    **position(p.model),
                }
                for p in pts
            ]
        }
    for m in singles:
        report["models"][m.name] = {"path": str(m.path), **position(m)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "trajectory.json").write_text(json.dumps(report, indent=1) + "\n")
    plots.plot_trajectory(report, out / "trajectory.png")
    print_summary(report, out)
    return report


def print_summary(report: dict, out: Path) -> None:
    names = list(report["references"])
    print("distances to " + ", ".join(names) + " (Appendix E):")
    for run_name, r in report["runs"].items():
        for p in r["points"]:
            acc = f"  acc {p['accuracy']:.1%}" if p["accuracy"] is not None else ""
            print(
                f"  {run_name:<16} step {p['step']:>6}  "
                + "  ".join(f"{n} {p['distances'][n]:.4f}" for n in names)
                + acc
            )
    for name, m in report["models"].items():
        print(f"  {name:<28} " + "  ".join(f"{n} {m['distances'][n]:.4f}" for n in names))
    print(f"wrote {out / 'trajectory.json'} and {out / 'trajectory.png'}")
