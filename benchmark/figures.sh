#!/usr/bin/env bash
# The learning curves in docs/: 3 seeds of each variant on the tests' small local datasets (written first, into
# runs/figures/datasets), then benchmark/results.py --plot. Run from the repository's folder:
#   bash benchmark/figures.sh [iql|idql|finetune ...]     (default: all three; 2 runs at a time, 1 thread each)
set -euo pipefail
export MINARI_DATASETS_PATH=$PWD/runs/figures/datasets OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1
[ -d "$MINARI_DATASETS_PATH/D4RL/pointmaze/umaze-v2" ] || python tests/conftest.py "$MINARI_DATASETS_PATH"
maze="--env-id D4RL/pointmaze/umaze-v2 --eval-episodes 100 --no-save-model"
runs() {  # runs() NAME: the runs listed on stdin, "SCRIPT FLAGS..." a line, 2 at a time, into runs/figures/NAME
  sed "s|$| --runs-dir runs/figures/$1|" | xargs -P "${JOBS:-2}" -L 1 sh -c 'python "$@" >/dev/null' python
}
[ $# -gt 0 ] || set -- iql idql finetune
for figure in "$@"; do
  start=$SECONDS
  case $figure in
    iql) for s in 1 2 3; do
        echo "iql.py $maze --total-steps 20000 --eval-interval 2500 --hidden-dim 64 --seed $s --run-name relabel_s$s"
        echo "iql.py $maze --total-steps 20000 --eval-interval 2500 --hidden-dim 64 --seed $s --run-name minari_s$s --no-relabel"
      done | runs iql ;;
    idql) for s in 1 2 3; do
        for selection in argmax implicit; do
          echo "idql.py $maze --critic-steps 20000 --actor-steps 5000 --actor-batch-size 256 --actor-hidden-dim 64" \
            "--actor-num-blocks 2 --hidden-dim 64 --num-samples 16 --eval-interval 2500 --seed $s" \
            "--selection $selection --run-name ${selection}_s$s"
        done
      done | runs idql ;;
    finetune) for s in 1 2 3; do
        echo "iql_finetune.py $maze --offline-steps 3000 --online-steps 6000 --eval-interval 1000 --seed $s --run-name online_s$s"
        echo "iql_finetune.py $maze --offline-steps 9000 --online-steps 0 --eval-interval 1000 --seed $s --run-name offline_s$s"
      done | runs finetune ;;
    *) echo "figures.sh: no figure '$figure' (iql, idql, finetune)" >&2; exit 2 ;;
  esac
  python benchmark/results.py "runs/figures/$figure" --plot "docs/${figure/finetune/iql_finetune}_pointmaze.png"
  echo "$figure: $((SECONDS - start)) s"
done
