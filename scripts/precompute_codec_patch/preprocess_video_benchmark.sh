#!/usr/bin/env bash
# Precompute the codec inputs (Stage-2 packs) of lmms-eval video benchmarks, where the model reads them.
#
#   bash scripts/precompute_codec_patch/preprocess_video_benchmark.sh <task>|all [flags for both stage tools]
#
# Per task (a group, e.g. mvbench, covers its subtasks):
#   1. python -m llava.eval.benchmark_videos lists the task's videos where lmms-eval keeps them (the task
#      utils' paths under HF_HOME) into $OUT_ROOT/<task>/videos.jsonl; videos the docs name but that are
#      not on disk are left out and listed in videos.jsonl.missing.txt;
#   2. Stage 1 (Compressed_Video_Reader/tool/stage1.py --preset llava) into $OUT_ROOT/<task>/stage1;
#   3. Stage 2 (tool/stage2.py --mode pack --preset llava) into $OUT_ROOT/<task>/packs, records in
#      $OUT_ROOT/<task>/packed.jsonl (packed.jsonl.shardXXofYY.jsonl with several shards).
# The model (llava.eval.codec_assets) finds $OUT_ROOT/<task>/packs for <task> and its subtasks
# (mvbench_action_antonym, ...); scripts/eval/eval_ov_encoder.sh uses outputs/codec_assets when it exists.
#
# all: videomme mvbench perceptiontest_val_mc nextqa_mc_test temporalbench video_mmmu tomato
#      longvideobench_val_v mlvu_dev egoschema
#
# Environment: OUT_ROOT (default outputs/codec_assets), HF_HOME (default ~/.cache/huggingface: where
# lmms-eval keeps the videos; give the eval the same one), INCLUDE_PATH (more lmms-eval task folders,
# joined by ':'), NUM_SHARDS (1) and SHARD_ID (0): one run per shard, same OUT_ROOT, any machines (each
# lists the videos itself, to the same file), NUM_WORKERS (8 processes per tool), PYTHON (default
# .venv/bin/python when there is one), CODEC_FRAMES / CODEC_IMAGES / CODEC_CANVAS (default the model's
# 64 / 8 / 576: Stage 1 --sequence_length / --keep_frames_equiv / --square_size, Stage 2 --T /
# --num_images / --square_size; the eval's codec_frames / codec_images / codec_canvas must match),
# STAGE1_ARGS / STAGE2_ARGS (more flags for one tool, split on spaces). Flags after the task go to both
# tools (--overwrite, --max_samples N, --threads N, --log_every N). Relative paths are taken from the
# repository root, as in scripts/eval/eval_ov_encoder.sh.
#
# Rerunning resumes: Stage 1 skips samples whose outputs are complete, Stage 2 reuses complete packs
# (without comparing their settings: after changing CODEC_*, use a new OUT_ROOT or pass --overwrite).
# Failed samples go to the tools' failure logs (printed at the end) and the run goes on with the other
# samples and tasks. Exit status: 0 when every step of every task succeeded; 1 when a listing or a tool
# failed, a sample failed, or a task has no video on disk; 2 for a bad command line or task name.
set -uo pipefail
cd "$(dirname "$0")/../.."

ALL_TASKS=(videomme mvbench perceptiontest_val_mc nextqa_mc_test temporalbench video_mmmu tomato
           longvideobench_val_v mlvu_dev egoschema)

usage() {
  echo "usage: $0 <task>|all [flags for both stage tools]  (all: ${ALL_TASKS[*]})" >&2
  exit 2
}
[ $# -ge 1 ] || usage
case "$1" in
  all) TASK_LIST=("${ALL_TASKS[@]}") ;;
  -*|"") usage ;;
  *) TASK_LIST=("$1") ;;
esac
shift

absolute() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$PWD/$1" ;; esac; }

if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi
OUT_ROOT=$(absolute "${OUT_ROOT:-outputs/codec_assets}")  # Stage 2 writes these paths into pack.json
HF_HOME=$(absolute "${HF_HOME:-$HOME/.cache/huggingface}")
export HF_HOME  # the task utils compute the video paths from it
NUM_SHARDS=${NUM_SHARDS:-1}
SHARD_ID=${SHARD_ID:-0}
NUM_WORKERS=${NUM_WORKERS:-8}
if ! [[ $NUM_SHARDS =~ ^[1-9][0-9]*$ && $SHARD_ID =~ ^[0-9]+$ ]] || [ "$SHARD_ID" -ge "$NUM_SHARDS" ]; then
  echo "error: need NUM_SHARDS >= 1 and 0 <= SHARD_ID < NUM_SHARDS (got $NUM_SHARDS, $SHARD_ID)" >&2
  exit 2
