#!/bin/bash
# The device job of 2026-12-04 (second lease): does remembering the last passed obstacle help? round2-memory.toml
# (relative-v2) against its control round2-more.toml (relative-v1), both continuing models/round2 with the same
# seed, side by side on 8 ranks each: 1 learner (as the recipes: the same updates per decision and minibatch) + 7
# simulators x 8 envs x 18 decisions x frame skip 4 = 4032 env steps an iteration (the recipes' 4096 on 2
# simulators, nearly), 62 iterations = 0.25 M env steps. Runs stop
# with SIGINT at END (lrun checkpoints at the iteration's end); each run comes back as a tarball without its HDF5
# files. Device command: `BUDGET=... SMOKE=0 bash .dev/round2-memory.sh` with `.dev` carried.
source .dev/setup.sh
ITER=${ITER:-62}
arm() {  # name, recipe
  timeout -s INT -k 40 $((END - $(date +%s))) mpiexec -n 8 lrun train "$2" --set layout.steps_per_env=18 \
    --set run.iterations="$ITER" --set run.checkpoint_every=10 \
    --set run.run_dir=runs/dev/"$1" >runs/dev/"$1".log 2>&1
  echo "$1 rc=$? at $(($(date +%s) - T0)) s" >>$M
}
arm memory experiments/recipes/round2-memory.toml &
arm more experiments/recipes/round2-more.toml &
wait
echo "all done at $(($(date +%s) - T0)) s" >>$M
for a in memory more; do
  tar -czf "$OUT/$a.tgz" --exclude='*.h5' runs/dev/$a runs/dev/$a.log
done
cp $M "$OUT/"
ls -la "$OUT"
