"""``dynamo-async eval``: n samples per problem on each benchmark, scored by math-verify,
pass@k per benchmark and the average (the paper's Table 1 layout), written to ``--out``.

Prompts are rendered exactly as in training (``data.system_prompt``, ``data.few_shot``,
the tokenizer's chat template), and sampling uses ``rollout`` (temperature, top-p, response
length) from ``--config`` (or, when ``--model`` is a run or checkpoint directory, the run's
``config.yaml``) and overrides; with neither, the defaults of ``RunConfig``
(Table 3: temperature 1.0, top-p 1.0, 8192 new tokens). Per-problem records go to
``OUT.records.jsonl`` as they finish, so an interrupted evaluation resumes where it stopped.
"""

from __future__ import annotations

import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from dynamo_async.config import load_config
from dynamo_async.config.schema import RunConfig
from dynamo_async.data.prompts import read_options
from dynamo_async.errors import UsageError
from dynamo_async.evaluation.benchmarks import load_benchmarks
from dynamo_async.evaluation.records import EvalSettings, ProblemRecord, RecordFile, problem_digest, records_path
from dynamo_async.evaluation.table import format_table, summarize, write_results


@dataclass(frozen=True)
class EvalRequest:
    """What the command line asked for (runtime choices, not part of the run config)."""

    model: str
    data: list[str]
    out: Path
    n: int = 1
    ks: tuple[int, ...] = (1,)
    engine: str | None = None
    config: str | None = None
    overrides: list[str] = field(default_factory=list)
    device: str = "cpu"
    batch_size: int = 32
    limit: int | None = None
    seed: int = 0
    label: str | None = None
    save_responses: bool = False
    show_progress: bool = True


def eval_config(req: EvalRequest) -> RunConfig:
    """The run config (``--config`` or defaults) with ``--model`` and ``--engine`` applied."""
    extra = [f"model.name={resolve_eval_model(req.model)}"] + ([f"rollout.engine={req.engine}"] if req.engine else [])
    return load_config(req.config or run_config_of(req.model), [*req.overrides, *extra])


def run_config_of(model: str) -> str | None:
    """The config.yaml of the run that ``model`` (a run or checkpoint directory) belongs to."""
    path = Path(model)
    if (path / "checkpoints").is_dir() and (path / "config.yaml").is_file():
        return str(path / "config.yaml")  # a run directory
    run = path.parent.parent  # RUN_DIR/checkpoints/step-N
    if (path / "model").is_dir() and (run / "config.yaml").is_file():
        return str(run / "config.yaml")
    return None


def resolve_eval_model(spec: str) -> str:
    """A run directory means its newest checkpoint's model, a checkpoint directory its
    ``model/`` folder; anything else (a name, a model folder, a builtin) stays as it is."""
    path = Path(spec)
    if (path / "checkpoints" / "latest").is_file():
        from dynamo_async.learner.checkpoint import latest_checkpoint

        ckpt = latest_checkpoint(path)
        if ckpt is None:
            raise UsageError(
                f"--model: got run directory {spec!r} whose checkpoints/latest names no checkpoint, "
                "expected RUN_DIR/checkpoints/step-N/ to exist"
            )
        path = ckpt
    if (path / "model" / "config.json").is_file():
        return str(path / "model")
    return spec


def settings_of(cfg: RunConfig, req: EvalRequest) -> EvalSettings:
    return EvalSettings(
        model=cfg.model.name,
        engine=cfg.rollout.engine,
        n=req.n,
        seed=req.seed,
        temperature=cfg.rollout.temperature,
        top_p=cfg.rollout.top_p,
        max_new_tokens=cfg.rollout.max_new_tokens,
        max_prompt_tokens=cfg.data.max_prompt_tokens,
        dtype=cfg.model.compute_dtype,
        system_prompt=cfg.data.system_prompt,
        few_shot=tuple((e.problem, e.answer) for e in cfg.data.few_shot),
        reward_timeout_s=cfg.rewards.timeout_s,
        reward_max_chars=cfg.rewards.max_chars,
        user_template=cfg.data.user_template,
        answer_format=cfg.rewards.answer_format,
    )


def check_request(req: EvalRequest) -> None:
    if req.n < 1 or req.batch_size < 1:
        raise UsageError(f"got --n {req.n}, --batch-size {req.batch_size}, expected both >= 1")
    if max(req.ks) > req.n:
        raise UsageError(
            f"--k: got {','.join(map(str, req.ks))}, expected every k <= --n {req.n} "
            f"(pass@{max(req.ks)} needs at least {max(req.ks)} samples per problem)"
        )
    if req.out.suffix != ".json":
        raise UsageError(f"--out: got {str(req.out)!r}, expected a .json path (records go beside it)")


