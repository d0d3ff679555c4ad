#!/bin/bash
# The same lease's last minutes: round-2 evaluations (100 episodes, seed 4242) of the two checkpoints that
# round2-memory.sh returned, copied to runs/dev2/{memory,more}/checkpoint.pt here and carried; 8 ranks each, stopped
# with SIGINT at END. Each finished episode is on disk, so `lrun eval ... --resume` finishes them on any machine.
source .dev/setup.sh
for a in memory more; do
  timeout -s INT -k 20 $((END - $(date +%s))) mpiexec -n 8 lrun eval runs/dev2/$a/checkpoint.pt --setting round2 \
    --episodes 100 --seed 4242 --out runs/dev2/$a/eval >runs/dev2/$a-eval.log 2>&1 &
done
wait
echo "evals stopped at $(($(date +%s) - T0)) s" >>$M
tar -czf "$OUT/evals.tgz" runs/dev2/*/eval runs/dev2/*-eval.log
cp $M "$OUT/"
