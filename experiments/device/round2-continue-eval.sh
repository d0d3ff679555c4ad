#!/bin/bash
# The same lease's last minutes, on the still-warm machine (runs/dev survives between calls there): round-2
# evaluations (100 episodes, seed 4242, the headline's first 100) of round2-continue.sh's two final policies,
# 8 ranks each, stopped with SIGINT at END. Every finished episode is on disk, so `lrun eval ... --resume`
# finishes them on any machine (the checkpoints come back in the tarballs of the training call).
if [ -x /tmp/v/bin/lrun ]; then  # the training call's venv is still there
  T0=$(date +%s); END=$((T0 + ${BUDGET:-250})); M=runs/dev/misc.log
  export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PATH=/tmp/v/bin:$PATH PYTHONPATH=$PWD \
    LRUN_MODEL_FILE=$PWD/.dev/gait9dof18musc.osim
else
  SMOKE=0 source .dev/setup.sh
fi
for a in starts25k lr1e4; do
  timeout -s INT -k 20 $((END - $(date +%s))) mpiexec -n 8 lrun eval runs/dev/$a --setting round2 \
    --episodes 100 --seed 4242 --out runs/dev/$a-eval >runs/dev/$a-eval.log 2>&1 &
done
wait
echo "evals stopped at $(($(date +%s) - T0)) s" >>$M
tar -czf "$OUT/evals.tgz" runs/dev/*-eval runs/dev/*-eval.log
cp $M "$OUT/"
