"""Standalone evaluation harness: the paper's eight benchmarks (Table 2), avg@k / pass@k, resumable.

``python -m evaluation --model PATH --out DIR`` (see ``evaluation.__main__``);
``python -m evaluation.grade FILE.jsonl`` re-grades generations made elsewhere;
``python -m evaluation.compare DIR...`` tabulates and plots several runs.
Grading reuses ``srft_openrlhf.reward``; importing this package loads neither vLLM nor torch.
"""
