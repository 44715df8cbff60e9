#!/usr/bin/env bash
# deploy/local/compare.sh --quick end to end on real daemons: every run of the quick
# grid finishes with per-epoch figures that agree with its log, a final w of the
# model's size and sharpness figures; the table's means and standard deviations are
# those of the runs' JSON, recomputed here; the plots are PNG images; the fresh-noise
# runs are skipped while gnc-server has no --gnc_noise, and say so; a second call
# redoes nothing.
# Usage: compare_quick_test.sh BUILD_DIR. Exit 77 (skipped) without matplotlib.
set -euo pipefail

build=$1
repo=$(cd "$(dirname "$0")/../.." && pwd)
python=/usr/bin/python3
if ! "$python" -c "import matplotlib" 2>/dev/null; then
  echo "SKIP: $python cannot import matplotlib (deploy/local/install-deps.sh --tests installs it)"
  exit 77
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/gnc-compare-test.XXXXXX")
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

out=$work/quick
st=0
timeout 900 "$repo/deploy/local/compare.sh" --quick --out "$out" --build_dir "$build" \
  >"$work/first.log" 2>&1 || st=$?
cat "$work/first.log"
((st == 0)) || fail "compare.sh --quick exited $st"
"$repo/deploy/local/compare.sh" --quick --list >"$work/ids"
if "$build/server/gnc-server" --check_config --gnc_noise=fresh >/dev/null 2>&1; then
  fresh=1
else
  fresh=0
  grep -q "gnc-server has no --gnc_noise" "$work/first.log" || fail "no word about --gnc_noise"
fi

"$python" - "$out" "$work/ids" "$fresh" <<'PY'
import json, math, os, re, statistics, sys
out, ids_path, fresh = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
ids = open(ids_path).read().split()
params = {"mlp": 784 * 256 + 256 + 256 * 128 + 128 + 128 * 10 + 10,
          "cnn": (8 * 25 + 8) + (16 * 25 * 8 + 16) + (256 * 128 + 128) + (128 * 10 + 10)}
def fail(msg):
    sys.exit("FAIL: " + msg)
runs = []
for rid in ids:
    d = os.path.join(out, "runs", rid)
    if "-fresh-" in rid and not fresh:
        if os.path.exists(os.path.join(d, "run.json")):
            fail(f"{rid} ran although the server has no --gnc_noise")
        continue
    r = json.load(open(os.path.join(d, "run.json")))
    runs.append(r)
    if r["status"] != "ok":
        fail(f"{rid}: status {r['status']}")
    ep = r["epochs"]
    if [e["data_epoch"] for e in ep] != list(range(1, r["epochs_planned"] + 1)):
        fail(f"{rid}: epochs {[e['data_epoch'] for e in ep]}")
    # Fresh noise: two passes (minibatches) per optimizer step, at the previous timing's
    # number of optimizer steps; the plotted epoch counts optimizer steps.
    passes = 2 if r["noise_timing"] == "fresh" else 1
    if any(e["epoch"] * passes != e["data_epoch"] for e in ep):
        fail(f"{rid}: epochs of optimizer steps {[e['epoch'] for e in ep]}")
    log = open(os.path.join(d, "train.log")).read()
    m = re.search(r"\[worker 0\] final test accuracy ([0-9.]+) loss ([0-9.]+)", log)
    if not m or float(m.group(1)) != r["final_test_accuracy"] or \
            ep[-1]["test_accuracy"] != r["final_test_accuracy"]:
        fail(f"{rid}: final accuracy {r['final_test_accuracy']} is not the log's")
    for e in ep[:-1]:
        if f"epoch {e['data_epoch']}/{r['epochs_planned']} test accuracy {e['test_accuracy']:.4f}" not in log:
            fail(f"{rid}: epoch {e['data_epoch']} accuracy not in the log")
    if passes == 2 and "with fresh noise" not in log:
        fail(f"{rid}: the shards did not run the fresh noise timing")
    if not all(e["train_loss"] is not None and e["train_loss"] > 0 for e in ep):
        fail(f"{rid}: missing training losses")
    if not r["final_test_accuracy"] > 0.25:  # chance is 0.1
        fail(f"{rid}: test accuracy {r['final_test_accuracy']} no better than chance")
    if os.path.getsize(os.path.join(d, "w.f32")) != 4 * params[r["model"]]:
        fail(f"{rid}: w.f32 is not {params[r['model']]} float32")
    s = r["sharpness"]
    if not (s["top_eigenvalue"] > 0 and math.isfinite(s["top_eigenvalue"]) and
            s["noise_var_mean"] > 0 and s["epsilon_sharpness"] >= 0 and
            s["power_iterations"] >= 1 and s["noise_ratio_top"] > 0):
        fail(f"{rid}: sharpness {s}")
    if abs(s["train_loss"] - ep[-1]["train_loss"]) > 1.0:
        fail(f"{rid}: loss at w {s['train_loss']} far from the last epoch's {ep[-1]['train_loss']}")
