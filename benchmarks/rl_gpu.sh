#!/usr/bin/env bash
# Hi-GRPO runs on a GPU machine: the commands behind the model card's RL numbers (data_cards/reference_policy.md).
#
#   bash benchmarks/rl_gpu.sh sanity OUT    2 steps on one GPU, then 2 steps on two GPUs (torchrun, NCCL)
#   bash benchmarks/rl_gpu.sh main OUT      3 seeds of Hi-GRPO at each learning rate of LRS, all at once on one GPU,
#                                           for MINUTES each; then evaluate them and the SFT checkpoint, tabulate
#   bash benchmarks/rl_gpu.sh launch OUT    calibrate (learning rate, steps), then start every seed and ablation
#   bash benchmarks/rl_gpu.sh finish OUT    wait for the runs, evaluate them and the SFT checkpoint, tabulate
#   bash benchmarks/rl_gpu.sh ddp OUT       data-parallel throughput and reward curve: 1 GPU vs 2 GPUs
#
# Every stage is idempotent (runs resume from their state.pt); WAIT (minutes) bounds how long launch/finish wait.
set -euo pipefail
stage=$1
out=$2
wait_minutes=${WAIT:-8}
gpus=${GPUS:-cuda:0,cuda:1}
exp="python3 -m reference_policy.rl.experiments"
common=(--save-dtype bfloat16)
case $stage in
  sanity)
    python3 -m reference_policy.rl.train --out "$out/sanity1" --device cuda:0 --steps 2 "${common[@]}"
    python3 -m torch.distributed.run --standalone --nproc_per_node 2 -m reference_policy.rl.train \
      --out "$out/sanity2" --device cuda --steps 2 "${common[@]}"
    ;;
  main)
    # rollouts at the evaluation temperature (0.7); 1 + 3 updates: see the model card for why the rates are this low
    for lr in ${LRS:-3e-6 1e-5}; do
      $exp run --out "$out/lr$lr" --devices "${GPUS:-cuda:0}" --group main --seeds 0 1 2 --steps 400 \
        --max-minutes "${MINUTES:-5}" --wait-minutes 0 --set save-dtype=bfloat16 temperature=0.7 learning-rate=$lr
    done
    for lr in ${LRS:-3e-6 1e-5}; do
      $exp run --out "$out/lr$lr" --devices "${GPUS:-cuda:0}" --group main --seeds 0 1 2 --steps 400 \
        --max-minutes "${MINUTES:-5}" --wait-minutes "$wait_minutes" --set save-dtype=bfloat16 temperature=0.7 \
        learning-rate=$lr
    done
    for lr in ${LRS:-3e-6 1e-5}; do
      $exp evaluate --out "$out/lr$lr" --devices "${GPUS:-cuda:0}" --n 256 --parallel 4 &
    done
    wait
    for lr in ${LRS:-3e-6 1e-5}; do $exp table --out "$out/lr$lr"; done
    ;;
  launch)
    [ -f "$out/calibration.json" ] || $exp calibrate --out "$out" --device cuda:0 --lrs 1e-6 3e-6 1e-5 3e-5 \
      --minutes "${CAL_MINUTES:-2.5}" --budget-minutes "${BUDGET:-9}" --concurrency 27 --devices-total 2
    $exp run --out "$out" --devices "$gpus" --group all --seeds 0 1 2 --from-calibration --max-minutes 14 \
      --wait-minutes "$wait_minutes" --set save-dtype=bfloat16
    ;;
  finish)
    $exp run --out "$out" --devices "$gpus" --group all --seeds 0 1 2 --from-calibration --max-minutes 14 \
      --wait-minutes "$wait_minutes" --set save-dtype=bfloat16
    $exp evaluate --out "$out" --devices "$gpus" --n 256 --parallel 8
    $exp table --out "$out"
    ;;
  ddp)
    lr=$(python3 -c "import json; print(json.load(open('$out/calibration.json'))['learning_rate'])")
    steps=$(python3 -c "import json; print(json.load(open('$out/calibration.json'))['steps'])")
    python3 -m reference_policy.rl.train --out "$out/ddp1" --device cuda:0 --seed 0 --steps "${DDP_STEPS:-20}" \
      --learning-rate "$lr" "${common[@]}"
    python3 -m torch.distributed.run --standalone --nproc_per_node 2 -m reference_policy.rl.train \
      --out "$out/ddp2" --device cuda --seed 0 --steps "$steps" --learning-rate "$lr" "${common[@]}"
    ;;
  *) echo "unknown stage $stage" >&2; exit 2 ;;
esac
