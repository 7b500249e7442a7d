#!/usr/bin/env bash
# One call of a lent GPU machine (see docs/BENCHMARKS.md "GPU figures" and docs/TRAINING.md "Run 5").
#   bash benchmarks/gpu_lease.sh all T_MIN TF_MIN DMD_MIN   # teacher -> teacher forcing -> GR-DMD, tiny preset
#   bash benchmarks/gpu_lease.sh teacher [MINUTES [INIT]]    # INIT: continue from a carried stage folder
#   bash benchmarks/gpu_lease.sh teacher_wide [MINUTES]      # from scratch, 4x the parameters (tiny_wide_gpu.yaml),
#                                                            # then its held-out scores and sheet (SCORE=0 skips)
#   bash benchmarks/gpu_lease.sh distill TF_MIN DMD_MIN [TEACHER]
#   bash benchmarks/gpu_lease.sh all_wide T_MIN TF_MIN DMD_MIN # teacher_wide -> TF -> GR-DMD in one call (no sampling
#                                                            # there): the plan for a 15-minute device budget
#   bash benchmarks/gpu_lease.sh bench
#   bash benchmarks/gpu_lease.sh bench_hybrid                # Wan encoder + FastVAE decoder (bench --vae hybrid)
#   bash benchmarks/gpu_lease.sh real_fsdp                  # the wan2.2-5b configs on a miniature Wan2.2 directory
#                                                            # under accelerate FSDP (v1, v2) on one GPU, then without
#                                                            # FSDP as the control (world data: no PyAV needed)
# DATA_ECHO=N (env, default 1): teacher steps per rendered batch (train.data_echo), for the data-bound teacher.
# CACHE_CLIPS=N (env, default 40000; 0 = off) and CACHE_MIN (default 1): teacher_wide / all_wide first pre-encode up
# to N training clips with the data workers (teacher.cache_latents, at most CACHE_MIN minutes), then train from that
# latent cache with no workers: run 5's teacher spent 2/3 of each step waiting on rendering. all_wide does the same
# for teacher forcing's 33-frame clips (TF_CACHE_CLIPS, default 20000; TF_CACHE_MIN, default 0.5).
# MIXED=no|bf16 (env): --mixed-precision for every stage (default: the configs' auto = bf16 on CUDA; since
# session 16 that is really applied in one process, where run 5 computed in fp32: MIXED=no reproduces run 5).
# The machine has PyTorch but no diffusers: wheels in .whl/ (git-ignored; `bash benchmarks/gpu_wheels.sh [PKG ...]`
# fills it) are installed first if present.
# Results are packed into $OUT (at most 8 files of 16 MiB, 64 MiB together, come back; benchmarks/pack_returns.py
# halves large weights to fp16 and says what did not fit), so each stage tars what the next one needs.
set -uo pipefail
STAGE=${1:?stage: teacher | distill | bench}
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false TQDM_DISABLE=1
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 3
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
LOG="$OUT/log_$STAGE.txt"
exec > >(tee -a "$LOG") 2>&1
date -u
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
df -h /dev/shm | tail -1
python3 -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__,
    torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')" || exit 4
# each data worker holds whole batches in shared memory; fewer workers when /dev/shm is small
SHM_GB=$(( $(df -k /dev/shm | awk 'NR==2{print $4}') / 1048576 ))
WORKERS=$(( SHM_GB / 2 )); (( WORKERS > 14 )) && WORKERS=14; (( WORKERS < 1 )) && WORKERS=0
echo "shm ${SHM_GB} GB -> ${WORKERS} data workers"
ECHO=${DATA_ECHO:-1}
MP=${MIXED:+--mixed-precision $MIXED}
# SMOKE=1 (env): every stage on its config's smoke section, with no data workers: the whole call, packing included,
# checked on a CPU before a lease (tests/test_gpu_lease.py)
if [[ ${SMOKE:-0} == 1 ]]; then MP="$MP --smoke"; WORKERS=0; fi

