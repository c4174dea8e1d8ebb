#!/usr/bin/env bash
# Screenshots of what a person sees first in TensorBoard and MLflow for a finished run, taken in a
# real browser (headless Chromium; Debian: apt-get install -y chromium). docs/first-week.md shows them.
#
#   scripts/dashboard_screenshots.sh RUNS_DIR MLFLOW_DB OUT_DIR [EXPERIMENT]
#
# RUNS_DIR: the --logdir for TensorBoard (e.g. experiments/runs); MLFLOW_DB: the SQLite file of the
# run's MLflow store (e.g. experiments/mlflow.db); EXPERIMENT: the MLflow experiment whose latest run
# is shown (default: the latest run of any experiment). Both servers listen on 127.0.0.1 only and are
# stopped by PID when the script ends.
set -euo pipefail

runs_dir=${1:?RUNS_DIR}
db=${2:?MLFLOW_DB}
out=${3:?OUT_DIR}
experiment=${4:-}
python=${PYTHON:-python}
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
[ -n "$browser" ] || { echo "error: no chromium found (Debian: apt-get install -y chromium)" >&2; exit 2; }
mkdir -p "$out"
tb_port=${TB_PORT:-6106}
ml_port=${MLFLOW_PORT:-5106}
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT

wait_http() {  # the server answers, or give up after 60 s
  for _ in $(seq 120); do
    if "$python" -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=1)" "$1" 2>/dev/null; then return 0; fi
    sleep 0.5
  done
  echo "error: $1 did not answer" >&2
  return 1
}

shot() {  # URL FILE [WIDTHxHEIGHT]
  local size=${3:-1280,800}
  # Software WebGL draws TensorBoard's charts. A generous virtual-time budget and drawing every compositor stage: the dashboards fetch their data
  # after the page loads and draw charts lazily.
  "$browser" --headless --no-sandbox --use-gl=swiftshader --enable-unsafe-swiftshader --hide-scrollbars --virtual-time-budget=60000 \
    --run-all-compositor-stages-before-draw --window-size="$size" --screenshot="$2" "$1" >/dev/null 2>&1
  echo "wrote $2"
}

"$python" -m tensorboard.main --logdir "$runs_dir" --host 127.0.0.1 --port "$tb_port" >"$out/.tensorboard.log" 2>&1 &
pids+=($!)
"$python" -m mlflow ui --backend-store-uri "sqlite:///$(realpath "$db")" --host 127.0.0.1 --port "$ml_port" >"$out/.mlflow.log" 2>&1 &
pids+=($!)

wait_http "http://127.0.0.1:$tb_port/"
shot "http://127.0.0.1:$tb_port/?tagFilter=val#timeseries" "$out/tensorboard-timeseries.png" 1440,900
shot "http://127.0.0.1:$tb_port/#hparams" "$out/tensorboard-hparams.png"

read -r exp_id run_id < <("$python" - "$db" "$experiment" <<'EOF'
import sys

import mlflow

client = mlflow.MlflowClient(f"sqlite:///{sys.argv[1]}")
names = [sys.argv[2]] if sys.argv[2] else [e.name for e in client.search_experiments()]
ids = [e.experiment_id for e in (client.get_experiment_by_name(n) for n in names) if e is not None]
run = client.search_runs(ids, order_by=["attributes.start_time DESC"], max_results=1)[0]
print(run.info.experiment_id, run.info.run_id)
EOF
)
wait_http "http://127.0.0.1:$ml_port/"
base="http://127.0.0.1:$ml_port/#/experiments/$exp_id/runs/$run_id"
shot "$base" "$out/mlflow-run.png" 1280,1000
shot "$base/system-metrics" "$out/mlflow-system-metrics.png"
rm -f "$out/.tensorboard.log" "$out/.mlflow.log"
# Lossy palette compression keeps the PNGs small enough to commit (Debian: apt-get install -y pngquant).
if command -v pngquant >/dev/null; then
  for f in "$out"/*.png; do pngquant --force --skip-if-larger --quality=70-90 --output "$f" "$f" || true; done
fi
