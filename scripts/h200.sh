#!/usr/bin/env bash
# The published H200 run (results/examples/h200/), stage by stage, from the project root on a GPU
# machine that has vLLM (source /tmp/v/env.sh after ../shared/gpu/prepare.sh's install) and the
# llm-compressor environment (bash scripts/gpu_quant_env.sh install -> /tmp/q/bin/python).
#
#   bash scripts/h200.sh check          what the GPU matrix needs is importable (vLLM, datasets, bitsandbytes,
#                                       Locust, pytest-html, llm-compressor in QUANT_PYTHON); names what is not.
#                                       Run it first: a bundle without bitsandbytes skips two configs, each
#                                       with its reason, and a matrix timed without them is not the whole matrix
#   bash scripts/h200.sh prepare        train the Qwen2.5-0.5B-shaped classifier, then make the GPTQ, AWQ and W8A8
#                                       checkpoints concurrently (QBENCH_PREPARE_CONFIGS picks them; empty: none)
#   bash scripts/h200.sh matrix OUT CONFIGS [pytest args...]   one pytest run of those configs into OUT/
#   bash scripts/h200.sh all OUT        prepare, then every GPU config, the sweep of fp16_baseline and
#                                       hf_reference, the load test, into OUT/
#   bash scripts/h200.sh aa OUT         prepare, then the published A/A pair: the GPU matrix twice, the
#                                       second gated against the first, and qbench compare of the two
#   bash scripts/h200.sh aab OUT        the host-probe check: fp16_baseline, gptq_4bit, int8_w8a8 and
#                                       hf_reference at bs 1,8,32 three times (A, A again, then B with every
#                                       engine 25% slower by construction: tests/plugins/slowed_engine.py),
#                                       A' and B gated against A, qbench compare of both pairs;
#                                       QBENCH_AAB_RUNS=a2 runs the A/A pair alone (results/examples/h200/aa/);
#                                       with --qbench-samples 150 --qbench-engine-starts 2 each config is
#                                       timed on two engine starts, one batch a block (the GPU default):
#                                       the settings for a ratio between sessions (README, "How qbench measures")
#   bash scripts/h200.sh ceiling OUT [pytest args...]   the throughput-ceiling sweep of fp16_baseline and
#                                       hf_reference alone (issue 21's rungs), into OUT/; prepares the fp16 model
#                                       only. 12 m 14 s cold, 7 m 30 s with the vLLM and inductor caches of
#                                       an earlier run (ceiling-2026-12-04/; replicas then started at once, now
#                                       one after another: add a few engine starts), so run it detached and poll. Cut it with
#                                       QBENCH_CEILING_TEXTS (8192), QBENCH_CEILING_HF_RUNGS, QBENCH_CEILING_PACK_TEXTS, QBENCH_CEILING_LADDER,
#                                       QBENCH_CEILING_COMPILE_MODE (auto), QBENCH_CEILING_REPLICAS (2,3,4; empty: none),
#                                       QBENCH_CEILING_REPLICA_FEED (processes).
#                                       Points are saved as each lands: a run stopped midway keeps them
#   bash scripts/h200.sh vcpus OUT      each vCPU's speed at the same pure-Python work, all at once and
#                                       one at a time, and whether a slow one stays slow (scripts/vcpu_speeds.py)
#   bash scripts/h200.sh load OUT [CONFIGS] [pytest args...]   the seed's load grid (after prepare): CONFIGS
#                                       (default fp16_baseline,gptq_4bit) x users 10,20,50 x 1,8,32 texts a
#                                       request, one server per config, 4 Locust workers, into OUT/ (about
#                                       35 s a point: 18 points and two server starts take ~12 minutes;
#                                       ~9 min with --qbench-load-duration 10, as published), so
#                                       run it detached, as the matrix was)
#
# With a machine to yourself, one command does all of it (the stages only split it into calls of
# under 10 minutes, the device tool's limit):
#   pytest benchmarks -m gpu --qbench-model embedded:qwen2.5-0.5b --qbench-sweep on \
#     --qbench-sweep-configs fp16_baseline,hf_reference
set -euo pipefail
export QBENCH_CACHE_DIR=${QBENCH_CACHE_DIR:-/tmp/qc} VLLM_WORKER_MULTIPROC_METHOD=spawn PYTHONUNBUFFERED=1
MODEL=${QBENCH_MODEL:-embedded:qwen2.5-0.5b}  # another model only to rehearse a stage off the GPU
QUANT_PYTHON=${QUANT_PYTHON:-/tmp/q/bin/python}
stage=${1:-}; shift || true
case "$stage" in
  check)
    missing=$(python3 -W ignore -c "
import importlib
def broken(name):
    try:
        importlib.import_module(name)
    except Exception:  # noqa: BLE001  (absent, or present and failing to import: either way not usable)
        return True
    return False
print(' '.join(m for m in ('vllm', 'datasets', 'bitsandbytes', 'locust', 'pytest_html') if broken(m)))")
    "$QUANT_PYTHON" -c "import llmcompressor" 2>/dev/null || missing="$missing llmcompressor($QUANT_PYTHON)"
    if [ -n "${missing// /}" ]; then echo "missing on this machine: $missing" >&2; exit 1; fi
    echo "vLLM, datasets, bitsandbytes, Locust, pytest-html and llm-compressor are importable" ;;
  prepare)
    python3 -c "from qbench_plugin.dataset.embedded import resolve_model; print(resolve_model('$MODEL'))"
    # the checkpoints are made concurrently, as the plugin's concurrent engine starts make them: one after
    # another, GPTQ, AWQ and W8A8 took ~60, 210-240 and 50-65 s plus a process start each, and prepare
    # 7.7-10 minutes on an H200; made at once, GPTQ and W8A8 took 53 and 50 s (prepare-concurrent-2026-12-03/).
    # Each writes its own log, printed when it ends, and a failure still fails the stage
    mkdir -p "$QBENCH_CACHE_DIR"
    pids=() cfgs=()
    # QBENCH_PREPARE_CONFIGS= (set, empty) trains the fp16 model only: `-`, not `:-`, keeps the empty value
    for cfg in ${QBENCH_PREPARE_CONFIGS-gptq_4bit awq_4bit int8_w8a8}; do
      python3 -m qbench_plugin.cli quantize "configs/$cfg.json" --model "$MODEL" --quant-python "$QUANT_PYTHON" \
        > "$QBENCH_CACHE_DIR/prepare-$cfg.log" 2>&1 &
      pids+=($!) cfgs+=("$cfg")
    done
    failed=0
    for i in "${!pids[@]}"; do
      rc=0; wait "${pids[$i]}" || rc=$?
      echo "== ${cfgs[$i]}: exit $rc"; tail -n 25 "$QBENCH_CACHE_DIR/prepare-${cfgs[$i]}.log"
      [ "$rc" = 0 ] || failed=1
    done
    exit "$failed" ;;
  matrix)
    out=$1 configs=$2; shift 2
    mkdir -p "$out"
    nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true
    # SIGINT, not SIGTERM, at the limit: qbench then stops after the case in flight and still writes
    # the JSON and the report, marked partial; a run still alive 30 s later is killed
    timeout -s INT -k 30 "${QBENCH_TIME_LIMIT:-560}" python3 -m pytest benchmarks -m gpu -rs \
      --qbench-model "$MODEL" --qbench-configs "$configs" --qbench-quant-python "$QUANT_PYTHON" \
      --qbench-results-dir "$out" "$@" 2>&1 | tee "$out/pytest.log" | grep -v " INFO \|^INFO" ;;
  vcpus)
    python3 scripts/vcpu_speeds.py "$1" --seconds "${QBENCH_VCPU_SECONDS:-30}" ;;
  load)
    out=$1; shift
    configs=${1:-fp16_baseline,gptq_4bit}; shift || true
    mkdir -p "$out"
    timeout -s INT -k 30 "${QBENCH_TIME_LIMIT:-1800}" python3 -m pytest benchmarks -m "load and gpu" -rs \
      --qbench-model "$MODEL" --qbench-load-configs "$configs" --qbench-quant-python "$QUANT_PYTHON" \
      --qbench-load-users 10,20,50 --qbench-load-batch-size 1,8,32 --qbench-load-workers 4 \
      --qbench-results-dir "$out" "$@" 2>&1 | tee "$out/pytest-load.log" | grep -v " INFO \|^INFO" ;;
  ceiling)
    out=$1; shift
    QBENCH_PREPARE_CONFIGS= bash "$0" prepare
    # the sweep starts at batch 512 (--qbench-batch-sizes sets where; the matrix is deselected); the ladder
    # first moves the engine core into the pytest process (no IPC of 2048 requests a call: vLLM is host-bound
    # here, and 262144 batched tokens alone beat the defaults by 1% and -8% in two runs); only if that gains
    # 5% does it go on to 262144 batched tokens, async scheduling and larger graph capture; the HF rungs
    # compile one shape (the packed rows), which the graphs rung then replays. Packed batches hold about
    # 4096 texts (200 rows of 512): a call took 184 ms there against 28.1 ms at 25 rows, 21% less per row
    # (ceiling-2026-12-03c/README.md); QBENCH_CEILING_PACK_TEXTS=0 packs the padded sweep's best batch.
    # vLLM replicas are fed from processes of their own: fed from threads, 3 replicas did 4,086 texts/s
    # against one engine's 6,507 (ceiling-2026-12-03c); QBENCH_CEILING_REPLICA_FEED=threads,processes runs both
    ladder=${QBENCH_CEILING_LADDER-in_process=true;in_process=true,max_num_seqs=2048,max_num_batched_tokens=262144,async_scheduling=true,max_cudagraph_capture_size=2048}
    QBENCH_TIME_LIMIT=${QBENCH_TIME_LIMIT:-1080} bash "$0" matrix "$out" fp16_baseline,hf_reference \
      -m "gpu and saturation" --qbench-batch-sizes 512 --qbench-sweep on \
      --qbench-sweep-configs fp16_baseline,hf_reference --qbench-sweep-texts "${QBENCH_CEILING_TEXTS:-8192}" \
      --qbench-sweep-engine-settings "$ladder" --qbench-sweep-replicas "${QBENCH_CEILING_REPLICAS-2,3,4}" \
      --qbench-sweep-replica-feed "${QBENCH_CEILING_REPLICA_FEED:-processes}" \
      --qbench-sweep-hf-rungs "${QBENCH_CEILING_HF_RUNGS:-packed,packed+compile+graphs,packed+flex+compile}" \
      --qbench-sweep-pack-texts "${QBENCH_CEILING_PACK_TEXTS:-4096}" \
      --qbench-sweep-compile-mode "${QBENCH_CEILING_COMPILE_MODE:-auto}" "$@" ;;
  all)
    out=$1; shift
    bash "$0" prepare
    bash "$0" matrix "$out" fp16_baseline,fp8,gptq_4bit,awq_4bit,int8_w8a8,bitsandbytes_4bit,hf_reference,bitsandbytes_int8 \
      --qbench-sweep on --qbench-sweep-configs fp16_baseline,hf_reference "$@" ;;
  aa)
    # the A/A pair: the whole GPU matrix twice, back to back on one machine, the second gated against
    # the first; then qbench compare of the two (results/examples/h200/aa/)
    out=$1; shift
    configs=fp16_baseline,fp8,gptq_4bit,awq_4bit,int8_w8a8,bitsandbytes_4bit,hf_reference,bitsandbytes_int8
    bash "$0" prepare
    bash "$0" matrix "$out/a" "$configs" -m "gpu and not load" "$@"
    bash "$0" matrix "$out/b" "$configs" -m "gpu and not load" --qbench-perf-baseline "$(ls -d "$out"/a/2*/)" "$@" || true
    python3 -m qbench_plugin.cli compare "$(ls -d "$out"/a/2*/)" "$(ls -d "$out"/b/2*/)" --csv "$out/compare.csv" \
      | tee "$out/compare.txt" ;;
  aab)
    out=$1; shift
    configs=fp16_baseline,gptq_4bit,int8_w8a8,hf_reference
    QBENCH_PREPARE_CONFIGS="gptq_4bit int8_w8a8" bash "$0" prepare
    args=(-m "gpu and not load" -k "latency or accuracy" --qbench-batch-sizes 1,8,32)
    bash "$0" matrix "$out/a" "$configs" "${args[@]}" "$@"
    base=$(ls -d "$out"/a/2*/)
    runs=${QBENCH_AAB_RUNS:-a2 b}
    bash "$0" matrix "$out/a2" "$configs" "${args[@]}" --qbench-perf-baseline "$base" "$@" || true
    if [[ " $runs " == *" b "* ]]; then
      PYTHONPATH="tests/plugins:${PYTHONPATH:-}" bash "$0" matrix "$out/b" "$configs" "${args[@]}" -p slowed_engine \
        --qbench-perf-baseline "$base" "$@" || true
    fi
    for run in $runs; do
      python3 -m qbench_plugin.cli compare "$base" "$(ls -d "$out/$run"/2*/)" --csv "$out/compare-a-$run.csv" \
        | tee "$out/compare-a-$run.txt"
    done ;;
  *) echo "usage: $0 check | prepare | matrix OUT CONFIGS [pytest args...] | ceiling OUT [pytest args...] | vcpus OUT | load OUT [CONFIGS] [pytest args...] | all OUT [pytest args...] | aa OUT [pytest args...] | aab OUT [pytest args...]" >&2; exit 2 ;;
esac
