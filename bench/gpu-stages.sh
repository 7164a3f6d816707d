#!/usr/bin/env bash
# The model stages on a CUDA GPU in bf16 (run by hand where one is lent): clean prompts, the tiny
# model, two sampling runs, pairing and judging, as the workflow's rules run them.
# Usage: bash bench/gpu-stages.sh WORKDIR   (python3 must import torch with CUDA and salmon_wf)
set -euo pipefail
W=${1:?work directory}
R=src/salmon_wf/resources
PY=${PYTHON:-python3}
mkdir -p "$W"
$PY -m salmon_wf.cli clean-prompts --input "$R/demo_oasst/messages.jsonl" --output "$W/prompts.jsonl" \
  --summary "$W/prompts.summary.json" --format auto --drop-deleted --drop-review-failed --dedupe \
  --min-chars 4 --max-chars 4096
$PY -m salmon_wf.cli tiny-model "$W/tiny" --mp 1 --seed 0
MODEL=(--model "$W/tiny" --dtype bf16 --device cuda)
for run in 0 1; do
  $PY -m salmon_wf.launch --nodes 1 --ranks-per-node 1 -- sample "${MODEL[@]}" --seed "4$run" \
    --temperature 0.9 --top-p 0.95 --max-new-tokens 64 --stop '###' --style dromedary \
    --meta-prompt "$R/meta_prompt.txt" --batch-size 16 --label "response$run" --shard 0 \
    --num-shards 1 --fingerprint "gpu-$run" --prompts "$W/prompts.jsonl" --output "$W/response$run.jsonl"
done
$PY -m salmon_wf.cli pair --responses "$W/response0.jsonl" "$W/response1.jsonl" --min-chars 1 \
  --output "$W/pairs.jsonl" --summary "$W/pairs.summary.json"
$PY -m salmon_wf.launch --nodes 1 --ranks-per-node 1 -- judge "${MODEL[@]}" --shard 0 --num-shards 1 \
  --fingerprint gpu-judge --pairs "$W/pairs.jsonl" --principles "$R/principles.json" \
  --template "$R/judge_template.txt" --output "$W/judgments.jsonl"
wc -l "$W"/prompts.jsonl "$W"/response0.jsonl "$W"/pairs.jsonl "$W"/judgments.jsonl
