#!/bin/bash
# The device job of 2026-12-04: seed 1 of the SAC transfer study (blend, clone, scratch, init) and the PPO clone arm
# with target_kl 0.1, each on mpiexec -n 3 (1 learner + 2 simulators, as the study's seed 0 ran), side by side.
# Runs stop with SIGINT at END (lrun checkpoints at the iteration's end); tarballs of the runs go to $OUT.
source .dev/setup.sh
S=experiments/recipes/transfer-round2.toml
P=experiments/recipes/transfer-round2-ppo.toml
arm() {  # name, lrun arguments...; stopped with SIGINT (lrun checkpoints at the iteration's end) at END
  local name=$1
  shift
  timeout -s INT -k 40 $((END - $(date +%s))) mpiexec -n 3 lrun "$@" >runs/dev/$name.log 2>&1
  echo "$name rc=$? at $(($(date +%s) - T0)) s" >>$M
}
arm blend transfer-study models/walk $S --out runs/dev/blend-s1 --methods blend --set run.seed=1 &
arm scratch transfer-study models/walk $S --out runs/dev/scratch-s1 --methods scratch --set run.seed=1 &
arm init transfer-study models/walk $S --out runs/dev/init-s1 --methods init --set run.seed=1 &
timeout -s INT -k 40 $(( (END - $(date +%s)) < 200 ? END - $(date +%s) : 200 )) mpiexec -n 7 lrun eval models/walk --difficulty 2 --obstacles 10 --weakening graders-2017 \
  --physics fast --stochastic --episodes 300 --seed 7000 --out runs/walk-states-round2 >runs/dev/walk-states.log 2>&1
echo "walk-states rc=$? at $(($(date +%s) - T0)) s" >>$M
arm clone transfer-study models/walk $S --out runs/dev/clone-s1 --methods clone --set run.seed=1 \
  --set clone.store=runs/walk-states-round2 &
arm ppo transfer-study models/walk $P --out runs/dev/ppo-kl01 --methods clone --set ppo.target_kl=0.1 \
  --set clone.store=runs/walk-states-round2 &
wait
echo "all done at $(($(date +%s) - T0)) s" >>$M
for a in blend scratch init clone; do
  tar -czf "$OUT/$a.tgz" --exclude='*.h5' --exclude='iter-*.pt' runs/dev/$a-s1 runs/dev/$a.log
done
tar -czf "$OUT/ppo.tgz" --exclude='*.h5' --exclude='iter-*.pt' runs/dev/ppo-kl01 runs/dev/ppo.log
tar -czf "$OUT/misc.tgz" runs/dev/misc.log runs/dev/walk-states.log runs/walk-states-round2/eval.json
cp $M "$OUT/"
ls -la "$OUT"
