#!/usr/bin/env bash
# Hi-GRPO runs on a GPU machine: the commands behind the model card's RL numbers (data_cards/reference_policy.md).
#
#   bash benchmarks/rl_gpu.sh sanity OUT    2 steps on one GPU, then 2 steps on two GPUs (torchrun, NCCL)
#   bash benchmarks/rl_gpu.sh main OUT      3 seeds of Hi-GRPO at each learning rate of LRS, all at once on one GPU,
#                                           for MINUTES each; then evaluate them and the SFT checkpoint, tabulate
#   bash benchmarks/rl_gpu.sh launch OUT    calibrate (learning rate, steps), then start every seed and ablation
#   bash benchmarks/rl_gpu.sh finish OUT    wait for the runs, evaluate them and the SFT checkpoint, tabulate
#   bash benchmarks/rl_gpu.sh ddp OUT       data-parallel throughput and reward curves: 1 GPU vs 2 GPUs, global
#                                           batch fixed (DDP_P prompts a step, DDP_STEPS steps)
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
    # Data-parallel Hi-GRPO with the global batch held fixed (P prompts x G samples a step), for each P of DDP_P:
    # seed 0 alone on cuda:0, then seed 0 on both GPUs through torchrun (NCCL): the throughput pair, each run alone
    # on the machine, with the same intra-op threads per process (torchrun's default would be 1); then seeds 1 and 2,
    # one per GPU, for the seed spread of the reward curves. Then tabulate (benchmarks/rl_ddp_report.py).
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}
    steps=${DDP_STEPS:-8}
    for p in ${DDP_P:-32}; do
      args=(--steps "$steps" --prompts-per-step "$p" --max-minutes "${DDP_MINUTES:-4}" "${common[@]}")
      python3 -m reference_policy.rl.train --out "$out/p$p-gpu1-s0" --device cuda:0 --seed 0 "${args[@]}" \
        > "$out/p$p-gpu1-s0.out" 2>&1
      python3 -m torch.distributed.run --standalone --nproc_per_node 2 -m reference_policy.rl.train \
        --out "$out/p$p-gpu2-s0" --device cuda --seed 0 "${args[@]}" > "$out/p$p-gpu2-s0.out" 2>&1
      for s in 1 2; do
        python3 -m reference_policy.rl.train --out "$out/p$p-gpu1-s$s" --device "cuda:$((s - 1))" --seed "$s" \
          "${args[@]}" > "$out/p$p-gpu1-s$s.out" 2>&1 &
      done
      wait
    done
    python3 benchmarks/rl_ddp_report.py "$out"
    ;;
  *) echo "unknown stage $stage" >&2; exit 2 ;;
esac