def run_eval(req: EvalRequest) -> dict:
    """Sample what the record file lacks, then summarise everything into ``req.out``."""
    check_request(req)
    cfg = eval_config(req)
    settings = settings_of(cfg, req)
    benchmarks = load_benchmarks(req.data, req.limit, cfg.data.synthetic, read_options(cfg.data, train=False))
    records = RecordFile(records_path(req.out), settings)
    try:
        todo = [
            (b.name, p)
            for b in benchmarks
            for p in b.problems
            if not records.check(b.name, p.id, problem_digest(p.problem, p.answer))
        ]
        if todo:
            _sample_all(cfg, req, todo, records, [(b.name, p.id) for b in benchmarks for p in b.problems])
    finally:
        records.close()
    results = summarize(
        req.label or req.model,
        settings,
        req.ks,
        [(b.name, b.spec, [records.done[(b.name, p.id)] for p in b.problems]) for b in benchmarks],
    )
    write_results(req.out, results)
    return results


def _sample_all(cfg: RunConfig, req: EvalRequest, todo: list, records: RecordFile, selected: list) -> None:
    """Generate chunk after chunk; a chunk is scored (math-verify processes) while the next
    one generates, and its records are written once its scores are in."""
    from tqdm import tqdm

    from dynamo_async.rewards import MathVerifyScorer

    engine, tokenizer = make_engine(cfg, req.device)
    per_batch = max(1, req.batch_size // req.n)
    done = sum(len(records.done[key].acc) for key in selected if key in records.done)
    pending: Pending | None = None
    with (
        MathVerifyScorer.from_config(cfg.rewards) as scorer,
        tqdm(
            total=done + len(todo) * req.n,
            initial=done,
            desc="eval",
            unit="sample",
            disable=not req.show_progress,
            dynamic_ncols=True,
            file=sys.stderr,
        ) as bar,
    ):
        for start in range(0, len(todo), per_batch):
            chunk = todo[start : start + per_batch]
            bar.set_postfix_str(chunk[0][0])
            current = generate_chunk(engine, tokenizer, scorer, chunk, cfg, req)
            bar.update(len(chunk) * req.n)
            if pending is not None:
                _finish(pending, records, req)
            pending = current
        if pending is not None:
            _finish(pending, records, req)
    engine.close()


def _finish(pending: Pending, records: RecordFile, req: EvalRequest) -> None:
    for record in pending.records(req.save_responses):
        records.add(record)


@dataclass
class Pending:
    """A generated chunk whose scores are on their way."""

    chunk: list
    results: list
    texts: list[str]
    futures: list

    def records(self, save_responses: bool) -> list[ProblemRecord]:
        """Wait for the scores; one record per problem."""
        scores = [f.result() for f in self.futures]
        n = len(self.results) // len(self.chunk)
        out = []
        for i, (bench, p) in enumerate(self.chunk):
            part = slice(i * n, (i + 1) * n)
            out.append(
                ProblemRecord(
                    benchmark=bench,
                    id=p.id,
                    answer=p.answer,
                    digest=problem_digest(p.problem, p.answer),
                    acc=tuple(int(s.acc) for s in scores[part]),
                    tokens=tuple(len(r.token_ids) for r in self.results[part]),
                    finish=tuple(r.finish_reason for r in self.results[part]),
                    responses=tuple(self.texts[part]) if save_responses else (),
                )
            )
        return out


def generate_chunk(engine, tokenizer, scorer, chunk: list, cfg: RunConfig, req: EvalRequest) -> Pending:
    """``req.n`` samples for each ``(benchmark, problem)`` of ``chunk``, handed to the scorer."""
    from dynamo_async.data.prompts import prompt_ids
    from workers.engine import GenRequest

    reqs = []
    for bench, p in chunk:
        ids = prompt_ids(tokenizer, p.problem, cfg)
        reqs += [GenRequest(ids, sample_seed(req.seed, bench, p.id, k)) for k in range(req.n)]
    results = [r for i in range(0, len(reqs), req.batch_size) for r in engine.generate(reqs[i : i + req.batch_size])]
    texts = [tokenizer.decode(r.token_ids.tolist(), skip_special_tokens=True) for r in results]
    golds = [p.answer for _, p in chunk for _ in range(req.n)]
    return Pending(chunk, results, texts, [scorer.submit(t, g) for t, g in zip(texts, golds)])


def sample_seed(seed: int, benchmark: str, problem_id: str, k: int) -> int:
    """Sampling seed of sample ``k`` of one problem: independent of batching and resumes."""
    key = zlib.crc32(f"{benchmark}\x00{problem_id}".encode())
    return (seed * 1_000_003 + key * 1_009 + k) % (2**31 - 1)


def make_engine(cfg: RunConfig, device: str):
    """The ``rollout.engine`` with the model loaded for sampling; returns (engine, tokenizer)."""
    from dynamo_async.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(cfg.model.name)
    if cfg.rollout.engine == "vllm":
        from workers.vllm_start import start_vllm_engine

        return start_vllm_engine(cfg, device), tokenizer
    from workers.hf_engine import HFEngine

    return HFEngine(load_model(cfg.model.name, cfg.model.compute_dtype, device), tokenizer, cfg, device), tokenizer


def eval_main(req: EvalRequest) -> int:
    results = run_eval(req)
    sys.stdout.write(format_table([results]))
    print(f"wrote {req.out} (per-problem records: {records_path(req.out)})")
    return 0
