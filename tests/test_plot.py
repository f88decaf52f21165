"""`srft plot`: curves of one or several runs, and the seed-aggregated table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from srft_openrlhf import cli
from srft_openrlhf.errors import ConfigError
from srft_openrlhf.runs import plot

PNG = b"\x89PNG\r\n\x1a\n"


def fake_run(folder: Path, reward: float, rollouts: bool = True, summary: dict | None = None) -> Path:
    folder.mkdir(parents=True)
    lines = [{"step": 0, "eval_accuracy": 0.2}]
    for step in range(1, 6):
        record = {"step": step, "loss": 1.0 / step, "entropy": 0.5, "entropy_demo": 0.4}
        if rollouts:
            record.update(reward_mean=reward * step, response_length=30 + step, entropy_rollout=0.6 - 0.1 * step)
        lines.append(record)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    if summary is not None:
        (folder / "summary.json").write_text(json.dumps({"steps": 5, **summary}))
    return folder


def test_series_picks_rollout_entropy_and_falls_back_for_sft(tmp_path):
    from srft_openrlhf.runs.records import read_metrics

    records = read_metrics(fake_run(tmp_path / "srft", 0.1))
    assert plot.series(records, "reward_mean") == ([1, 2, 3, 4, 5], pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5]))
    assert plot.series(records, "entropy")[1] == pytest.approx([0.5, 0.4, 0.3, 0.2, 0.1])
    sft = read_metrics(fake_run(tmp_path / "sft", 0.0, rollouts=False))
    assert plot.series(sft, "entropy")[1] == [0.5] * 5 and plot.series(sft, "reward_mean") == ([], [])
    # SFT→RL: demonstration entropy in the SFT phase, rollout entropy after the switch
    mixed = sft[:3] + records[3:]
    assert plot.series(mixed, "entropy")[1] == pytest.approx([0.5, 0.5, 0.3, 0.2, 0.1])


def test_series_of_an_openrlhf_run(tmp_path):
    """The OpenRLHF backend's metrics.jsonl: step records with policy_loss, the same series under
    rollout/* and srft/*, and lines of OpenRLHF's periodic evaluation in between."""
    folder = tmp_path / "openrlhf"
    folder.mkdir()
    lines = []
    for step in range(1, 4):
        lines.append(
            {
                "step": step,
                "policy_loss": -0.5,
                "reward": 0.9,  # OpenRLHF's own name: must not be read (demos included on old runs)
                "rollout/reward_mean": 0.1 * step,
                "rollout/response_length_mean": 30.0 + step,
                "srft/entropy_rollout": 0.6 - 0.1 * step,
                "srft/entropy": 0.7,
            }
        )
    lines.insert(2, {"step": 2, "eval_toy_pass1": 0.4, "eval_num_samples": 16.0})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    from srft_openrlhf.runs.records import read_metrics

    records = read_metrics(folder)
    assert plot.series(records, "reward_mean") == ([1, 2, 3], pytest.approx([0.1, 0.2, 0.3]))
    assert plot.series(records, "response_length") == ([1, 2, 3], [31.0, 32.0, 33.0])
    assert plot.series(records, "entropy")[1] == pytest.approx([0.5, 0.4, 0.3])
    out = tmp_path / "curves.png"
    assert cli.main(["plot", str(folder), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG


def test_plot_of_a_run_without_step_records_is_a_user_error(tmp_path):
    folder = tmp_path / "starting"
    folder.mkdir()
    (folder / "metrics.jsonl").write_text(json.dumps({"step": 0, "eval_accuracy": 0.2}) + "\n")
    with pytest.raises(ConfigError, match="no training step records"):
        plot.plot_runs([folder], tmp_path / "x.png")


def test_moving_average_by_hand():
    assert plot.moving_average([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    assert plot.moving_average([1.0, 2.0], 1) == [1.0, 2.0]


def test_plot_writes_png_of_several_runs(tmp_path):
    a = fake_run(tmp_path / "srft" / "seed-1", 0.1)
    b = fake_run(tmp_path / "grpo" / "seed-1", 0.05)
    out = tmp_path / "both.png"
    assert cli.main(["plot", str(a), str(b), "--out", str(out), "--smooth", "2"]) == 0
    assert out.read_bytes()[:8] == PNG and out.stat().st_size > 10_000
    assert plot.run_labels([a, b]) == ["srft/seed-1", "grpo/seed-1"]


def test_plot_of_a_folder_without_metrics_is_a_user_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no metrics.jsonl"):
        plot.main([str(tmp_path / "empty")])


def test_aggregate_table_mean_std_and_curves(tmp_path):
    root = tmp_path / "reproduce"
    accs = {"srft": [0.8, 0.9, 1.0], "grpo": [0.4, 0.5, 0.6], "sft": [0.7, 0.7, 0.7], "srft_no_wrl": [0.6, 0.8, 1.0]}
    for method, values in accs.items():
        for seed, acc in enumerate(values, 1):
            fake_run(
                root / method / f"seed-{seed}",
                acc / 5,
                rollouts=method != "sft",
                summary={
                    "accuracy_before": 0.2,
                    "accuracy_after": acc,
                    "accuracy_chained_carry_before": 0.1,
                    "accuracy_chained_carry_after": acc - 0.1,
                },
            )
    from srft_openrlhf.runs import results

    assert plot.main(["--aggregate", str(root)]) == 0  # curves only
    assert (root / "curves.png").read_bytes()[:8] == PNG
    (root / "curves.png").unlink()
    assert results.main(["report", str(root)]) == 0  # the table (and the same curves)
    table = (root / "results.md").read_text()
    assert "| SRFT | 90.0 ± 10.0 | 80.0 ± 10.0 | 3 |" in table  # stdev of (80, 90, 100) = 10
    assert "| GRPO | 50.0 ± 10.0 | 40.0 ± 10.0 | 3 |" in table
    assert "| SFT | 70.0 ± 0.0 | 60.0 ± 0.0 | 3 |" in table
    assert "| Base model | 20.0 ± 0.0 | 10.0 ± 0.0 | 12 |" in table
    assert "| w/o w_RL | 80.0 ± 20.0 | 70.0 ± 20.0 | 3 |" in table
    assert (
        table.index("*Supervised Fine-Tuning*") < table.index("*Reinforcement Learning*") < table.index("*SFT and RL*")
    )
    assert "Ablations" in table
    assert (root / "curves.png").read_bytes()[:8] == PNG


# ----------------------------------------------------------------------------- lr sweep + final runs


def sweep_root(tmp_path: Path, sweep_eval: str | None = "toy:validation") -> Path:
    """reproduce_toy.sh's layout: sweep/METHOD/lr-LR (seed 42, evaluated on ``sweep_eval``:
    the toy validation split; None: the config's held-out split, as before) and
    final/METHOD/seed-N (new runs at the best lr for every seed, 42 included)."""
    root = tmp_path / "repro"
    sweep = {"srft": {"1e-4": 0.70, "2e-4": 0.85, "5e-4": 0.85}, "grpo": {"1e-4": 0.40, "5e-4": 0.02}}
    for method, accs in sweep.items():
        for lr, acc in accs.items():
            d = fake_run(
                root / "sweep" / method / f"lr-{lr}",
                acc / 5,
                summary={"accuracy_before": 0.3, "accuracy_after": acc, "seed": 42},
            )
            data = f"data:\n  eval: {sweep_eval}\n" if sweep_eval else ""
            (d / "config.yaml").write_text(f"train:\n  lr: {float(lr)}\n{data}")
    for method, lr, accs in (("srft", "2e-4", [0.85, 0.75, 0.80]), ("grpo", "1e-4", [0.40, 0.50, 0.60])):
        for seed, acc in zip((42, 1, 2), accs):
            d = fake_run(
                root / "final" / method / f"seed-{seed}",
                acc / 5,
                summary={"accuracy_before": 0.3, "accuracy_after": acc, "seed": seed},
            )
            (d / "config.yaml").write_text(f"train:\n  lr: {float(lr)}\n")
    return root


def test_best_lr_is_the_most_accurate_and_ties_go_to_the_smaller(tmp_path):
    from srft_openrlhf.runs import results

    root = sweep_root(tmp_path)
    assert results.best_lr(root / "sweep" / "srft") == "2e-4"  # 2e-4 and 5e-4 tie at 85%
    assert results.best_lr(root / "sweep" / "grpo") == "1e-4"
    with pytest.raises(ConfigError, match="no finished lr sweep runs"):
        results.best_lr(tmp_path / "nothing")


def test_report_tables_carry_each_rows_lr_and_the_sweep(tmp_path):
    from srft_openrlhf.runs import results

    root = sweep_root(tmp_path)
    assert results.main(["report", str(root)]) == 0
    table = (root / "results.md").read_text()
    assert "| SRFT | 2e-4 | 80.0 ± 5.0 | 3 |" in table  # mean, stdev of (85, 75, 80)
    assert "| GRPO | 1e-4 | 50.0 ± 10.0 | 3 |" in table
    assert "| SRFT | 70.0 | **85.0** | 85.0 |" in table  # the sweep row, the chosen lr in bold
    assert "| GRPO | 40.0 | – | 2.0 |" not in table and "| GRPO | **40.0** | – | 2.0 |" in table
    assert "**Learning-rate sweep (validation %: 200 problems of the training distribution" in table
    assert "held-out %" not in table
    saved = json.loads((root / "results.json").read_text())
    assert saved["sweep_eval"] == "toy:validation"
    assert [r["accuracy_after"] for r in saved["final"]["srft"]] == [0.75, 0.8, 0.85]  # seed-1, seed-2, seed-42
    assert (root / "curves.png").read_bytes()[:8] == PNG


def test_lr_text_by_hand():
    from srft_openrlhf.runs.results import lr_text

    assert [lr_text(x) for x in (2e-4, 1e-3, 1.5e-4, 1e-6, 0.5)] == ["2e-4", "1e-3", "1.5e-4", "1e-6", "5e-1"]


def test_readme_block_is_generated_from_the_results_file(tmp_path):
    from srft_openrlhf.runs import results

    root = sweep_root(tmp_path)
    results.main(["report", str(root)])
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{results.README_BEGIN}\nold numbers\n{results.README_END}\noutro\n")
    assert results.main(["readme", str(root / "results.json"), str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith(f"{results.README_END}\noutro\n")
    assert "old numbers" not in text and "| SRFT | 2e-4 | 80.0 ± 5.0 | 3 |" in text
    (tmp_path / "plain.md").write_text("no markers")
    with pytest.raises(SystemExit):
        results.main(["readme", str(root / "results.json"), str(tmp_path / "plain.md")])


def test_sweep_table_names_the_set_its_lr_was_chosen_on(tmp_path):
    """A sweep evaluated on the held-out split (the configs' default, as reproduce_toy.sh did
    before the validation split) says so; a results file that records where it ran says that."""
    from srft_openrlhf.runs import results

    root = sweep_root(tmp_path, sweep_eval=None)
    collected = results.collect(root)
    assert collected["sweep_eval"] == "toy"
    table = results.markdown(collected)
    assert "**Learning-rate sweep (held-out %; one seed;" in table and "validation" not in table
    collected |= {"command": "JOBS=2 bash scripts/reproduce_toy.sh out", "commit": "abc1234"}
    collected["cpu"] = {"model": "Test CPU", "simd": "sse2 avx2"}
    where = "On Test CPU (AVX2, no AVX-512); commit abc1234; command: `JOBS=2 bash scripts/reproduce_toy.sh out`."
    assert results.markdown(collected) == f"{table}\n{where}\n"


def test_committed_toy_tables_are_the_committed_results():
    """README's toy-results block holds what ``results readme`` makes of docs/results/toy.json,
    whose sweep chose each lr on the validation split, never on the held-out problems."""
    from srft_openrlhf.runs import results

    root = Path(__file__).resolve().parents[1]
    committed = json.loads((root / "docs" / "results" / "toy.json").read_text())
    assert committed["sweep_eval"] == "toy:validation"
    for method, runs in committed["final"].items():
        best = float(results.best_of(committed["sweep"][method]))
        assert [r["lr"] for r in runs] == [best] * len(runs) and len(runs) == 3
    text = (root / "README.md").read_text()
    block = text.split(results.README_BEGIN + "\n", 1)[1].split(results.README_END, 1)[0]
    assert block.split("\n", 1)[1] == results.markdown(committed)


def test_cluster_block_is_generated_from_the_reproduce_results(tmp_path):
    """Two results.json of scripts/reproduce_toy_openrlhf.sh, numbers chosen by hand: the means over
    seeds of the step phases and the wall time are computed here, not by the code under test."""
    from srft_openrlhf.runs import results

    def result(generator: str, after: list[float], generation: list[float]) -> Path:
        runs = {
            seed: {
                "accuracy_before": 0.25,
                "accuracy_after": a,
                "wall_seconds": 100.0 + 10 * i,
                "step_seconds": {"generation": g, "experience": 0.1, "training": 0.4, "weight_sync": 0.2, "wait": 0.05},
            }
            for i, (seed, a, g) in enumerate(zip(("42", "1"), after, generation))
        }
        data = {
            "generator": generator,
            "command": f"bash scripts/reproduce_toy_openrlhf.sh out-{generator}",
            "commit": "abc1234",
            "cpu": {"model": "Test CPU", "simd": "avx2 avx512f"},
            "held_out_before_percent": 25.0,
            "held_out_after_percent_mean": 100 * sum(after) / 2,
            "held_out_after_percent_std": 1.23,
            "runs": runs,
        }
        path = tmp_path / f"{generator}.json"
        path.write_text(json.dumps(data))
        return path

    doc = tmp_path / "cluster.md"
    doc.write_text("intro\n<!-- cluster-results:begin -->\nold\n<!-- cluster-results:end -->\noutro\n")
    hf, vllm = result("hf", [0.5, 0.6], [0.3, 0.5]), result("vllm", [0.7, 0.75], [0.6, 0.8])
    assert results.main(["cluster", str(doc), str(hf), str(vllm)]) == 0
    text = doc.read_text()
    assert text.startswith("intro\n") and text.endswith("<!-- cluster-results:end -->\noutro\n") and "old" not in text
    assert "| hf | 25.0 | 50.0 / 60.0 (seeds 42, 1) | 55.0 ± 1.2 | 0.40 | 0.10 | 0.40 | 0.20 | 0.05 | 105 |" in text
    assert "| vllm | 25.0 | 70.0 / 75.0 (seeds 42, 1) | 72.5 ± 1.2 | 0.70 |" in text
    assert "Test CPU (AVX-512)" in text and "`bash scripts/reproduce_toy_openrlhf.sh out-vllm`" in text


@pytest.mark.parametrize("doc", ["README.md", "docs/cluster.md"])
def test_committed_cluster_tables_are_the_committed_results(doc):
    """The cluster-results blocks hold what ``results cluster`` makes of the committed JSON files
    (a number edited by hand, or a results file rerun without regenerating the docs, fails)."""
    from srft_openrlhf.runs import results

    root = Path(__file__).resolve().parents[1]
    files = [root / "docs" / "results" / f for f in ("toy_openrlhf_cpu.json", "toy_openrlhf_cpu_vllm.json")]
    table = results.cluster_markdown([json.loads(f.read_text()) for f in files])
    text = (root / doc).read_text()
    block = text.split("<!-- cluster-results:begin -->\n", 1)[1].split("<!-- cluster-results:end -->", 1)[0]
    assert block.split("\n", 1)[1] == table


BASE_RESULT = {
    "command": "build it",
    "commit": "abc1234",
    "cpu": {"model": "Test CPU", "simd": "avx avx2 fma"},
    "torch": "2.13.0+cpu",
    "pretrain_steps": 600,
    "heldout_problems": 400,
    "sampled_prompts": 512,
    "stats": {"greedy_heldout": 0.3175, "greedy_heldout_chained_carry": 0.0, "sampled_train": 0.345703125},
    "other_builds": [{"sampled_train": 0.354, "where": "a fresh clone"}],
}


def test_base_results_table_and_band(tmp_path):
    from srft_openrlhf.runs import results

    text = results.base_markdown(BASE_RESULT)
    assert "| greedy, 400 held-out problems | 31.8% |" in text
    assert "| one sample at temperature 1, 512 training prompts | 34.6% |" in text
    on = "On Test CPU (AVX2, no AVX-512), torch 2.13.0+cpu; commit abc1234; the command and how it was measured: "
    assert on + "`docs/results/toy_base.json`." in text
    assert "34.6–35.4% over the 2 recorded builds (here; 35.4% on a fresh clone)." in text
    doc = tmp_path / "doc.md"
    doc.write_text("head\n<!-- base-results:begin -->\nold\n<!-- base-results:end -->\ntail\n")
    path = tmp_path / "base.json"
    path.write_text(json.dumps(BASE_RESULT))
    assert results.main(["base-results", str(doc), str(path)]) == 0
    assert doc.read_text().startswith("head\n<!-- base-results:begin -->\n<!-- generated from ")
    filled = doc.read_text()
    assert results.base_markdown(BASE_RESULT, str(path)) in filled and on + f"`{path}`." in filled
    assert "old" not in filled and filled.endswith("end -->\ntail\n")


def kernel_rows() -> list[dict]:
    def row(method, mode, ms, extra, grad=None):
        r = {"method": method, "mode": mode, "N": 4096, "V": 152064, "dtype": "bfloat16", "time_ms": ms,
             "times_ms": [ms] * 5, "peak_extra_bytes": extra}  # fmt: skip
        return r | ({"grad_bytes": grad} if grad else {})

    return [
        row("naive", "fwd", 1000.0, 10_000),
        row("naive", "fwdbwd", 2000.0, 20_000, grad=1_000),
        row("chunked", "fwd", 210.0, 130),
        row("chunked", "fwdbwd", 840.0, 2_760, grad=1_000),
        row("chunked_inplace", "fwdbwd", 900.0, 260, grad=1_000),
    ]


def test_kernel_results_sentences(tmp_path):
    from srft_openrlhf.runs import results

    result = {"cpu": {"model": "Test CPU", "simd": "avx2 avx512f"}, "threads": 2, "torch": "2.13.0+cpu",
              "command": "python benchmarks/bench_kernels.py", "note": "loaded", "results": kernel_rows()}  # fmt: skip
    text = results.kernel_markdown(result)
    assert text.startswith("Measured on Test CPU (AVX-512), 2 threads, torch 2.13.0+cpu (N = 4,096, V = 152,064, ")
    assert "bf16 logits; median of 5 runs; loaded): forward 0.21× the time and 0.013× the extra memory" in text
    assert "forward+backward 0.42× the time, 0.138× the memory (0.013× with the in-place backward" in text
    assert "the gradient tensor itself is 0.050×" in text
    result["results"] = [r for r in kernel_rows() if r["method"] != "chunked_inplace"]
    with pytest.raises(ConfigError, match="one measured chunked_inplace fwdbwd row, found 0"):
        results.kernel_markdown(result)


def committed_block(doc: str, block: str) -> str:
    text = (Path(__file__).resolve().parents[1] / doc).read_text()
    return text.split(f"<!-- {block}:begin -->\n", 1)[1].split(f"<!-- {block}:end -->", 1)[0].split("\n", 1)[1]


def committed_result(name: str) -> dict:
    return json.loads((Path(__file__).resolve().parents[1] / "docs" / "results" / name).read_text())


def test_committed_base_results_are_the_committed_results():
    """README's base-model table is what ``results base-results`` makes of docs/results/toy_base.json
    (a number edited by hand, or the base rebuilt without regenerating the README, fails)."""
    from srft_openrlhf.runs import results

    assert committed_block("README.md", "base-results") == results.base_markdown(committed_result("toy_base.json"))


def test_committed_kernel_results_are_the_committed_results():
    """README's kernel ratios are what ``results kernel-results`` makes of docs/results/kernels_cpu.json."""
    from srft_openrlhf.runs import results

    assert committed_block("README.md", "kernel-results") == results.kernel_markdown(
        committed_result("kernels_cpu.json")
    )


def step_result() -> dict:
    """bench_cluster_step.py's JSON for two lengths; OpenRLHF's step did not fit at the second."""

    def row(method, length, mib, seconds):
        times = [seconds, 1.5 * seconds]
        return {
            "method": method,
            "T": length,
            "time_s": seconds,
            "times_s": times,
            "peak_activation_bytes": mib * 2**20,
        }

    fits = {m: {"bytes_per_token": kib * 1024, "intercept_bytes": 100 * 2**20, "max_residual": 0.02 * i}
            for i, (m, kib) in enumerate((("openrlhf_grpo", 2000.0), ("openrlhf_logits", 600.0),
                                          ("cluster_fused", 12.0), ("local_fused", 11.5)))}  # fmt: skip
    return {
        "cpu": {"model": "Test CPU", "simd": "avx2 avx512f"}, "threads": 2, "torch": "2.13.0+cpu",
        "commit": "abc1234", "command": "python benchmarks/bench_cluster_step.py",
        "load_average": {"before": [3.0, 2.0, 1.0], "after": [5.25, 4.0, 3.0]},
        "model": {"vocab": 151936, "hidden": 64, "layers": 2, "dtype": "float32"},
        "results": [row("openrlhf_grpo", 1024, 2100, 4.0), {"method": "openrlhf_grpo", "T": 8192, "skipped": "big"},
                    row("openrlhf_logits", 1024, 700, 3.0), row("openrlhf_logits", 8192, 4900, 30.0),
                    row("cluster_fused", 1024, 112, 4.4), row("cluster_fused", 8192, 196, 40.0),
                    row("local_fused", 1024, 111, 4.2), row("local_fused", 8192, 190, 39.0)],
        "linear_fits": fits,
        "vs_openrlhf_grpo": [{"method": "cluster_fused", "T": 1024, "memory": 112 / 2100, "time": 1.1},
                             {"method": "cluster_fused", "T": 8192, "memory": 0.012, "extrapolated": True}],
    }  # fmt: skip


def test_cluster_step_table_and_ratios(tmp_path):
    from srft_openrlhf.runs import results

    text = results.cluster_step_markdown(step_result())
    head = (
        "| one step, T tokens | T = 1,024 | T = 8,192 | per token | one 9,216-token sample |\n|---|---|---|---|---|\n"
    )
    assert text.startswith(head)
    assert (
        "| OpenRLHF's GRPO actor step (its `Actor`'s fp32 logits, `PolicyLoss`) | 2,100 MiB, 4.0 s | did not fit |"
        in text
    )
    # the sample: 100 MiB + 9,216 tokens × 12 KiB = 208 MiB
    assert "| SRFT cluster step: fused LM head | 112 MiB, 4.4 s | 196 MiB, 40.0 s | 12.0 KiB | 0.20 GiB |" in text
    assert "holds 0.012× the peak activation memory of OpenRLHF's GRPO step at T = 8,192 (GRPO's peak from its " in text
    assert (
        "line: at T = 8,192 it did not fit into this machine's memory) and takes 1.10× its time at T = 1,024." in text
    )
    assert "the worst point is 6% off its line" in text
    assert "On Test CPU (AVX-512), 2 threads, torch 2.13.0+cpu, load average 3.0 before and 5.2 after" in text
    assert "two timed runs of one case differ by up to 1.5×" in text
    result = step_result()
    del result["linear_fits"]["local_fused"]
    with pytest.raises(ConfigError, match="no line through the lengths of local_fused"):
        results.cluster_step_markdown(result)
    doc, path = tmp_path / "doc.md", tmp_path / "step.json"
    doc.write_text("head\n<!-- cluster-step:begin -->\nold\n<!-- cluster-step:end -->\ntail\n")
    path.write_text(json.dumps(step_result()))
    assert results.main(["cluster-step", str(doc), str(path)]) == 0
    assert results.cluster_step_markdown(step_result()) in doc.read_text() and "\nold\n" not in doc.read_text()


@pytest.mark.parametrize("doc", ["README.md", "docs/cluster.md"])
def test_committed_cluster_step_results_are_the_committed_results(doc):
    """The cluster step's memory table in README and docs/cluster.md is what ``results cluster-step``
    makes of docs/results/cluster_step_cpu.json."""
    from srft_openrlhf.runs import results

    assert committed_block(doc, "cluster-step") == results.cluster_step_markdown(
        committed_result("cluster_step_cpu.json")
    )


@pytest.mark.parametrize(
    "name", ["toy_base.json", "kernels_cpu.json", "toy_quickstart_other_cpus.json", "cluster_step_cpu.json"]
)
def test_committed_result_files_record_the_cpu(name):
    """Results depend on the CPU (issue 17): these files say which one, model and SIMD flags."""
    result = committed_result(name)
    machines = [result["cpu"]] if "cpu" in result else [m["cpu"] for m in result["machines"]]
    assert machines and all(cpu["model"] and "avx" in cpu["simd"] for cpu in machines)


def test_quickstart_cpus_table_and_band():
    from srft_openrlhf.runs import results

    machine = {"cpu": {"model": "Test CPU", "simd": "avx avx2"}, "commit": "abc1234", "accuracy_before": 0.3175}
    result = {"machines": [machine | {"accuracy_after": {"42": 0.8525, "1": 0.9}},
                           machine | {"accuracy_after": {"42": 0.7, "1": 0.725}}]}  # fmt: skip
    text = results.cpus_markdown(result)
    assert "| Test CPU (AVX2, no AVX-512) | abc1234 | 31.8 | 85.25 / 90.0 (seeds 42, 1) | 87.6 |" in text
    assert "| 70.0 / 72.5 (seeds 42, 1) | 71.2 |" in text
    assert "Band: 70.0–90.0% held-out after training, 4 runs on 2 machines." in text


def test_committed_quickstart_cpus_are_the_committed_results():
    """README's per-machine quick-start table is what ``results quickstart-cpus`` makes of
    docs/results/toy_quickstart_other_cpus.json."""
    from srft_openrlhf.runs import results

    assert committed_block("README.md", "quickstart-cpus") == results.cpus_markdown(
        committed_result("toy_quickstart_other_cpus.json")
    )
