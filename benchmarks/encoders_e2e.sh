#!/bin/bash
# Issue 9 item 6: end-to-end cost of Lite0 and the candidate encoders, interleaved.
# Three rounds, each encoder once per round in a rotated order, every run a fresh process
# (bench_engine's cold worker: engine.refine at 128 µm, feature cache emptied first) on the same
# small real-texture slide. Run from the repository root: benchmarks/encoders_e2e.sh [DIR]
# Writes DIR/cold-ENCODER-rROUND.json; BENCHMARKS.md ("Encoders (issue 9 item 6)") compares
# their CPU seconds per patch, which a busy machine disturbs far less than wall time.
set -euo pipefail
D=${1:-benchmarks/results/tmp/bench}
PY=${PYTHON:-python}
export OMP_NUM_THREADS=2 PYTHONHASHSEED=0
META=$($PY -c "
from pathlib import Path
from benchmarks.bench_engine import build_slide
from engine.encoders import build_encoder
m = build_slide(Path('$D'), 40, 36, 'zlib')
for e in ('lite0', 'lite1', 'lite2', 'lite0-blocks'):  # the one-time ONNX exports, not measured
    build_encoder('efficientnet-' + e, Path('$D') / 'cache')
print(Path(m['path']).with_suffix('.json'))
" | tail -n 1)
orders=("lite0 lite1 lite2 lite0-blocks" "lite2 lite0-blocks lite0 lite1" "lite1 lite0 lite0-blocks lite2")
for r in 0 1 2; do
  for e in ${orders[$r]}; do
    rm -rf "$D/cache/features"
    $PY -m benchmarks.bench_engine --worker cold --meta "$META" --dir "$D" \
      --encoder "efficientnet-$e" | tail -n 1 > "$D/cold-$e-r$r.json"
    echo "round $r $e done"
  done
done
