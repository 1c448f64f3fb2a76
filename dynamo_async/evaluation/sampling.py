"""Held-out sampled accuracy of a policy: n samples per problem, scored by math-verify.

Used by the learner before and after training (the demo's "accuracy rising") and by
``dynamo-async eval``. Sampling uses the run's temperature and top-p with fixed seeds, so
two evaluations of the same weights give the same answers.
"""

from __future__ import annotations

from dataclasses import dataclass

from dynamo_async.data.problems import Problem
from dynamo_async.data.prompts import prompt_ids
from workers.engine import GenRequest


@dataclass(frozen=True)
class EvalResult:
    correct: int
    total: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0

    def __str__(self) -> str:
        return f"{self.correct}/{self.total} = {100 * self.accuracy:.1f}%"


def sampled_accuracy(
    engine,
    tokenizer,
    scorer,
    problems: list[Problem],
    cfg,
    samples: int = 1,
    batch_size: int = 32,
    seed: int = 12345,
    share: tuple[int, int] = (0, 1),
) -> EvalResult:
    """Generate ``samples`` responses per problem with ``engine`` and count the correct ones.

    ``share`` = (rank, ranks): sample only jobs rank, rank + ranks, ... of the full list (each
    with the seed it has there, so the shares add up to the single-process evaluation), in as
    many engine calls as the largest share needs: a shorter share repeats its last job, uncounted
    (sharded learner ranks run every forward pass together)."""
    rank, ranks = share
    jobs = [(i, p, k) for i, (p, k) in enumerate((p, k) for p in problems for k in range(samples))]
    mine = jobs[rank::ranks]
    longest = -(-len(jobs) // ranks)
    padded = mine + [mine[-1] if mine else jobs[0]] * (longest - len(mine))
    correct = 0
    for start in range(0, len(padded), batch_size):
        chunk = padded[start : start + batch_size]
        reqs = [GenRequest(prompt_ids(tokenizer, p.problem, cfg), seed + 1000 * i + k) for i, p, k in chunk]
        results = engine.generate(reqs)
        texts = [tokenizer.decode(r.token_ids.tolist(), skip_special_tokens=True) for r in results]
        futures = [scorer.submit(t, p.answer, p.problem, p.source, p.fields) for t, (_, p, _) in zip(texts, chunk)]
        scores = [f.result() for f in futures]
        correct += sum(s.acc for j, s in enumerate(scores, start) if j < len(mine))
    return EvalResult(correct, len(mine))
