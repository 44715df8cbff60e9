#!/usr/bin/env python3
"""summarize.py JUNIT_XML: the counts of a CTest run (ctest --output-junit) and why
each skipped test skipped, so that a skip is never mistaken for a pass.

Prints "gnc tests: N total, P passed, F failed, S skipped", then each reason for a
skip (the first "SKIP..." line of a test's output, or GoogleTest's message after
"Skipped") with the tests it applies to, and the failed tests with the lines of their
output that say why (so that the end of a CI log names the cause). Exit status 0 (the
summary never changes the verdict).
"""
import sys
import xml.etree.ElementTree as ET


def skip_reason(output):
    lines = [l.strip() for l in output.splitlines() if l.strip()]
    for i, line in enumerate(lines):
        if line.upper().startswith("SKIP"):
            return line
        if line.endswith(": Skipped") and i + 1 < len(lines):  # GTEST_SKIP() << reason
            return lines[i + 1]
    return lines[-1] if lines else "(no output)"


def failure_lines(output, limit=20):
    """What a failed test said about its failure: the lines that name one (a FAIL line
    of a script, a sanitizer's report, a GoogleTest failure), else its last lines."""
    lines = [l.rstrip() for l in output.splitlines() if l.strip()]
    marks = ("FAIL", "ERROR", "Sanitizer", "Failure", "runtime error", "timed out")
    picked = [i for i, l in enumerate(lines) if any(m in l for m in marks)]
    if not picked:
        return lines[-limit:]
    # The first report and what follows it (a script's FAIL line, then the last lines
    # of its processes' logs), then every later report.
    first = picked[0]
    head = lines[first:first + limit]
    rest = [lines[i] for i in picked if i >= first + limit]
    return head + rest[-limit:]


def main():
    if len(sys.argv) != 2:
        print("usage: summarize.py JUNIT_XML", file=sys.stderr)
        return 2
    try:
        cases = ET.parse(sys.argv[1]).getroot().iter("testcase")
    except (OSError, ET.ParseError) as e:
        print(f"gnc tests: no summary ({e})")
        return 0
    passed, failed, skipped = [], [], []
    for case in cases:
        name = case.get("name")
        if case.find("skipped") is not None or case.get("status") == "notrun":
            skipped.append((name, skip_reason(case.findtext("system-out") or "")))
        elif case.find("failure") is not None or case.get("status") == "fail":
            failed.append((name, failure_lines(case.findtext("system-out") or "")))
        else:
            passed.append(name)
    total = len(passed) + len(failed) + len(skipped)
    print(f"gnc tests: {total} total, {len(passed)} passed, {len(failed)} failed, "
          f"{len(skipped)} skipped")
    # Tests skipped for the same reason (a GPU suite without a GPU) make one entry.
    by_reason = {}
    for name, reason in skipped:
        by_reason.setdefault(reason, []).append(name.split("  # GetParam()")[0])
    for reason, names in by_reason.items():
        if len(names) == 1:
            print(f"  skipped {names[0]}: {reason}")
        else:
            more = f" and {len(names) - 3} more" if len(names) > 3 else ""
            print(f"  {len(names)} skipped: {reason}\n    {', '.join(names[:3])}{more}")
    for name, lines in failed:
        print(f"  FAILED {name}")
        for line in lines:
            print(f"    | {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
