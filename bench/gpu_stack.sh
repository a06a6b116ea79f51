#!/bin/bash
# Corral on a GPU machine, as the kit in ../shared/gpu/ runs it (STACK_CMD of device_run.sh):
#   STACK=1 STACK_CMD='bash bench/gpu_stack.sh' bash .gpu/device_run.sh     carry [".gpu"]
# 1. the engine alone: one answer vs raw llama-cpp-python, 8 and 32 at once;
# 2. a gpu-pool worker end to end: a gpu-pool model with every layer offloaded, a Celery worker
#    on the gpu queue, uvicorn, a websocket client; raw vs Corral, and what the Fleet page shows;
# 3. 32 clients of 4 people through the whole stack vs raw;
# 4. (rounds) 1 (three times: the baseline is their median), 8 and 32 answers at once through the whole stack, one worker batching 32
#    (rounds1: the same with one web process, as before CORRAL_WEB_PROCESSES);
# 5. (sends, sends1) a burst of 8 and of 32 sends through the web side alone, with the
#    default web processes and with one.
# Each stage is bounded by the kit's deadline (KIT_DEADLINE) and writes one JSON file.
set -u
PY=${PYTHON:-python3}
MODEL=${KIT_MODEL:?the kit sets KIT_MODEL}
LAYERS=${KIT_N_GPU_LAYERS:--1}
OUT=${KIT_OUT:-/tmp/kit-out}
DEADLINE=${KIT_DEADLINE:-$(( $(date +%s) + 600 ))}
THREADS=$(nproc)
left() { echo $(( DEADLINE - $(date +%s) - 5 )); }
stage() {  # name, seconds wanted at most, command...
  local name=$1 want=$2 budget
  shift 2
  budget=$(left)
  [ "$budget" -gt "$want" ] && budget=$want
  if [ "$budget" -lt 20 ]; then echo "== $name skipped: $(left) s left"; return; fi
  echo "== $name (at most $budget s)"
  timeout "$budget" "$@" > "$OUT/$name.json"
  echo "== $name rc=$? ($(wc -c < "$OUT/$name.json") bytes)"
  cat "$OUT/$name.json"; echo
}
ENGINE=("$PY" bench/engine_bench.py --model "$MODEL" --n-gpu-layers "$LAYERS" --threads "$THREADS"
  --batches 1,8,32 --runs 3 --n-ctx 1024 --json)
# STAGES picks and orders them (a short device call runs the first ones only).
for name in ${STAGES:-engine stream load rounds}; do
  case $name in
    engine) stage engine 120 "${ENGINE[@]}" --tokens 256 ;;
    engine128) stage engine128 60 "${ENGINE[@]}" --tokens 128 ;;
    stream) stage stream 150 "$PY" bench/stream_bench.py --model "$MODEL" \
      --n-gpu-layers "$LAYERS" --pool gpu --threads "$THREADS" --runs 5 --tokens 256 --json ;;
    load) stage load 180 "$PY" bench/load_bench.py --model "$MODEL" --n-gpu-layers "$LAYERS" \
      --clients 32 --users 4 --tokens 128 --raw --json ;;
    # 1, 8 and 32 answers at once through the whole stack, one worker process batching 32.
    rounds) stage rounds 120 "$PY" bench/load_bench.py --model "$MODEL" \
      --n-gpu-layers "$LAYERS" --rounds 1,1,1,8,32,32 --users 8 --tokens 128 --batch-size 32 \
      --raw --json ;;
    rounds1) stage rounds1 120 "$PY" bench/load_bench.py --model "$MODEL" \
      --n-gpu-layers "$LAYERS" --rounds 1,1,1,8,32,32 --users 8 --tokens 128 --batch-size 32 \
      --web-processes 1 --json ;;
    sends) stage sends 60 "$PY" bench/send_bench.py --rounds 8,32 --users 8 --repeats 5 --json ;;
    sends1) stage sends1 60 "$PY" bench/send_bench.py --rounds 8,32 --users 8 --repeats 5 \
      --web-processes 1 --json ;;
    *) echo "== unknown stage $name" ;;
  esac
done