if statistics.mean(r["final_test_accuracy"] for r in runs) < 0.5:
    fail("the quick grid learned little: mean test accuracy below 0.5")

# The table against the runs, recomputed.
rows = [l for l in open(os.path.join(out, "table.md")) if l.startswith("| ") and
        not l.startswith("| model")]
groups = {}
for r in runs:
    key = (r["model"], str(r["global_batch"]), r["mode"],
           "—" if r["mode"] == "none" else f"{r['rho']:g}",
           "—" if r["mode"] == "none" else r["noise_timing"])
    groups.setdefault(key, []).append(r)
if len(rows) != len(groups):
    fail(f"table has {len(rows)} rows for {len(groups)} settings")
for row in rows:
    cells = [c.strip() for c in row.strip().strip("|").split("|")]
    rs = groups.get(tuple(cells[:5]))
    if rs is None:
        fail(f"table row for an unknown setting: {cells[:5]}")
    accs = [r["final_test_accuracy"] for r in rs]
    want = f"{statistics.mean(accs):.4f}" + (f" ± {statistics.stdev(accs):.4f}" if len(accs) > 1 else "")
    if cells[5] != f"{len(rs)} (0)" or cells[6] != want:
        fail(f"row {cells[:4]}: {cells[5]} {cells[6]}, want {len(rs)} (0) {want}")
    eig = [r["sharpness"]["top_eigenvalue"] for r in rs]
    if not cells[9].startswith(f"{statistics.mean(eig):.4g}"):
        fail(f"row {cells[:4]}: eigenvalue {cells[9]}, want mean {statistics.mean(eig):.4g}")
lines = open(os.path.join(out, "results.csv")).read().splitlines()
if len(lines) != len(runs) + 1:
    fail(f"results.csv has {len(lines) - 1} rows for {len(runs)} runs")
pngs = [p for p in os.listdir(out) if p.endswith(".png")]
for name in ["accuracy_vs_epoch_mlp_b1024.png", "accuracy_vs_epoch_cnn_b1024.png",
             "vs_rho_mlp.png", "vs_rho_cnn.png"]:
    path = os.path.join(out, name)
    if not os.path.exists(path):
        fail(f"no {name} among {pngs}")
    head = open(path, "rb").read(8)
    if head != b"\x89PNG\r\n\x1a\n" or os.path.getsize(path) < 10000:
        fail(f"{name} is not a PNG plot")
print(f"checked {len(runs)} runs, {len(rows)} table rows, {len(pngs)} plots")
PY

# Resume: nothing is redone.
stamp=$(stat -c %Y "$out"/runs/*/run.json | sort | tail -1)
"$repo/deploy/local/compare.sh" --quick --out "$out" --build_dir "$build" >"$work/second.log" 2>&1 ||
  fail "second call exited $?: $(cat "$work/second.log")"
cat "$work/second.log"
done_runs=$(ls "$out"/runs/*/run.json | wc -l)
grep -q "0 ran, $done_runs already done" "$work/second.log" || fail "the second call redid runs"
[[ $(stat -c %Y "$out"/runs/*/run.json | sort | tail -1) == "$stamp" ]] || fail "run.json rewritten"
echo "PASS"
