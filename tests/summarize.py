#!/usr/bin/env python3
"""summarize.py JUNIT_XML: the counts of a CTest run (ctest --output-junit) and why
each skipped test skipped, so that a skip is never mistaken for a pass.

Prints "gnc tests: N total, P passed, F failed, S skipped" and one line per skipped
test with its reason: the first "SKIP..." line of its output, or GoogleTest's
message after "Skipped". Exit status 0 (the summary never changes the verdict).
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
            failed.append(name)
        else:
            passed.append(name)
    total = len(passed) + len(failed) + len(skipped)
    print(f"gnc tests: {total} total, {len(passed)} passed, {len(failed)} failed, "
          f"{len(skipped)} skipped")
    for name, reason in skipped:
        print(f"  skipped {name}: {reason}")
    for name in failed:
        print(f"  FAILED {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
