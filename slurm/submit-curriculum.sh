#!/bin/bash
# Submit a curriculum as a chain of Slurm jobs: one job per stage (slurm/stage.sbatch), each waiting with
# --dependency=afterok for the job of the stage it starts from, so a failed stage stops everything after it.
#
#   slurm/submit-curriculum.sh CURRICULUM.toml ROOT [--seeds N] [--ntasks N] [-- extra sbatch options]
#
# --seeds N submits every stage as a job array 0..N-1 (seed = array index, runs in ROOT/seed-K/<stage>).
# Prints "<stage> <job id>" per stage. Run it with lrun on PATH (e.g. `source .venv/bin/activate`).
set -euo pipefail
usage() { echo "usage: $0 CURRICULUM.toml ROOT [--seeds N] [--ntasks N] [-- sbatch options]" >&2; exit 2; }
[ $# -ge 2 ] || usage
curriculum=$(realpath "$1")
root=$(realpath -m "$2")
shift 2
seeds=0
ntasks=3
while [ $# -gt 0 ]; do
    case "$1" in
        --seeds) seeds=$2; shift 2 ;;
        --ntasks) ntasks=$2; shift 2 ;;
        --) shift; break ;;
        *) usage ;;
    esac
done
here=$(dirname "$(realpath "$0")")
mkdir -p "$root"
array=()
output="$root/slurm-%x-%j.out"
if [ "$seeds" -gt 0 ]; then
    array=(--array="0-$((seeds - 1))")
    output="$root/slurm-%x-%A_%a.out"
fi

declare -A job_of
while read -r stage parent; do
    dependency=()
    if [ "$parent" != "-" ]; then
        dependency=(--dependency="afterok:${job_of[$parent]}")
    fi
    job_of[$stage]=$(sbatch --parsable --job-name="lrun-$stage" --ntasks="$ntasks" --output="$output" \
        "${array[@]}" "${dependency[@]}" \
        --export="ALL,LRUN_CURRICULUM=$curriculum,LRUN_STAGE=$stage,LRUN_ROOT=$root" "$@" "$here/stage.sbatch")
    echo "$stage ${job_of[$stage]}"
done < <(lrun curriculum "$curriculum" --list --with-parents)
