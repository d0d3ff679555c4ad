#!/bin/bash
# Builds .dev/ (ignored by git: add "/.dev/" to .git/info/exclude) for a lent 16-core device machine that has
# Python 3.12 with torch, numpy and h5py but no OpenSim, MPI wheel or gymnasium, and no network. Everything
# that travels must fit its 64 MiB limit with the repository, so the OpenSim wheel (72 MB) is repacked: byte-identical
# copies of its libraries become links and CasADi's dlopened plugins (Moco's solvers, unused here) are dropped,
# then xz; stripping the libraries breaks them (auditwheel's patched ELF headers). Result: ~48 MB.
# Run from the repository root with the .venv made by `make install`.
set -euo pipefail
PY=cp312
W=.dev/whl
mkdir -p $W /tmp/lrun-dev
MPI4PY=$(.venv/bin/python -c 'import mpi4py; print(mpi4py.__version__)')
dl() { python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_5_x86_64 -d "$@"; }
dl $W mpich==5.0.2 "mpi4py==$MPI4PY" gymnasium==1.4.0 farama-notifications==0.0.6
dl /tmp/lrun-dev opensim==4.6
rm -rf /tmp/lrun-dev/os && mkdir /tmp/lrun-dev/os && (cd /tmp/lrun-dev/os && unzip -q ../opensim-4.6-*-$PY-*.whl)
for d in opensim opensim.libs; do
  (
    cd /tmp/lrun-dev/os/$d
    declare -A seen=()
    for f in $(ls -S *.so* 2>/dev/null); do
      [ -L "$f" ] && continue
      h=$(md5sum "$f" | cut -d' ' -f1)
      if [ -n "${seen[$h]:-}" ]; then ln -sf "${seen[$h]}" "$f"; else seen[$h]="$f"; fi
    done
    rm -f libcasadi_*.so*
  )
done
tar -cJf .dev/opensim312.tar.xz -C /tmp/lrun-dev/os opensim opensim.libs
cp "$(.venv/bin/python -c 'import lrun.env.model as m; print(m.find_model_file())')" .dev/
cp experiments/device/*.sh .dev/
du -sh .dev
