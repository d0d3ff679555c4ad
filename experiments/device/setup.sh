#!/bin/bash
# Sourced by a device job (see README.md): makes a Python 3.12 venv at /tmp/v from the wheels in .dev/whl and the
# repacked OpenSim, with the image's site-packages (torch, numpy, h5py) behind it, puts lrun and MPICH's mpiexec on
# PATH, and runs a smoke test (a 2-episode eval and a 2-iteration blended SAC run); it exits 3 when either fails.
# Sets T0 (start) and END (T0 + BUDGET seconds, default 530) and the log M. SMOKE=0 keeps only the import check
# (for a job whose own first minute shows whether it runs, when every second of the lease is wanted).
set -u
T0=$(date +%s)
END=$((T0 + ${BUDGET:-530}))
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p runs/dev
M=runs/dev/misc.log
if [ -n "${LOCAL:-}" ]; then  # a dry run of this script's logic on the 2-core machine, with its .venv
  export PATH=$PWD/.venv/bin:$PATH PYTHONPATH=$PWD
else
  IMG=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') &&
    python3 -m venv /tmp/v >>$M 2>&1 &&
    /tmp/v/bin/pip install -q --no-index --no-deps --no-compile .dev/whl/*.whl >>$M 2>&1 &&
    SP=$(/tmp/v/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') &&
    echo "$IMG" >"$SP/zz-image.pth" &&
    tar -xJf .dev/opensim312.tar.xz -C "$SP" >>$M 2>&1 &&
    printf '#!/tmp/v/bin/python\nimport sys\nfrom lrun.cli import main\nsys.exit(main())\n' >/tmp/v/bin/lrun &&
    chmod +x /tmp/v/bin/lrun || { echo SETUP FAILED >>$M; cp $M "$OUT/"; exit 1; }
  echo "setup took $(($(date +%s) - T0)) s" >>$M
  export PATH=/tmp/v/bin:$PATH PYTHONPATH=$PWD LRUN_MODEL_FILE=$PWD/.dev/gait9dof18musc.osim
fi
{
  echo "image site-packages ${IMG:-}"; env -u OMP_NUM_THREADS nproc; python --version; lscpu | grep -i "model name"
  python -c "import torch, numpy, h5py, opensim, mpi4py; print(torch.__version__, numpy.__version__, h5py.__version__, opensim.__version__, mpi4py.__version__)" &&
    echo IMPORTS OK
  if [ "${SMOKE:-1}" != 0 ]; then
    timeout 150 mpiexec -n 2 lrun eval models/walk --episodes 2 --difficulty 0 --physics fast --out /tmp/smoke --overwrite
    timeout 120 mpiexec -n 3 lrun train experiments/recipes/transfer-round2.toml --set run.iterations=2 \
      --set layout.steps_per_env=8 --set sac.learning_starts=64 --set run.run_dir=/tmp/smoketrain --set blend.source=models/walk
  fi
} >>$M 2>&1
if [ "${SMOKE:-1}" = 0 ]; then
  grep -q "^IMPORTS OK" $M || { echo IMPORTS FAILED >>$M; cp $M "$OUT/"; exit 3; }
elif ! grep -q "distance   mean" $M || ! grep -q "iter 2/2" $M; then echo SMOKE FAILED >>$M; cp $M "$OUT/"; exit 3; fi
echo "smoke done at $(($(date +%s) - T0)) s" >>$M

