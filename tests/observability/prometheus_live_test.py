#!/usr/bin/env python3
"""prometheus_live_test.py: the gnc observability stack against a real Prometheus.

Starts S gnc-server shards and a job on 127.0.0.1, generates a Prometheus config
with deploy/prometheus/gen-config.sh (1s scrape and rule interval, the gnc rules
loaded), starts `prometheus` with a temporary TSDB, and then, by --mode:

  expressions  the job is gnc-worker processes (--worker) or, without them, the
               scripted_job load generator. Fails unless, in one pass, every dashboard
               expression (--exprs, from check_dashboard.py), every recording rule's
               expression and every recorded series return at least one series, all
               values finite; every rule is healthy and no alert is pending or firing;
               and `promtool check metrics` is clean on every target's /metrics.
  noise-scale  shards in mode none; runs noise_scale_check (--noise-check), which
               drives them with known gradients and compares gnc:gradient_noise_scale
               with its own computation.

Every process this script starts is stopped before it exits, whatever happens.
"""
import argparse
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

HOST = "127.0.0.1"
NUM_SHARDS = 2


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_ports(n):
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind((HOST, 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def _die_with_parent():
    """Child side of Popen: SIGKILL this child if the test dies (even by SIGKILL)."""
    import ctypes
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Processes:
    """The processes this test started, stopped in reverse order by stop_all()."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.procs = []  # (name, Popen, log path)

    def start(self, name, argv):
        path = os.path.join(self.workdir, f"{name}.log")
        out = open(path, "w")
        p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             cwd=self.workdir, preexec_fn=_die_with_parent)
        out.close()
        self.procs.append((name, p, path))
        return p

    def check_alive(self, *names):
        for name, p, path in self.procs:
            if (not names or name in names) and p.poll() is not None:
                raise RuntimeError(f"{name} exited with status {p.returncode}\n{tail(path)}")

    def stop(self, proc, timeout=10):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop_all(self):
        for name, p, _ in reversed(self.procs):
            self.stop(p)

    def dump_logs(self):
        for name, _, path in self.procs:
            print(f"----- {name} ({path}) -----\n{tail(path)}", file=sys.stderr)


def tail(path, lines=25):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


def http_get(url, timeout=10):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


class Prometheus:
    def __init__(self, port):
        self.base = f"http://{HOST}:{port}"

    def api(self, path, **params):
        url = f"{self.base}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            body = json.loads(http_get(url))
        except urllib.error.HTTPError as e:  # 400/422: a bad expression
            body = json.loads(e.read().decode())
        if body.get("status") != "success":
            raise ValueError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr):
        return self.api("query", query=expr)

    def wait_ready(self, procs, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            procs.check_alive("prometheus")
            try:
                http_get(f"{self.base}/-/ready", timeout=2)
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.3)
        raise RuntimeError("prometheus never became ready")


def series_problem(data):
    """None if the query result holds >= 1 series, all finite; else what is wrong."""
    kind, result = data["resultType"], data["result"]
    if kind == "scalar":
        result = [{"metric": {}, "value": result}]
    if not result:
        return "no series"
    for s in result:
        values = [s["value"]] if "value" in s else s.get("values", [])
        for _, v in values:
            if not math.isfinite(float(v)):
                return f"non-finite value {v} in {s['metric']}"
    return None


def start_shards(args, procs, workdir, num_workers, mode, extra=()):
    metrics_ports = free_ports(NUM_SHARDS)
    shards = []
    for s in range(NUM_SHARDS):
        port_file = os.path.join(workdir, f"shard{s}.port")
        procs.start(f"gnc-server-{s}", [
            args.server, f"--address={HOST}", "--port=0", f"--port_file={port_file}",
            f"--shard_index={s}", f"--num_shards={NUM_SHARDS}", f"--num_workers={num_workers}",
            f"--mode={mode}", "--device=cpu", f"--metrics_address={HOST}",
            f"--metrics_port={metrics_ports[s]}", "--per_worker_noise_metrics",
            "--exit_when_done=false", "--drain_timeout=2s", *extra])
        shards.append(port_file)
    grpc = []
    deadline = time.time() + 30
    for port_file in shards:
        while not os.path.exists(port_file):
            procs.check_alive()
            if time.time() > deadline:
                raise RuntimeError(f"no {port_file}")
            time.sleep(0.1)
        with open(port_file) as f:
            grpc.append(f"{HOST}:{int(f.read())}")
    return grpc, [f"{HOST}:{p}" for p in metrics_ports]


def start_prometheus(args, procs, workdir, servers, workers):
    config = os.path.join(workdir, "prometheus.yml")
    cmd = [args.gen_config, "--servers", ",".join(servers), "--scrape-interval", "1s",
           "--out", config]
    if workers:
        cmd += ["--workers", ",".join(workers)]
    subprocess.run(cmd, check=True)
    r = subprocess.run([args.promtool, "check", "config", config], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"promtool check config {config}:\n{r.stdout}{r.stderr}")
    (port,) = free_ports(1)
    procs.start("prometheus", [
        args.prometheus, f"--config.file={config}",
        f"--storage.tsdb.path={os.path.join(workdir, 'data')}",
        f"--web.listen-address={HOST}:{port}", "--log.level=warn"])
    prom = Prometheus(port)
    prom.wait_ready(procs)
    log(f"prometheus ready on {prom.base}")
    return prom


def check_metrics_lint(args, targets):
    """promtool check metrics on each /metrics; returns the problems."""
    problems = []
    for t in targets:
        text = http_get(f"http://{t}/metrics")
        r = subprocess.run([args.promtool, "check", "metrics"], input=text, capture_output=True,
                           text=True)
        if r.returncode != 0 or r.stdout.strip() or r.stderr.strip():
            problems.append(f"promtool check metrics {t}: rc={r.returncode}\n{r.stdout}{r.stderr}")
        else:
            log(f"promtool check metrics {t}: clean ({len(text.splitlines())} lines)")
    return problems


def evaluate_all(prom, exprs, sanity):
    """One pass over every expression; returns (checked, failures)."""
    failures = []
    rules = prom.api("rules")["groups"]
    checked = 0
    for group in rules:
        for rule in group["rules"]:
            if rule.get("health") != "ok":
                failures.append(f"rule {rule['name']}: health {rule.get('health')}: "
                                f"{rule.get('lastError')}")
            if rule["type"] == "alerting":
                if rule.get("state") != "inactive":
                    failures.append(f"alert {rule['name']} is {rule['state']} in a healthy job")
                continue
            for what, expr in ((f"rule {rule['name']} expr", rule["query"]),
                               (f"recorded series {rule['name']}", rule["name"])):
                checked += 1
                try:
                    problem = series_problem(prom.query(expr))
                except ValueError as e:
                    problem = str(e)
                if problem:
                    failures.append(f"{what}: {problem}\n    {expr}")
    for expr in sanity:
        checked += 1
        try:
            problem = series_problem(prom.query(expr))
        except ValueError as e:
            problem = str(e)
        if problem:
            failures.append(f"sanity check: {problem}\n    {expr}")
    for e in exprs:
        checked += 1
        try:
            problem = series_problem(prom.query(e["expr"]))
        except ValueError as err:
            problem = str(err)
        if problem:
            failures.append(f"dashboard panel {e['panel']!r} {e['refId']}: {problem}\n    {e['expr']}")
    return checked, failures


def run_expressions(args, procs, workdir):
    with open(args.exprs) as f:
        exprs = json.load(f)
    num_workers = 2 if args.worker else 4
    servers, shard_metrics = start_shards(args, procs, workdir, num_workers, "gnc")
    log(f"shards {servers}, metrics {shard_metrics}")
    worker_metrics = []
    if args.worker:
        worker_metrics = [f"{HOST}:{p}" for p in free_ports(num_workers)]
        for k in range(num_workers):
            procs.start(f"gnc-worker-{k}", [
                args.worker, f"--servers={','.join(servers)}", f"--rank={k}",
                f"--num_workers={num_workers}", "--batch_size=32", "--steps=1000000",
                "--train_limit=1024", "--test_limit=256", "--hidden=32", "--device=cpu",
                f"--metrics_address={HOST}", f"--metrics_port={worker_metrics[k].split(':')[1]}",
                *args.worker_arg])
    else:
        log("no gnc-worker given: driving the shards with scripted clients (worker panels "
            "and rules are checked only with --worker)")
        procs.start("scripted-job", [args.scripted_job, f"--servers={','.join(servers)}",
                                     f"--num_workers={num_workers}", "--pace=20ms",
                                     "--duration=170s"])
    prom = start_prometheus(args, procs, workdir, shard_metrics, worker_metrics)

    worker_only = ("gnc_worker_step", "gnc_worker_samples", "gnc_worker_loss",
                   "gnc_worker_late", "gnc:worker_", "gnc_eval_")
    if not args.worker:
        exprs = [e for e in exprs if not any(w in e["expr"] for w in worker_only)]
    # Beyond "finite": the panels show real data, not initial zeros.
    sanity = ["sum by (job) (gnc_perturbation_sqnorm) > 0", "min(gnc_worker_noise_sqnorm) > 0",
              "min(gnc_step) > 2"]
    if args.worker:
        sanity.append("max(gnc_eval_accuracy) > 0")  # an evaluation has run
    # Several scrapes must be in before any rate window can hold two samples.
    time.sleep(5)
    deadline = time.time() + args.budget
    attempt = 0
    while True:
        attempt += 1
        procs.check_alive()
        checked, failures = evaluate_all(prom, exprs, sanity)
        if not args.worker:
            failures = [f for f in failures if not any(w in f for w in worker_only)]
        if not failures:
            log(f"attempt {attempt}: all {checked} expressions return finite series")
            break
        if time.time() > deadline:
            raise RuntimeError(f"after {attempt} attempts, {len(failures)} of {checked} "
                               "expressions fail:\n  " + "\n  ".join(failures))
        log(f"attempt {attempt}: {len(failures)} of {checked} not yet; first: "
            f"{failures[0].splitlines()[0]}")
        time.sleep(3)
    b = prom.query("gnc:gradient_noise_scale")["result"]
    log(f"gnc:gradient_noise_scale = {b[0]['value'][1] if b else None}")
    problems = check_metrics_lint(args, shard_metrics + worker_metrics)
    if problems:
        raise RuntimeError("\n".join(problems))


def run_noise_scale(args, procs, workdir):
    ema = "0.8"
    servers, shard_metrics = start_shards(args, procs, workdir, 4, "none",
                                          extra=[f"--noise_ema={ema}"])
    prom = start_prometheus(args, procs, workdir, shard_metrics, [])
    r = subprocess.run([args.noise_check, f"--servers={','.join(servers)}",
                        f"--metrics={','.join(shard_metrics)}",
                        f"--prometheus_port={prom.base.rsplit(':', 1)[1]}", f"--noise_ema={ema}",
                        "--steps=30", "--tolerance=1e-6"], timeout=150)
    if r.returncode != 0:
        raise RuntimeError(f"noise_scale_check exited with {r.returncode}")
    problems = check_metrics_lint(args, shard_metrics)
    if problems:
        raise RuntimeError("\n".join(problems))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--mode", choices=["expressions", "noise-scale"], required=True)
    ap.add_argument("--server", required=True, help="gnc-server binary")
    ap.add_argument("--prometheus", default=shutil.which("prometheus"))
    ap.add_argument("--promtool", default=shutil.which("promtool"))
    ap.add_argument("--gen-config", required=True, help="deploy/prometheus/gen-config.sh")
    ap.add_argument("--exprs", help="dashboard expressions (check_dashboard.py --out)")
    ap.add_argument("--scripted-job", help="scripted_job binary (when there is no gnc-worker)")
    ap.add_argument("--worker", help="gnc-worker binary")
    ap.add_argument("--worker-arg", action="append", default=[], help="extra gnc-worker flag")
    ap.add_argument("--noise-check", help="noise_scale_check binary")
    ap.add_argument("--budget", type=float, default=90, help="seconds to wait for the expressions")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args()
    for name in ("server", "gen_config", "exprs", "scripted_job", "worker", "noise_check"):
        if getattr(args, name):
            setattr(args, name, os.path.abspath(getattr(args, name)))
    if not args.prometheus or not args.promtool:
        print("SKIP: prometheus/promtool not installed (Debian package prometheus)")
        return 77

    # ctest's timeout and ^C: unwind through the finally below, which stops everything.
    def interrupted(signum, _frame):
        raise RuntimeError(f"interrupted by signal {signum}")
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)

    workdir = tempfile.mkdtemp(prefix="gnc-obs-")
    procs = Processes(workdir)
    ok = False
    try:
        if args.mode == "expressions":
            run_expressions(args, procs, workdir)
        else:
            run_noise_scale(args, procs, workdir)
        ok = True
    except (RuntimeError, ValueError, subprocess.SubprocessError, OSError) as e:
        print(f"FAIL: {e}", file=sys.stderr)
    finally:
        procs.stop_all()
        if not ok:
            procs.dump_logs()
        if args.keep or not ok:
            print(f"work folder kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
