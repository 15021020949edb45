#!/bin/bash
# How long a pretraining run lives after writing pretrain_results.json, its
# last act: time spent tearing down (tf.data iterators, threads) at exit.
#   bash experiments/exit_wait.sh [main.py overrides...]
# e.g. bash experiments/exit_wait.sh --config.train_steps=60 --config.plots.enabled=False
cd "$(dirname "$0")/.."
workdir=$(mktemp -d /tmp/sslx_exit_wait.XXXX)
start=$(date +%s.%N)
python main.py --config=${CONFIG:-configs/moco.py:v3} --workdir="$workdir" "$@" > /dev/null 2>&1
end=$(date +%s.%N)
written=$(stat -c %.3Y "$workdir/pretrain_results.json")
python3 -c "print(f'wall {$end - $start:.1f} s; exited {$end - $written:.1f} s after writing its results')"
rm -rf "$workdir"
