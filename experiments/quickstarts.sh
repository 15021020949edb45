#!/bin/bash
# The README's quick starts, one after the other on the otherwise idle machine,
# then the comparison job. FRESH=1 first empties XLA's persistent compilation
# cache (config.compilation_cache_dir, ~/.cache/sslx/xla), so the first run
# compiles everything as on a new machine and the later ones reuse what the
# runs before them compiled (feature extraction, probes, the from-scratch step).
cd "$(dirname "$0")/.."
[ "${FRESH:-0}" = 1 ] && rm -rf ~/.cache/sslx/xla
for pair in "byol configs/byol.py" "simclr configs/simclr.py" "moco configs/moco.py" "moco_v3 configs/moco.py:v3" "rotnet configs/rotnet.py"; do
  set -- $pair
  rm -rf /tmp/sslx_$1
  /usr/bin/time -f "%e s wall" python main.py --config=$2 --workdir=/tmp/sslx_$1 > ${LOGDIR:-/tmp}/qs_$1.out 2> ${LOGDIR:-/tmp}/qs_$1.err
done
python main.py --config=configs/compare.py --workdir=/tmp/sslx_compare \
  --config.runs=/tmp/sslx_byol,/tmp/sslx_simclr,/tmp/sslx_moco,/tmp/sslx_moco_v3,/tmp/sslx_rotnet > ${LOGDIR:-/tmp}/compare.out 2> ${LOGDIR:-/tmp}/compare.err
