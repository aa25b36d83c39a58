#!/bin/bash
# PPO vs GRPO vs RLOO from one pipeline run's SFT model, proxy RM and judge: 100 steps of 16 sampled
# answers each, then the stage table on 256 held-out prompts. Wall and peak RSS from /usr/bin/time -v.
#   bash bench/online_rl.sh runs/real bench/out/online_rl      (~8 min on 2 CPU cores)
set -euo pipefail
RUN=${1:-runs/real}
OUT=${2:-bench/out/online_rl}
mkdir -p "$OUT"
COMMON=(--data "$RUN/data" --sft "$RUN/sft" --judge "$RUN/judge" --max-length 128 --max-steps 100 --learning-rate 5e-5
        --eval-every 20 --eval-prompts 64 --logging-steps 50 --save-steps 1000 --overwrite)
GROUPS_OF_4=(--reward "rm=$RUN/rm" --batch-size 4 --group-size 4 --iterations 2)
measured() {  # NAME COMMAND…: run it, keep its log, print its wall and peak memory
    local name=$1; shift
    /usr/bin/time -v "$@" --out "$OUT/$name" > "$OUT/$name.log" 2>&1
    echo "$name: $(grep -E 'Elapsed|Maximum resident' "$OUT/$name.log" | sed 's/^\s*//' | paste -sd ';')"
}
measured ppo kochat train ppo "${COMMON[@]}" --rm "$RUN/rm" --batch-size 16 --mini-batch-size 8 --kl-coef 0.05
measured grpo kochat train grpo "${COMMON[@]}" "${GROUPS_OF_4[@]}"
measured rloo kochat train rloo "${COMMON[@]}" "${GROUPS_OF_4[@]}"
measured grpo_std kochat train grpo "${COMMON[@]}" "${GROUPS_OF_4[@]}" --advantage group
kochat eval stages --stage sft="$RUN/sft" --stage ppo="$OUT/ppo" --stage grpo="$OUT/grpo" --stage rloo="$OUT/rloo" \
    --stage grpo_std="$OUT/grpo_std" --reward-model "$RUN/rm" --judge "$RUN/judge" --data "$RUN/data" --max-prompts 256 \
    --out "$OUT/eval" --markdown
