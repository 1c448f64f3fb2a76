"""The model side of a learner step: tensors, proximal pass, mini-batch updates.

Separate from the process around it (``loop.py``: buffer, sockets, weight sync), so that a
recorded batch can be replayed through exactly the same code from a checkpoint
(``replay_step``).
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from buffer.batch import LearnerBatch
from dynamo_async.algo.objective import PolicyBatch, assemble
from dynamo_async.config.schema import RunConfig
from dynamo_async.errors import UsageError
from dynamo_async.learner import checkpoint, shared_prompt
from dynamo_async.learner.batching import MiniBatch, Packing, check_split, mini_batches
from dynamo_async.learner.distributed import DistInfo, equalize, full_weights, max_over_ranks, shard_model
from dynamo_async.learner.micro import MicroBatch, RowInputs
from dynamo_async.learner.optim import clip_and_step, finite_on_every_rank, make_optimizer
from dynamo_async.learner.precision import MasterWeights


class Trainer:
    """Model, tokenizer, float32 masters, optimizer and schedule; the model is loaded from
    ``cfg.model.name`` or from ``checkpoint_dir``. The model computes in ``model.compute_dtype``
    while the optimizer updates float32 masters (``precision.py``)."""

    def __init__(
        self, cfg: RunConfig, device: str = "cpu", checkpoint_dir: Path | None = None, dist_info: DistInfo = DistInfo()
    ):
        from dynamo_async.models import load_model, load_tokenizer
        from dynamo_async.models.loader import DTYPES

        self.cfg, self.device, self.dist = cfg, device, dist_info
        self.objective = assemble(cfg)  # the run's components, built once (docs/design.md section 4.6)
        source = str(checkpoint_dir / "model") if checkpoint_dir else cfg.model.name
        self.tokenizer = load_tokenizer(source)
        self.model = load_model(source, "float32", device).train()  # the float32 masters
        if cfg.model.gradient_checkpointing:
            enable_checkpointing(self.model)
        self.cache_kw = self._shared_prompt_keyword()  # probed before sharding and casting
        shared, packs = self.cache_kw is not None, shared_prompt.packs_tails(self.model)
        self.packing = Packing.of(cfg, shared, self.objective.skips_zero_advantage, packs)
        self.compute_dtype = DTYPES[cfg.model.compute_dtype]
        if dist_info.sharded:  # checkpoint shards are re-laid out at load: any number of ranks resumes
            check_split(cfg, dist_info.world)  # refused at start, not at the first step
            shard_model(self.model, self.compute_dtype)
        self.masters = MasterWeights(self.model, self.compute_dtype, sharded=dist_info.sharded)
        self.opt, self.sched = make_optimizer(self.masters.parameters(), cfg.optim)
        self.generator = torch.Generator().manual_seed(cfg.trainer.seed)
        self.step, self.version = 0, 0
        if checkpoint_dir is not None:
            state = checkpoint.load_trainer_state(checkpoint_dir, self)
            self.step, self.version = state.step, state.version
            self.generator.manual_seed(cfg.trainer.seed + state.step)

    def train_on(self, batch: LearnerBatch) -> dict:
        """Prepare, proximal pass, update: the training half of one learner step."""
        minis = self.prepare(batch)
        proximal = self.proximal_pass(minis)
        forwarded = self._proximal_runs()
        return {**self.update(minis), **proximal, **_layout_metrics(minis, forwarded, self.cfg.optim.ppo_epochs)}

    def prepare(self, batch: LearnerBatch) -> list[MiniBatch]:
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        minis = mini_batches(batch, self.cfg, pad, self.packing, self.dist.rank, self.dist.world)
        for mb in (m for mini in minis for m in mini.all()):
            mb.to(self.device)
        return equalize(minis, self.dist)

    @torch.no_grad()
    def proximal_pass(self, minis: list[MiniBatch]) -> dict:
        """Log-probs of the current weights (decoupled PPO), the entropy and vocabulary sums the
        objective needs, and the mini-batch normalisers, over every sample (skipped ones too).
        With ``off_policy.mode: behavior`` the worker's log-probs are the old policy, and the pass
        runs only when a component needs the mini-batch's statistics. Returns the step's
        ``entropy`` over every sample's response tokens."""
        behavior = self.cfg.off_policy.mode == "behavior"
        h_sum = h_count = 0.0
        for mini in minis:
            for mb in mini.all():
                mb.logp_old = mb.logp_behavior if behavior else None
            if self._proximal_runs():
                h, n = self._statistics(mini, set_old=not behavior)
                h_sum, h_count = h_sum + h, h_count + n
        return {"entropy": h_sum / h_count} if h_count else {}

    @torch.no_grad()
    def _statistics(self, mini: MiniBatch, set_old: bool) -> tuple[float, float]:
        """One no-grad forward of ``mini`` with the current weights: its entropy, vocabulary sums
        and mini-batch normalisers (``set_old``: also its proximal log-probs). Returns the
        entropy's sum and token count."""
        collect = "mini_batch_stats" in self.objective.needs
        h_sum = h_count = 0.0
        normalisers: dict[str, float] = {}
        for mb in mini.all():
            stats = self.objective.proximal_stats(self._logits(mb), mb.targets, mask=mb.mask)
            if set_old:
                mb.logp_old = stats.logp
            mb.entropy, mb.vocab_sum = stats.entropy, stats.vocab_sum
            if stats.entropy is not None:
                h_sum, h_count = h_sum + float((stats.entropy * mb.mask).sum()), h_count + float(mb.mask.sum())
            if collect:
                for k, v in self.objective.mini_batch_stats(stats, self._policy_batch(mb)).items():
                    normalisers[k] = max(normalisers.get(k, -float("inf")), v)
        if collect:
            mini.normalisers = max_over_ranks(normalisers, self.dist)
            for mb in mini.all():
                mb.normalisers = mini.normalisers
        return h_sum, h_count

    def _refreshes(self) -> bool:
        """Whether later mini-batches get statistics of their own weights (``optim.refresh_stats``)."""
        needs = self.objective.needs
        return self.cfg.optim.refresh_stats and bool(needs & {"entropy", "vocab_sum", "mini_batch_stats"})

    def update(self, minis: list[MiniBatch]) -> dict:
        """One optimizer step per mini-batch (``ppo_epochs`` passes) over its ``update``
        micro-batches; the schedule steps once. Logged: ``loss``, the mean over mini-batches of
        each one's loss (the sum over its micro-batches, whose normalisers are the mini-batch's),
        ``lr``, the learning rate these updates used, and ``nonfinite_skipped``, the optimizer
        steps left out because their loss or gradient norm was not finite (``clip_and_step``;
        docs/design.md section 8), each named in a warning on stderr."""
        sums: Counter = Counter()
        counts: Counter = Counter()
        hists: dict[str, np.ndarray] = {}  # token histograms (beta factors): summed, not averaged
        norms, losses = [], []
        skipped = 0
        lr = self.opt.param_groups[0]["lr"]
        for epoch in range(self.cfg.optim.ppo_epochs):
            for j, mini in enumerate(minis):
                if (epoch or j) and self._refreshes():  # the weights moved since the proximal pass
                    self._statistics(mini, set_old=False)
                mini_loss = 0.0
                for mb in mini.update:
                    loss, m = self.objective(self._logits(mb), self._policy_batch(mb), self.generator)
                    (loss * self.dist.world).backward()  # FSDP averages over ranks; the loss is a sum
                    mini_loss += float(loss.detach())
                    if mb.extra.get("padding"):
                        continue
                    for k, v in m.items():
                        if isinstance(v, np.ndarray):
                            hists[k] = hists[k] + v if k in hists else v
                            continue
                        sums[k] += v
                        counts[k] += 1
                losses.append(mini_loss)
                loss_finite = finite_on_every_rank(mini_loss, self.dist.sharded)
                norm, stepped = clip_and_step(
                    self.masters.parameters(), self.opt, self.cfg.optim.grad_clip, loss_finite
                )
                norms.append(norm)
                if not stepped:
                    skipped += 1
                    _warn_nonfinite(self.step + 1, epoch, j, mini_loss, norm)
                self.masters.push()
        self.sched.step()
        # Token counts (``<component>_masked_tokens``) add up over the step; the rest are means.
        out: dict = {k: sums[k] if k.endswith("_tokens") else sums[k] / counts[k] for k in sums}
        out.update({k: h.tolist() for k, h in hists.items()})
        out["loss"] = float(np.mean(losses)) if losses else 0.0
        out["lr"] = lr
        out["grad_norm"] = float(np.mean(norms)) if norms else 0.0
        out["grad_norm_max"] = float(np.max(norms)) if norms else 0.0
        out["nonfinite_skipped"] = skipped
        return out

    def full_state(self) -> dict[str, torch.Tensor]:
        """Full float32 masters (``"w/<name>"``) and AdamW moments (``"m/<name>/exp_avg"``, ...)
        on every rank, for comparing two trainers (a collective on every rank when sharded;
        checkpoints write shards instead, ``checkpoint.py``)."""
        gather = (lambda t: t.detach().full_tensor()) if self.dist.sharded else (lambda t: t.detach())
        out = {f"w/{n}": gather(t) for n, t in self.masters.named.items()}
        for n, p in self.masters.named.items():
            for m in ("exp_avg", "exp_avg_sq") if self.opt.state.get(p) else ():
                out[f"m/{n}/{m}"] = gather(self.opt.state[p][m])
        return out

    def named_weights(self) -> dict[str, torch.Tensor]:
        """Full weights in the compute dtype, in a fixed order, as workers receive them (a
        collective on every rank when sharded)."""
        if self.dist.sharded:
            return full_weights(self.model, self.compute_dtype)
        return {n: p.detach() for n, p in self.model.named_parameters()}

    def _proximal_runs(self) -> bool:
        return self.cfg.off_policy.mode == "decoupled" or "mini_batch_stats" in self.objective.needs

    def _shared_prompt_keyword(self) -> str | None:
        """The model's cache keyword when it can share each group's prompt (``optim.shared_prompt``
        and ``shared_prompt.check``); None: full rows, with a one-line notice if it cannot."""
        if not self.cfg.optim.shared_prompt:
            return None
        shared_prompt.keep_cache_under_checkpointing(self.model)
        why = shared_prompt.check(self.model)
        if why is None:
            return shared_prompt.cache_keyword(self.model)
        name = type(self.model).__name__
        print(f"optim.shared_prompt: {name} cannot share prompts ({why}); training on full rows", file=sys.stderr)
        return None

    def _logits(self, mb: MicroBatch) -> torch.Tensor:
        if isinstance(mb.inputs, RowInputs):
            return shared_prompt.row_logits(self.model, mb)
        assert self.cache_kw is not None, "shared-prompt micro-batches only for a model that passed the check"
        return shared_prompt.shared_logits(self.model, mb.inputs, self.cache_kw)

    def _policy_batch(self, mb: MicroBatch) -> PolicyBatch:
        return PolicyBatch(
            tokens=mb.targets,
            mask=mb.mask,
            advantages=mb.advantages,
            logp_old=mb.logp_old,
            logp_behavior=mb.logp_behavior if self.cfg.off_policy.mode == "decoupled" else None,
            total_tokens=mb.total_tokens,
            total_seqs=mb.total_seqs,
            entropy=mb.entropy,
            vocab_sum=mb.vocab_sum,
            normalisers=mb.normalisers,
        )


