#!/usr/bin/env python3
"""check_dashboard.py: static checks of the gnc Grafana dashboard.

Fails unless the JSON parses, the datasource is a template variable of type
datasource (query prometheus) and no panel or target names an import placeholder
(${DS_...}), every non-row panel has a unique id, a grid position and at least one
target with a PromQL expression, and every expression parses (each becomes a recording
rule checked by `promtool check rules`). Writes the expressions, template variables
substituted, to --out as JSON for the live test (prometheus_live_test.py).
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

# What Grafana would substitute, for queries against a live Prometheus. The rate
# window must cover several scrapes of the test's 1s interval.
SUBSTITUTIONS = {
    "$__rate_interval": "15s",
    "$__interval": "5s",
    "$__range": "1m",
    "$namespace": ".*",
    "$job": ".*",
    "$shard": ".*",
    "$worker": ".*",
}


def substitute(expr):
    for var in sorted(SUBSTITUTIONS, key=len, reverse=True):
        expr = expr.replace(var, SUBSTITUTIONS[var])
    leftover = re.findall(r"\$\{?\w+", expr)
    if leftover:
        raise ValueError(f"unknown template variable(s) {leftover} in {expr!r}")
    return expr


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dashboard")
    ap.add_argument("--out", help="write the substituted expressions here (JSON)")
    ap.add_argument("--promtool", default="promtool")
    args = ap.parse_args()

    with open(args.dashboard) as f:
        text = f.read()
    try:
        dash = json.loads(text)
    except json.JSONDecodeError as e:
        fail(f"{args.dashboard} is not JSON: {e}")
    if "${DS_" in text or "__inputs" in dash:
        fail("the dashboard uses an import placeholder (${DS_...} / __inputs); use the "
             "datasource template variable")
    for key in ("uid", "title", "panels", "templating", "schemaVersion"):
        if key not in dash:
            fail(f"dashboard has no {key!r}")

    variables = {v.get("name"): v for v in dash["templating"].get("list", [])}
    ds = [v for v in variables.values() if v.get("type") == "datasource"]
    if len(ds) != 1 or ds[0].get("query") != "prometheus":
        fail("need exactly one template variable of type datasource with query 'prometheus'")
    ds_ref = "${" + ds[0]["name"] + "}"
    for name, v in variables.items():
        if v.get("type") == "query" and v.get("datasource", {}).get("uid") != ds_ref:
            fail(f"template variable {name} does not query {ds_ref}")

    exprs = []
    ids = set()
    panels = []
    for p in dash["panels"]:
        panels.append(p)
        panels.extend(p.get("panels", []))  # collapsed rows keep their panels inside
    for p in panels:
        if p.get("type") == "row":
            continue
        title = p.get("title", "")
        if not title:
            fail(f"panel {p.get('id')} has no title")
        if p.get("id") in ids:
            fail(f"duplicate panel id {p.get('id')}")
        ids.add(p.get("id"))
        if not {"x", "y", "w", "h"} <= set(p.get("gridPos", {})):
            fail(f"panel {title!r} has no complete gridPos")
        if p.get("datasource", {}).get("uid") != ds_ref:
            fail(f"panel {title!r} does not use the datasource variable {ds_ref}")
        targets = p.get("targets", [])
        if not targets:
            fail(f"panel {title!r} has no target")
        for t in targets:
            expr = t.get("expr", "").strip()
            if not expr:
                fail(f"panel {title!r} target {t.get('refId')} has no expression")
            if t.get("datasource", {}).get("uid") != ds_ref:
                fail(f"panel {title!r} target {t.get('refId')} does not use {ds_ref}")
            try:
                exprs.append({"panel": title, "refId": t.get("refId"), "expr": substitute(expr)})
            except ValueError as e:
                fail(f"panel {title!r}: {e}")
    if not exprs:
        fail("no expressions")

    # Syntax: every expression as a recording rule, checked offline by promtool.
    with tempfile.TemporaryDirectory() as tmp:
        rules = os.path.join(tmp, "dashboard-rules.yml")
        with open(rules, "w") as f:
            f.write("groups:\n  - name: dashboard\n    rules:\n")
            for i, e in enumerate(exprs):
                f.write(f"      - record: dashboard:expr_{i}\n        expr: {json.dumps(e['expr'])}\n")
        r = subprocess.run([args.promtool, "check", "rules", rules], capture_output=True, text=True)
        if r.returncode != 0:
            fail(f"promtool check rules on the dashboard expressions:\n{r.stdout}{r.stderr}")

    if args.out:
        with open(args.out + ".tmp", "w") as f:
            json.dump(exprs, f, indent=1)
        os.replace(args.out + ".tmp", args.out)
    print(f"ok: {len(ids)} panels, {len(exprs)} expressions")


if __name__ == "__main__":
    main()
