#!/bin/bash
# The README's quick starts, one after the other on the otherwise idle machine,
# then the comparison job. FRESH=1 first empties XLA's persistent compilation
# cache (config.compilation_cache_dir, ~/.cache/sslx/xla), so the first run
# compiles everything as on a new machine and the later ones reuse what the
# runs before them compiled (feature extraction, probes, the from-scratch step).
cd "$(dirname "$0")/.."
[ "${FRESH:-0}" = 1 ] && rm -rf ~/.cache/sslx/xla
for pair in "byol configs/byol.py" "simclr configs/simclr.py" "moco configs/moco.py" "moco_v3 configs/moco.py:v3" "rotnet configs/rotnet.py" \
            "relative_patch configs/relative_patch.py" "jigsaw configs/jigsaw.py" \
            "colorization configs/colorization.py" "context_encoder configs/context_encoder.py" \
            "exemplar configs/exemplar.py" "instance_discrimination configs/instance_discrimination.py" \
            "cpc configs/cpc.py" "supervised configs/supervised.py"; do
  set -- $pair
  rm -rf /tmp/sslx_$1
  /usr/bin/time -f "%e s wall" python main.py --config=$2 --workdir=/tmp/sslx_$1 > ${LOGDIR:-/tmp}/qs_$1.out 2> ${LOGDIR:-/tmp}/qs_$1.err
done
python main.py --config=configs/compare.py --workdir=/tmp/sslx_compare \
  --config.runs=/tmp/sslx_byol,/tmp/sslx_simclr,/tmp/sslx_moco,/tmp/sslx_moco_v3,/tmp/sslx_rotnet,/tmp/sslx_relative_patch,/tmp/sslx_jigsaw,/tmp/sslx_colorization,/tmp/sslx_context_encoder,/tmp/sslx_exemplar,/tmp/sslx_instance_discrimination,/tmp/sslx_cpc,/tmp/sslx_supervised > ${LOGDIR:-/tmp}/compare.out 2> ${LOGDIR:-/tmp}/compare.err
