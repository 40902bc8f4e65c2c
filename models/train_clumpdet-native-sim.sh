#!/usr/bin/env bash
# The exact commands that trained the bundled default model (models/clumpdet-native-sim.md).
set -euo pipefail
.venv/bin/clumpdet simulate --n 3000 --seed 1 --out data/sim_train --workers 2
.venv/bin/clumpdet simulate --n 300 --seed 2 --out data/sim_val --workers 2
.venv/bin/clumpdet train --preset native --data data/sim_train --val-data data/sim_val \
    --epochs 4 --max-images 1200 --batch-size 4 --roi-batch 128 --threads 2 --seed 0 --out runs/native-sim --log-every 25
