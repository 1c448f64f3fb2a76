"""A few decoded samples of each learner step, for people to read (``metrics.log_samples``).

The pick is deterministic per step: one sample from each of the batch's first groups in batch
order, the even-numbered groups giving their highest-reward sample and the odd-numbered ones
their lowest (ties: the lowest sample index), so a step shows both what the policy gets right
and what it gets wrong. Asked for more samples than the batch has groups, further rounds take
each group's next sample in the same best/worst alternation. Each pick becomes one row of the
Arrow store's ``samples`` table (``buffer/tables.py``: the step, the prompt id, the group's
rollouts, reward, acc and the decoded prompt and response); the metric sinks log the same rows
(``sinks.py``: TensorBoard text, a W&B table).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from buffer.batch import LearnerBatch, ReadyGroup
from dynamo_async.sample import SampleRecord

COLUMNS = ("step", "prompt_id", "rollouts", "reward", "acc", "prompt", "response")  # what a person reads first


def _alternating(ranked: list[SampleRecord], low_first: bool) -> Iterator[SampleRecord]:
    """``ranked`` (best first) as best, worst, 2nd best, 2nd worst, ... (or worst first)."""
    lo, hi = 0, len(ranked) - 1
    take_low = low_first
    while lo <= hi:
        if take_low:
            yield ranked[hi]
            hi -= 1
        else:
            yield ranked[lo]
            lo += 1
        take_low = not take_low


def pick(batch: LearnerBatch, k: int) -> list[tuple[ReadyGroup, SampleRecord]]:
    """``k`` (group, sample) pairs of ``batch`` (fewer if it has fewer samples), as the module
    docstring says."""
    orders = []
    for i, group in enumerate(batch.groups):
        ranked = sorted(group.samples, key=lambda s: (-s.reward, s.sample_index))
        orders.append(list(_alternating(ranked, low_first=i % 2 == 1)))
    out: list[tuple[ReadyGroup, SampleRecord]] = []
    for rank in range(max((len(o) for o in orders), default=0)):
        for group, order in zip(batch.groups, orders):
            if len(out) == k:
                return out
            if rank < len(order):
                out.append((group, order[rank]))
    return out


def sample_rows(batch: LearnerBatch, k: int, decode: Callable[[np.ndarray], str]) -> list[dict]:
    """The ``samples`` table rows of ``batch``'s ``k`` picks; ``decode`` turns token ids into text."""
    return [
        {
            "step": batch.step,
            "policy_version": batch.policy_version,
            "prompt_id": group.prompt_id,
            "group_id": group.group_id,
            "sample_index": sample.sample_index,
            "rollouts": len(group.samples),
            "reward": float(sample.reward),
            "acc": int(sample.acc),
            "finish_reason": sample.finish_reason,
            "num_tokens": sample.num_tokens,
            "prompt": decode(np.asarray(group.prompt_token_ids)),
            "response": decode(sample.token_array),
            "answer": group.answer,
        }
        for group, sample in pick(batch, k)
    ]


def tokenizer_decode(tokenizer) -> Callable[[np.ndarray], str]:
    """Token ids -> text with a Hugging Face tokenizer, special tokens left out."""
    return lambda ids: tokenizer.decode(ids.tolist(), skip_special_tokens=True)


def markdown(rows: list[dict]) -> str:
    """The rows as Markdown for TensorBoard's text tab: a heading line per sample, then its prompt
    and response as indented code blocks (kept verbatim, whatever characters they hold)."""
    parts = []
    for r in rows:
        parts.append(
            f"**step {r['step']}** · prompt `{r['prompt_id']}` · rollouts {r['rollouts']} · "
            f"reward {r['reward']:.3g} · acc {r['acc']} · {r['num_tokens']} tokens ({r['finish_reason']}) · "
            f"answer `{r['answer']}`"
        )
        for name in ("prompt", "response"):
            body = "\n".join("    " + line for line in (r[name] or "(empty)").splitlines() or [""])
            parts.append(f"{name}:\n\n{body}")
    return "\n\n".join(parts)
