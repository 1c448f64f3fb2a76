"""Evaluation: held-out sampled accuracy (the learner's before/after check) and the
``dynamo-async eval`` command (pass@k per benchmark, laid out like the paper's Table 1).

    sampling.py    n samples per problem through an engine, scored by math-verify
    pass_at_k.py   the unbiased pass@k estimator
    benchmarks.py  --data specs (JSONL/Parquet files, Hugging Face datasets) -> named benchmarks
    records.py     the resumable per-problem record file next to --out
    table.py       per-benchmark table with the average, and results.json
    runner.py      the command: model, engine, progress bar, resume

Importing the package imports nothing heavy; ``sampling`` and ``runner`` import torch when used.
"""
