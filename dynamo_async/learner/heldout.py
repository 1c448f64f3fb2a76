"""Held-out sampled accuracy of the learner's current weights (docs/design.md section 10).

Every learner rank runs ``evaluate`` when rank 0 orders it (``orders.Evaluate``): with several
ranks the model is FSDP2-sharded, so each forward pass is a collective. Each rank samples its
share of the problems (``sampling.sampled_accuracy``'s ``share``) with the ``hf`` engine over
its sharded model, all ranks decode until every rank's sequences are done, and the counts are
summed over the ranks. The problems, seeds and sampling are those of a single process, so the
figure is the same up to float rounding.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from dynamo_async.evaluation.sampling import EvalResult


def evaluate(trainer) -> dict[str, EvalResult]:
    """Sampled accuracy per held-out set (``trainer.eval_samples`` responses per problem), on
    every rank (the same result on each); {} when evaluations are off."""
    from dynamo_async.data.prompts import eval_problems
    from dynamo_async.evaluation.sampling import sampled_accuracy
    from dynamo_async.rewards import MathVerifyScorer
    from workers.hf_engine import HFEngine

    cfg, info = trainer.cfg, trainer.dist
    if not cfg.trainer.eval_samples:
        return {}
    done = _on_every_rank if info.sharded else None
    engine = HFEngine(
        trainer.model, trainer.tokenizer, cfg, trainer.device, policy_version=trainer.version, all_done=done
    )
    out = {}
    with MathVerifyScorer.for_run(cfg) as scorer:
        for name, problems in eval_problems(cfg.data).items():
            share = (info.rank, info.world) if info.sharded else (0, 1)
            res = sampled_accuracy(
                engine, trainer.tokenizer, scorer, problems, cfg, cfg.trainer.eval_samples, share=share
            )
            out[name] = _summed(res) if info.sharded else res
    trainer.model.train()
    return out


def _on_every_rank(mine: bool) -> bool:
    """``all_done`` for sharded ranks: stop decoding only when every rank's sequences are done."""
    running = torch.tensor([0 if mine else 1], dtype=torch.int64)
    dist.all_reduce(running)
    return int(running) == 0


def _summed(res: EvalResult) -> EvalResult:
    counts = torch.tensor([res.correct, res.total], dtype=torch.int64)
    dist.all_reduce(counts)
    return EvalResult(int(counts[0]), int(counts[1]))
