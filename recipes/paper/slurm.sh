#!/usr/bin/env bash
# Multi-node training with Slurm: one torchrun per node, c10d rendezvous on the first node.
#   sbatch recipes/paper/slurm.sh stages/joint.yaml exp/paper/joint [key=value ...]
# Environment: RDZV_PORT, the rendezvous port on the first node (default 29500); THREADS_PER_RANK, each rank's
# OpenMP threads (default 8). tests/test_slurm.py runs this script on two simulated nodes of one machine.
#SBATCH --job-name=e2e-tts
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=72:00:00
set -euo pipefail
stage_yaml=${1:?stage spec, e.g. stages/joint.yaml}
output_dir=${2:?output directory}
shift 2
head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
head_ip=$(srun --nodes=1 --ntasks=1 -w "$head_node" hostname --ip-address | awk '{print $1}')
export OMP_NUM_THREADS=${THREADS_PER_RANK:-8}
# Every node runs the same command; torchrun assigns RANK/LOCAL_RANK/WORLD_SIZE, and the engine picks the GPU
# by LOCAL_RANK. A restart of the job resumes from $output_dir/checkpoints/latest.
srun .venv/bin/python -m torch.distributed.run \
  --nnodes "$SLURM_NNODES" --nproc_per_node "$SLURM_GPUS_PER_NODE" \
  --rdzv_id "$SLURM_JOB_ID" --rdzv_backend c10d --rdzv_endpoint "$head_ip:${RDZV_PORT:-29500}" \
  -m e2e_tts.train -c recipes/paper/config.yaml -c "$stage_yaml" output_dir="$output_dir" "$@"