def _warn_nonfinite(step: int, epoch: int, mini: int, loss: float, norm: float) -> None:
    """One line on stderr for an optimizer step the non-finite guard left out."""
    print(
        f"learner step {step}: skipped the update of mini-batch {mini} (epoch {epoch}): "
        f"loss {loss}, grad norm {norm}, expected both finite; the weights are unchanged",
        file=sys.stderr,
    )


def enable_checkpointing(model: torch.nn.Module) -> None:
    """Non-reentrant activation checkpointing (what the shared prompt's captured keys need), by the
    name transformers gives it: activation_checkpointing_enable from 5.2x, gradient_ before."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _layout_metrics(minis: list[MiniBatch], proximal: bool, epochs: int) -> dict:
    """``padded_frac``: padding among the positions the step forwarded (proximal pass and
    update); ``skipped_samples``: samples left out of the update (this rank's)."""
    forwarded = [mb for mini in minis for mb in mini.update] * epochs
    if proximal:
        forwarded += [mb for mini in minis for mb in mini.all()]
    computed = sum(mb.computed_tokens for mb in forwarded)
    padded = sum(mb.padded_tokens for mb in forwarded)
    return {
        "padded_frac": padded / computed if computed else 0.0,
        "skipped_samples": float(sum(mini.skipped for mini in minis)),
    }


def replay_step(cfg: RunConfig, run_dir: Path, checkpoint_dir: Path, device: str = "cpu") -> dict:
    """Trainer-only replay: load ``checkpoint_dir`` (written after step k), train on the batch the
    run recorded for step k, return the step's metrics (its ``loss`` equals the recorded one)."""
    from buffer.replay import iter_batches

    trainer = Trainer(cfg, device, checkpoint_dir)
    for batch in iter_batches(run_dir):
        if batch.step == trainer.step + 1:  # the batch of the step after the checkpoint
            return trainer.train_on(batch)
    raise UsageError(
        f"replay: got checkpoint at step {trainer.step}, expected {run_dir} to have recorded "
        "the batch of that step (its store has no such step)"
    )