fi
TAG=$(printf 'shard%02dof%02d' "$SHARD_ID" "$NUM_SHARDS")

stage1_flags=(--preset llava --num_shards "$NUM_SHARDS" --shard_id "$SHARD_ID" --num_workers "$NUM_WORKERS")
stage2_flags=(--mode pack --preset llava --skip_missing --packs_only --num_shards "$NUM_SHARDS" --shard_id "$SHARD_ID"
              --num_workers "$NUM_WORKERS")
if [ -n "${CODEC_FRAMES:-}" ]; then
  stage1_flags+=(--sequence_length "$CODEC_FRAMES"); stage2_flags+=(--T "$CODEC_FRAMES")
fi
if [ -n "${CODEC_IMAGES:-}" ]; then
  stage1_flags+=(--keep_frames_equiv "$CODEC_IMAGES"); stage2_flags+=(--num_images "$CODEC_IMAGES")
fi
if [ -n "${CODEC_CANVAS:-}" ]; then
  stage1_flags+=(--square_size "$CODEC_CANVAS"); stage2_flags+=(--square_size "$CODEC_CANVAS")
fi
read -r -a extra1 <<< "${STAGE1_ARGS:-}"
read -r -a extra2 <<< "${STAGE2_ARGS:-}"

status=0
report=()

# run_tool TOOL LOG ARGS...: run a stage tool, its stdout also into LOG. Succeeds when the tool exited 0
# and its DONE line counts no failed (or unsupported) sample; adds the outcome to the report.
run_tool() {
  local tool=$1 log=$2; shift 2
  "$PYTHON" "Compressed_Video_Reader/tool/$tool.py" "$@" | tee "$log"
  local rc=${PIPESTATUS[0]} done_line failures
  done_line=$(grep "^\[$tool\] DONE" "$log" | tail -n 1)
  failures=$(grep -o 'failures: [^ ]*' "$log" | tail -n 1 | cut -d' ' -f2)
  if [ "$rc" -ne 0 ] || [ -z "$done_line" ]; then
    report+=("  $tool failed (exit status $rc), output in $log")
    return 1
  fi
  report+=("  $tool: ${done_line#*DONE }" "    failure log: $failures")
  [[ $done_line =~ \ fail=0\  ]] && ! [[ $done_line =~ \ unsupported=[1-9] ]]
}

for task in "${TASK_LIST[@]}"; do
  dir=$OUT_ROOT/$task
  mkdir -p "$dir/logs"
  echo "[precompute] $task ($TAG): listing its videos under $HF_HOME"
  report+=("$task:")
  list_args=(--tasks "$task" --out "$dir/videos.jsonl")
  [ -n "${INCLUDE_PATH:-}" ] && list_args+=(--include_path "$INCLUDE_PATH")
  "$PYTHON" -m llava.eval.benchmark_videos "${list_args[@]}"
  rc=$?
  if [ "$rc" -eq 2 ] && [ "${#TASK_LIST[@]}" -eq 1 ]; then
    exit 2  # unknown task name: the listing said which
  elif [ "$rc" -ne 0 ]; then
    report+=("  listing failed (exit status $rc, see above)")
    status=1
    continue
  fi
  videos=$(wc -l < "$dir/videos.jsonl")
  missing=$(wc -l < "$dir/videos.jsonl.missing.txt")
  report+=("  videos: $videos on disk, $missing not on disk (in $dir/videos.jsonl.missing.txt)")
  if [ "$videos" -eq 0 ]; then
    report+=("  no video of $task is on disk under $HF_HOME: download the benchmark first")
    status=1
    continue
  fi

  echo "[precompute] $task ($TAG): stage 1 -> $dir/stage1"
  if ! run_tool stage1 "$dir/logs/stage1.$TAG.log" --dataset_path "$dir/videos.jsonl" \
      --out_root "$dir/stage1" "${stage1_flags[@]}" "${extra1[@]}" "$@"; then
    status=1
  fi
  echo "[precompute] $task ($TAG): stage 2 -> $dir/packs"
  if ! run_tool stage2 "$dir/logs/stage2.$TAG.log" --input_dataset "$dir/videos.jsonl" \
      --visidx_root "$dir/stage1" --out_image_root "$dir/packs" --out_jsonl "$dir/packed.jsonl" \
      "${stage2_flags[@]}" "${extra2[@]}" "$@"; then
    status=1
  fi
done

echo
echo "[precompute] summary ($TAG, codec assets in $OUT_ROOT):"
printf '%s\n' "${report[@]}"
[ "$status" -eq 0 ] || echo "[precompute] some steps failed (see above): exit status 1" >&2
exit "$status"
