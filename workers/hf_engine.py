"""The ``hf`` engine: transformers on the CPU or one GPU, with a hand-written decode loop.

Batched sampling over left-padded prompts with a KV cache. Per step, for temperature T and
nucleus mass p::

    z = logits / T;   log pi = log_softmax(z);   H = -sum pi log pi   (temperature-scaled)
    sample a ~ top_p(pi) with the request's own torch.Generator (seeded per sample)

The reported log-prob and entropy are those of the temperature-scaled distribution
(``log pi(a)``, ``H``), which is what the learner recomputes. Between decode steps the
engine asks its weight source for staged weights; when some arrive it loads them, bumps the
policy version, and rebuilds the KV cache from the full prefix under the new weights, so
every later token is exactly the new policy's and is tagged with the new version.
"""

from __future__ import annotations

import inspect

import numpy as np
import torch

from dynamo_async.config.schema import RunConfig
from dynamo_async.errors import UsageError
from dynamo_async.weights.group import sync_backend
from workers.engine import GenRequest, GenResult, WeightSource, wait_for_version
from workers.parts import WorkerParts, register_engine
from workers.receiver import WeightReceiver, load_staged


class HFEngine:
    """Sampling engine over a transformers causal LM (``model`` already loaded)."""

    def __init__(
        self,
        model,
        tokenizer,
        cfg: RunConfig,
        device: str = "cpu",
        weight_source: WeightSource | None = None,
        policy_version: int = 0,
        all_done=None,
    ):
        """``all_done(done) -> bool``: whether to stop decoding, given whether this call's
        sequences are all done (default: stop then); sharded learner ranks stop together."""
        self.model = model.eval()
        self._all_done = all_done if all_done is not None else bool
        self.cfg = cfg
        self.device = device
        self.weight_source = weight_source
        self.policy_version = policy_version
        self.eos_ids = _eos_ids(tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.eos_ids)
        # transformers 5.24 names the KV cache argument ``cache``; earlier 5.x ``past_key_values``.
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    def apply_weights(self, version: int, tensors: dict[str, torch.Tensor]) -> None:
        load_staged(self.model, tensors)
        self.policy_version = version

    def wait_for_weights(self, version: int, timeout_s: float, poll_s: float = 0.05) -> None:
        """Load staged weights until serving ``version`` (a late joiner's first weights)."""

        def try_swap() -> None:
            staged = self.weight_source() if self.weight_source is not None else None
            if staged is not None:
                self.apply_weights(*staged)

        wait_for_version(self, try_swap, version, timeout_s, poll_s)

    def close(self) -> None:
        self.model = None

    @torch.no_grad()
    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        if not requests:
            return []
        state = _Batch.start(requests, self.pad_id, self.device)
        gens = [torch.Generator(device="cpu").manual_seed(int(r.seed)) for r in requests]
        cache, logits = self._prefill(state)
        for _ in range(self.cfg.rollout.max_new_tokens):
            if self._swap_weights():
                cache, logits = self._prefill(state)
            tokens, logp, ent = self._sample(logits, gens)
            state.append(tokens, logp, ent, self.policy_version, self.eos_ids)
            if self._all_done(state.all_done):
                break
            logits, cache = self._step(state, tokens, cache)
        return state.results()

    def _swap_weights(self) -> bool:
        staged = self.weight_source() if self.weight_source is not None else None
        if staged is None:
            return False
        self.apply_weights(*staged)
        return True

    def _prefill(self, state: _Batch):
        ids, mask = state.prefix()
        out = self.model(
            input_ids=ids, attention_mask=mask, position_ids=_positions(mask), use_cache=True, logits_to_keep=1
        )
        return _cache_of(out), out.logits[:, -1]

    def _step(self, state: _Batch, tokens: torch.Tensor, cache):
        state.mask = torch.cat([state.mask, torch.ones_like(state.mask[:, :1])], dim=1)
        pos = (state.mask.sum(-1, keepdim=True) - 1).clamp(min=0)
        out = self.model(
            input_ids=tokens[:, None].to(self.device),
            attention_mask=state.mask,
            position_ids=pos,
            use_cache=True,
            **{self._cache_kw: cache},
        )
        return out.logits[:, -1], _cache_of(out)

    def _sample(self, logits: torch.Tensor, gens: list[torch.Generator]):
        z = logits.float() / self.cfg.rollout.temperature
        logp_all = torch.log_softmax(z, dim=-1)
        probs = logp_all.exp()
        ent = -(probs * logp_all).sum(-1)
        probs = _top_p(probs, self.cfg.rollout.top_p).cpu()
        tokens = torch.stack([torch.multinomial(probs[i], 1, generator=g)[0] for i, g in enumerate(gens)])
        logp = logp_all.gather(-1, tokens.to(logp_all.device)[:, None]).squeeze(-1)
        return tokens, logp.cpu(), ent.cpu()


