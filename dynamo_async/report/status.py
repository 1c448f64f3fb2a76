"""``dynamo-async status HOST:PORT``: a live terminal view of a running learner.

HOST:PORT is the learner's work port (what workers ``--connect`` to); the view reads the
status endpoint beside it (port + 2) every ``--interval`` seconds and shows the policy
version, the run's progress (step / total steps, the recent step rate, the ETA and the clock
time it points at), groups by lifecycle state, the staleness gate, connected workers,
throughput (rates between two refreshes) and the figures of the learner's last step and
evaluation.
"""

from __future__ import annotations

import sys
import time

from dynamo_async.learner.progress import duration as _duration
from dynamo_async.protocol import PROTOCOL_VERSION, Status

STATES = ("waiting", "in_flight", "ready", "consumed")
STEP_KEYS = (
    "accuracy",
    "reward",
    "entropy",
    "loss",
    "grad_norm",
    "clip_frac",
    "beta_comp_mean",
    "beta_stab_mean",
    "zero_variance_frac",
    "staleness_mean",
    "staleness_max",
    "step_s",
    "tokens_per_s",
    "learner_idle_s",
    "worker_idle_s",
    "sync_s",
    "lr",
)


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def progress_line(st: Status, wall: float) -> str:
    """``step 120/600 (20.0%)   3.10 s/step   eta 24m48s (about 14:32)   last step 2 s ago``;
    ``wall``: the unix time now, for the clock time the ETA points at."""
    step = int(st.last_step.get("step", 0))
    if not st.total_steps:
        return f"step {step}"
    parts = [f"step {step}/{st.total_steps} ({100 * step / st.total_steps:.1f}%)"]
    if st.steps_per_s:
        parts.append(f"{1 / st.steps_per_s:.2f} s/step" if st.steps_per_s < 1 else f"{st.steps_per_s:.2f} steps/s")
    if st.eta_s is None:
        parts.append("eta unknown (no step yet)" if st.last_step_age_s is None else "eta unknown")
    elif st.eta_s == 0 and step >= st.total_steps:
        parts.append("done")
    else:
        parts.append(f"eta {_duration(st.eta_s)} (about {time.strftime('%H:%M', time.localtime(wall + st.eta_s))})")
    if st.last_step_age_s is not None:
        parts.append(f"last step {_duration(st.last_step_age_s)} ago")
    return "   ".join(parts)


def render(st: Status, address: str, prev: tuple[float, Status] | None, now: float) -> str:
    """The view of one snapshot; rates use the previous snapshot (else the whole uptime)."""
    restarted = prev is not None and st.completions < prev[1].completions  # another buffer since
    if prev is not None and now > prev[0] and not restarted:
        span, base_c, base_t = now - prev[0], prev[1].completions, prev[1].completion_tokens
    else:
        span, base_c, base_t = max(st.uptime_s, 1e-9), 0, 0
    groups = "  ".join(f"{name} {st.groups.get(name, 0)}" for name in STATES)
    extra = sorted(set(st.groups) - set(STATES))
    groups += "".join(f"  {name} {st.groups[name]}" for name in extra) + f"  dropped {st.dropped_groups}"
    gate = "open" if st.gate_room > 0 else "closed (waiting for the learner)"
    lines = [
        f"dynamo-async status {address}   {time.strftime('%Y-%m-%d %H:%M:%S')}   protocol v{PROTOCOL_VERSION}",
        f"learner     version {st.policy_version}   batches handed out {st.step}   up {_duration(st.uptime_s)}",
        f"progress    {progress_line(st, time.time())}",
        f"groups      {groups}",
        f"staleness   limit {st.max_staleness} versions   gate {gate}, admits {st.gate_room} more groups"
        + (
            f"   last batch: mean {_fmt(st.last_step['staleness_mean'])}, max {_fmt(st.last_step['staleness_max'])}"
            if "staleness_mean" in st.last_step and "staleness_max" in st.last_step
            else ""
        ),
        f"dropped     {st.dropped_groups} groups (too stale or zero variance)",
        f"throughput  {st.completions} completions ({(st.completions - base_c) / span:.2f}/s), "
        f"{st.completion_tokens} response tokens ({(st.completion_tokens - base_t) / span:.1f}/s)",
        "rejected    " + (", ".join(f"{k} {v}" for k, v in sorted(st.rejected.items())) or "none"),
        f"workers     {st.workers} connected",
    ]
    if st.transport:
        note = {"curve": "CURVE keys", "loopback": "open, loopback only", "insecure": "OPEN TO ANY HOST (--insecure)"}
        lines.insert(2, f"transport   {note.get(st.transport, st.transport)}")
    for w in st.worker_list:
        lines.append(
            f"  {w.worker_id:<32} last seen {w.last_seen_s:5.1f} s ago   "
            f"leased {w.samples_leased:<4} completions {w.completions}"
        )
    shown = [k for k in STEP_KEYS if k in st.last_step]
    if shown:
        lines.append(f"last step   (step {_fmt(st.last_step.get('step', st.step))})")
        for i in range(0, len(shown), 4):
            lines.append("  " + "   ".join(f"{k} {_fmt(st.last_step[k])}" for k in shown[i : i + 4]))
    else:
        lines.append("last step   none yet")
    evals = {k: v for k, v in st.last_eval.items() if k.startswith("eval/")}
    if evals:
        lines.append(
            f"last eval   (step {_fmt(st.last_eval.get('step', 0))})   "
            + "   ".join(f"{k[5:]} {100 * v:.1f}%" for k, v in sorted(evals.items()))
        )
    return "\n".join(lines) + "\n"


def status_main(host: str, port: int, interval: float, once: bool, timeout_s: float, keys=None) -> int:
    """Print one snapshot (``once``) or refresh until Ctrl-C."""
    from buffer.client import query_status

    address = f"{host}:{port}"
    live = sys.stdout.isatty()
    prev: tuple[float, Status] | None = None
    try:
        while True:
            try:
                st = query_status(host, port + 2, timeout_s, keys)
            except (TimeoutError, ConnectionError) as err:
                message = (
                    f"{err} (the status port of work port {port}); check that the learner runs "
                    f"and that {port} is its work port"
                )
                if once:
                    print(f"dynamo-async status: error: {message}", file=sys.stderr)
                    return 1
                print(message + "; retrying", flush=True)
                time.sleep(interval)
                continue
            now = time.monotonic()
            text = render(st, address, prev, now)
            prev = (now, st)
            if live and not once:
                sys.stdout.write("\x1b[H\x1b[2J")  # clear the screen, cursor home
            sys.stdout.write(text if live or once else text + "\n")
            sys.stdout.flush()
            if once:
                return 0
            time.sleep(interval)
    except KeyboardInterrupt:
        return 0
