#!/usr/bin/env bash
# The GPU checks, in one go (under 8 minutes on one GPU): the gpu-marked tests (the learner
# step in bf16 compute over float32 masters at lr 1e-6 on CUDA, one process and FSDP2 with one
# rank; the hf engine on CUDA; the policy objective in bf16; `dynamo-async run --device cuda` with
# the learner and a worker sharing one GPU, tests/test_single_gpu.py), the mixed-precision arms on CUDA
# and the modulation overhead on CUDA. Run from the repository root; OUT (optional) collects logs.
set -u
out=${OUT:-/tmp}
export PYTHONUNBUFFERED=1
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name())"
python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu_objective.py tests/test_gpu_paths.py tests/test_single_gpu.py 2>&1 | tee "$out/gpu_tests.log"
tests=${PIPESTATUS[0]}
python3 bench/mixed_precision.py --device cuda --steps 5 2>&1 | tee "$out/mixed_precision_cuda.log"
config_dir=${SMOLLM2_CONFIG_DIR:-}
if [ -n "$config_dir" ]; then
  model=(--config-only "$config_dir")
else
  model=(--model builtin:smollm2-135m-instruct)
fi
python3 bench/modulation_overhead.py --device cuda --dtype bfloat16 "${model[@]}" --batch 16 --prompt 64 --response 960 --rounds 20 2>&1 | tee "$out/modulation_overhead_cuda.log"
exit "$tests"
