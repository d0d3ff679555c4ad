#!/bin/bash
# The device job of 2026-12-04 (third lease): why does a continued SAC run lose skill? round2-more.toml (plain
# init from models/round2, last lease's control: 41 falls against the parent's 25 on the same 100 round-2
# episodes) again, side by side on 8 ranks each with the same layout, seed and stop, changed in one thing each:
#   starts25k: sac.learning_starts = 25000 decisions (~25 iterations): the first update sees a buffer of the
#              parent's own behaviour 5x as large (the recipe's 5000 fill it for ~5 iterations);
#   lr1e4:     sac.learning_rate = 1e-4 (the recipe's 3e-4): smaller steps on the same small buffer.
# 1 learner + 7 simulators x 8 envs x 18 decisions x frame skip 4 = 4032 env steps an iteration, stopped with
# SIGINT at END (lrun checkpoints at the iteration's end). Device command: `BUDGET=... SMOKE=0 bash
# .dev/round2-continue.sh` with `.dev` carried; round2-continue-eval.sh scores the results on the same machine.
source .dev/setup.sh
ITER=${ITER:-62}
arm() {  # name, overrides...
  local name=$1
  shift
  timeout -s INT -k 40 $((END - $(date +%s))) mpiexec -n 8 lrun train experiments/recipes/round2-more.toml \
    --set layout.steps_per_env=18 --set run.iterations="$ITER" --set run.checkpoint_every=20 \
    --set run.run_dir=runs/dev/"$name" "$@" >runs/dev/"$name".log 2>&1
  echo "$name rc=$? at $(($(date +%s) - T0)) s" >>$M
}
arm starts25k --set sac.learning_starts=25000 &
arm lr1e4 --set sac.learning_rate=1e-4 &
wait
echo "all done at $(($(date +%s) - T0)) s" >>$M
for a in starts25k lr1e4; do
  tar -czf "$OUT/$a.tgz" --exclude='*.h5' runs/dev/$a runs/dev/$a.log
done
cp $M "$OUT/"
ls -la "$OUT"