bench() {  # $1 preset, $2 frames, $3 swap-every, $4 seconds
    local name=${1//./}
    timeout "$4" python3 -m fashionchameleon.bench --preset "$1" --device cuda --frames "$2" --swap-every "$3" \
        --random-weights --floor --json "$OUT/bench_${name}.json" || echo "bench $1 failed or timed out (rc $?)"
}

pack() {  # $1 archive name, $2 run dir: its final stage folder without the VAE (the CPU side has it), else the last
          # EMA; large weights travel in fp16 so they fit the device tool's return limits (benchmarks/pack_returns.py)
    local run=$2 items=()
    if [[ -d $run/final ]]; then
        items=("$run/final" "$run/log.csv" "$run/result.json")
    else
        local last; last=$(ls -d "$run"/step_* 2>/dev/null | sort | tail -1)
        [[ -n $last ]] && items=("$last"/ema_*_rank0.safetensors "$last/trainer_state.json" "$run/log.csv")
    fi
    (( ${#items[@]} )) && python3 benchmarks/pack_returns.py --out "$OUT" --name "${1%.tgz}" --drop vae "${items[@]}"
    return 0
}

latent_cache() {  # $1 config, $2 cache dir, $3 clips, $4 minutes, [$5 init stage]; sets DATA to the stage's data
                 # flags: the latent cache when it was built, else rendering on the fly
    local clips=$3
    DATA="--workers $WORKERS --data-echo $ECHO"
    (( clips > 0 )) || return 0
    [[ ${SMOKE:-0} == 1 ]] && clips=8
    rm -rf "$2"
    if python3 -m teacher.cache_latents --config "$1" --out "$2" --clips "$clips" --workers "$WORKERS" \
            --batch-size 64 --dtype float16 --max-minutes "$4" ${5:+--init "$5"}; then
        DATA="--latent-cache $2 --workers 0"
    else
        echo "latent cache $2 failed; the stage renders its clips on the fly"
    fi
}

dmd_pack() {  # generator EMA snapshots, most wanted first (run 5 shipped step 150: the last that passed 1,008 frames)
    local s n want PICK=() STEPS
    tar czf "$OUT/dmd_log.tgz" runs/gpu_dmd/log.csv runs/gpu_dmd/result.json 2>/dev/null
    mapfile -t STEPS < <(ls -d runs/gpu_dmd/step_* 2>/dev/null | sort)
    (( ${#STEPS[@]} )) || return 0
    PICK+=("${STEPS[-1]}/ema_generator_rank0.safetensors")
    for want in 150 100 200 50 25; do
        for s in "${STEPS[@]::${#STEPS[@]}-1}"; do
            n=$((10#${s##*_})); (( n == want )) && PICK+=("$s/ema_generator_rank0.safetensors")
        done
    done
    # the last snapshot's critic, so a CPU continuation keeps it (dmd.critic_init; run 11 lost its own)
    [[ -d ${STEPS[-1]}/critic ]] && PICK+=("${STEPS[-1]}/critic")
    python3 benchmarks/pack_returns.py --out "$OUT" --name dmd "${PICK[@]}"
}

case $STAGE in
all)  # teacher -> TF -> DMD in one call; each stage is packed as soon as it ends
    T_MIN=${2:-3}; TF_MIN=${3:-2}; DMD_MIN=${4:-2}
    python3 -m teacher.train_teacher --config teacher/configs/tiny_gpu.yaml $MP --max-minutes "$T_MIN" --workers "$WORKERS" \
        --data-echo "$ECHO"
    rc=$?; pack teacher.tgz runs/gpu_teacher; (( rc )) && { echo "teacher failed ($rc)"; exit 5; }
    python3 -m distill.train_tf --config distill/configs/tf_tiny_gpu.yaml $MP --max-minutes "$TF_MIN" --workers "$WORKERS"
    rc=$?; pack tf.tgz runs/gpu_tf; (( rc )) && { echo "TF failed ($rc)"; exit 6; }
    python3 -m distill.train_dmd --config distill/configs/dmd_tiny_gpu.yaml $MP --max-minutes "$DMD_MIN" \
        || echo "DMD failed"
    dmd_pack
    ls -la "$OUT"
    ;;
teacher)  # optional INIT: a stage folder to continue from (carry it), e.g. runs/gpu_teacher/final of run 5
    MIN=${2:-5}; INIT=${3:-}
    python3 -m teacher.train_teacher --config teacher/configs/tiny_gpu.yaml $MP --max-minutes "$MIN" --workers "$WORKERS" \
        --data-echo "$ECHO" ${INIT:+--init "$INIT" --out runs/gpu_teacher_next}
    rc=$?; pack teacher.tgz "$([[ -n $INIT ]] && echo runs/gpu_teacher_next || echo runs/gpu_teacher)"; (( rc )) && exit 5
    ;;
teacher_wide)  # from scratch: nothing to carry but .whl (the VAE is in assets/)
    MIN=${2:-8}
    latent_cache teacher/configs/tiny_wide_gpu.yaml runs/cache_wide "${CACHE_CLIPS:-40000}" "${CACHE_MIN:-1}"
    python3 -m teacher.train_teacher --config teacher/configs/tiny_wide_gpu.yaml $MP --max-minutes "$MIN" $DATA
    rc=$?; pack teacher_wide.tgz runs/gpu_teacher_wide; (( rc )) && exit 5
    # held-out scores and sheet on the machine's CPU threads (SCORE=0 skips), so the next session reads them at once
    if [[ ${SCORE:-1} == 1 ]]; then
        python3 -m teacher.sample --ckpt runs/gpu_teacher_wide/final --split test --num 24 --steps 30 --guidance 3 \
            --scheduler renoise --eta 0.6 --score --no-mp4 --threads 12 --out "$OUT/teacher_wide_n24" \
            --json "$OUT/teacher_wide_n24.json" || echo "sampling failed"
    fi
    ;;
all_wide)  # one call for the whole wide chain; held-out sampling runs afterwards on the CPU side
    T_MIN=${2:-3}; TF_MIN=${3:-1.5}; DMD_MIN=${4:-1.5}; TEACHER=runs/gpu_teacher_wide/final
    latent_cache teacher/configs/tiny_wide_gpu.yaml runs/cache_wide "${CACHE_CLIPS:-40000}" "${CACHE_MIN:-1}"
    python3 -m teacher.train_teacher --config teacher/configs/tiny_wide_gpu.yaml $MP --max-minutes "$T_MIN" $DATA
    rc=$?; pack teacher_wide.tgz runs/gpu_teacher_wide
    if (( rc )) || [[ ! -f $TEACHER/preset.json ]]; then
        # the lease is scarce: distil the published teacher (assets/checkpoints/teacher_tiny) rather than end the call
        echo "wide teacher failed ($rc); distilling assets/checkpoints/teacher_tiny instead"
        TEACHER=assets/checkpoints/teacher_tiny
    fi
    latent_cache distill/configs/tf_tiny_gpu.yaml runs/cache_tf "${TF_CACHE_CLIPS:-20000}" "${TF_CACHE_MIN:-0.5}" \
        "$TEACHER"
    python3 -m distill.train_tf --config distill/configs/tf_tiny_gpu.yaml $MP --max-minutes "$TF_MIN" $DATA \
        --init "$TEACHER"
    rc=$?; pack tf.tgz runs/gpu_tf; (( rc )) && { echo "TF failed ($rc)"; exit 6; }
    python3 -m distill.train_dmd --config distill/configs/dmd_tiny_gpu.yaml $MP --max-minutes "$DMD_MIN" \
        --teacher "$TEACHER" || echo "DMD failed"
    dmd_pack
    ls -la "$OUT"
    ;;
distill)  # optional TEACHER: the teacher stage folder to distil (default: the configs' runs/gpu_teacher/final)
    TF_MIN=${2:-4}; DMD_MIN=${3:-3}; TEACHER=${4:-}
    python3 -m distill.train_tf --config distill/configs/tf_tiny_gpu.yaml $MP --max-minutes "$TF_MIN" --workers "$WORKERS" \
        ${TEACHER:+--init "$TEACHER"}
    rc=$?; pack tf.tgz runs/gpu_tf; (( rc )) && exit 6
    python3 -m distill.train_dmd --config distill/configs/dmd_tiny_gpu.yaml $MP --max-minutes "$DMD_MIN" \
        ${TEACHER:+--teacher "$TEACHER"} || echo "DMD failed"
    dmd_pack
    ;;
real_fsdp)  # FSDP code paths (flat/sharded params, EMA, full-state-dict exports) at miniature size, ~1-2 min
    FSDP="--use_fsdp --fsdp_sharding_strategy FULL_SHARD --fsdp_auto_wrap_policy TRANSFORMER_BASED_WRAP \
          --fsdp_transformer_layer_cls_to_wrap CausalWanBlock --fsdp_state_dict_type FULL_STATE_DICT"
    for V in 1 2; do
        timeout 300 python3 benchmarks/real_path_smoke.py --out "runs/real_fsdp$V" --size 128 --frames 33 --data world \
            --launch "python3 -m accelerate.commands.launch --num_processes 1 --mixed_precision bf16 $FSDP --fsdp_version $V" \
            --expect FSDP --json "$OUT/real_fsdp$V.json" || echo "FSDP$V chain failed (rc $?)"
    done
    timeout 300 python3 benchmarks/real_path_smoke.py --out runs/real_plain --size 128 --frames 33 --data world \
        --json "$OUT/real_plain.json" || echo "plain chain failed (rc $?)"
    ;;
bench)
    bench wan2.1-1.3b 96 48 150
    bench wan2.2-5b 72 36 200
    bench tiny 240 96 60
    ;;
bench_hybrid)  # the real-path presets with the Wan encoder and a FastVAE decoder (HybridVAE), as a distilled
               # decoder streams: decode and swap re-encode priced together (bench --vae hybrid)
    for p in wan2.1-1.3b:96:48 wan2.2-5b:72:36; do
        IFS=: read -r name frames every <<< "$p"
        timeout 200 python3 -m fashionchameleon.bench --preset "$name" --device cuda --frames "$frames" \
            --swap-every "$every" --random-weights --vae hybrid --json "$OUT/bench_${name//./}_hybrid.json" \
            || echo "bench $name hybrid failed or timed out (rc $?)"
    done
    ;;
*) echo "unknown stage $STAGE"; exit 2;;
esac
date -u