class _Batch:
    """Prompts, generated tokens and per-token records of one ``generate`` call."""

    def __init__(self, prompts: list[np.ndarray], pad_id: int, device: str):
        self.prompts, self.pad_id, self.device = prompts, pad_id, device
        n = len(prompts)
        self.tokens: list[list[int]] = [[] for _ in range(n)]
        self.logp: list[list[float]] = [[] for _ in range(n)]
        self.ent: list[list[float]] = [[] for _ in range(n)]
        self.vers: list[list[int]] = [[] for _ in range(n)]
        self.done = [False] * n
        self.finish = ["length"] * n
        self.mask: torch.Tensor | None = None

    @classmethod
    def start(cls, requests: list[GenRequest], pad_id: int, device: str) -> _Batch:
        return cls([np.asarray(r.prompt_ids, dtype=np.int64) for r in requests], pad_id, device)

    def prefix(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded prompt + generated tokens so far, and its attention mask."""
        seqs = [np.concatenate([p, np.asarray(t, dtype=np.int64)]) for p, t in zip(self.prompts, self.tokens)]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, width - len(s) :] = torch.from_numpy(s)
            mask[i, width - len(s) :] = 1
        self.mask = mask.to(self.device)
        return ids.to(self.device), self.mask

    def append(self, tokens, logp, ent, version: int, eos_ids: set[int]) -> None:
        for i in range(len(self.done)):
            if self.done[i]:
                continue
            tok = int(tokens[i])
            self.tokens[i].append(tok)
            self.logp[i].append(float(logp[i]))
            self.ent[i].append(float(ent[i]))
            self.vers[i].append(version)
            if tok in eos_ids:
                self.done[i], self.finish[i] = True, "stop"

    @property
    def all_done(self) -> bool:
        return all(self.done)

    def results(self) -> list[GenResult]:
        return [
            GenResult(
                np.asarray(t, dtype=np.int32),
                np.asarray(lp, dtype=np.float32),
                np.asarray(v, dtype=np.int32),
                f,
                np.asarray(e, dtype=np.float32),
            )
            for t, lp, v, f, e in zip(self.tokens, self.logp, self.vers, self.finish, self.ent)
        ]


def _cache_of(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(-1) - 1).clamp(min=0)


def _top_p(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero the tail outside the smallest set of tokens with mass >= top_p (then renormalise)."""
    if top_p >= 1.0:
        return probs
    sorted_p, order = probs.sort(dim=-1, descending=True)
    keep = sorted_p.cumsum(-1) - sorted_p < top_p
    kept = torch.zeros_like(probs).scatter(-1, order, sorted_p * keep)
    return kept / kept.sum(-1, keepdim=True)


def _eos_ids(tokenizer) -> set[int]:
    ids = tokenizer.eos_token_id
    out = set(ids) if isinstance(ids, (list, tuple)) else {ids}
    out.discard(None)
    if not out:
        raise UsageError("tokenizer has no eos token, expected one to stop generation on")
    return out


@register_engine("hf")
def build_hf_parts(cfg: RunConfig, worker_id: str, welcome, device: str, scorer) -> WorkerParts:
    """The model of ``cfg.model.name`` in the compute dtype, with one weight receiver."""
    from dynamo_async.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(cfg.model.name)
    model = load_model(cfg.model.name, cfg.model.compute_dtype, device)
    engine = HFEngine(model, tokenizer, cfg, device)
    receivers: list[WeightReceiver] = []

    def join(welcome) -> tuple[str, ...]:
        """(Re)start the receiver against ``welcome``'s rendezvous; the engine takes from it."""
        for old in receivers:
            old.stop()
            old.join(timeout=5)
        receivers.clear()
        engine.weight_source = None
        if not welcome.sync_port:
            return ()
        receiver = WeightReceiver(
            worker_id,
            welcome.sync_host,
            welcome.sync_port,
            sync_backend(device),
            timeout_s=cfg.weights.timeout_s,
            device=device,
            token=welcome.sync_token,
        )
        receiver.start()
        receivers.append(receiver)
        engine.weight_source = receiver.take_staged
        return (worker_id,)

    ids = join(welcome)
    return WorkerParts(engine, tokenizer, scorer, receivers, ids, restart_receivers=join)
