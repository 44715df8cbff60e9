#!/usr/bin/env python3
"""--help and --version of gnc-server and gnc-worker, as a user first tries them.

--help must exit 0 and list every gnc flag with its default; the reference is
Abseil's own --helpfull listing (every flag not defined by Abseil itself).
--version must exit 0 and print "<daemon> <version> (<build type> build, CUDA on|off)",
checked against project(VERSION) in CMakeLists.txt and the build tree's CMakeCache.txt.

Usage: daemon_cli_test.py --source-dir DIR --build-dir DIR NAME=BINARY...
"""
import argparse
import re
import subprocess
import sys

failures = []


def expect(cond, msg):
    if not cond:
        failures.append(msg)
    return cond


def run(argv):
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    return r.returncode, r.stdout, r.stderr


def abseil_flags(helpfull):
    """{name: default} of the flags in --helpfull sections not from Abseil's sources.

    An entry starts with "    --name (help); default: value;" and may wrap onto
    lines indented by six spaces."""
    flags = {}
    entries = []
    collecting = False  # inside a "Flags from FILE:" section of a gnc file
    for line in helpfull.splitlines():
        m = re.match(r"^  Flags from (.*):$", line)
        if m:
            collecting = "absl/" not in m.group(1)
        elif collecting and line.startswith("    --"):
            entries.append(line.strip())
        elif collecting and line.startswith("      ") and entries:
            entries[-1] += " " + line.strip()
        else:
            collecting = False  # a blank line or the closing text ends the section
    for entry in entries:
        m = re.fullmatch(r"--([A-Za-z0-9_]+) \(.*\); default: (.*);", entry)
        if expect(m, f"cannot read --helpfull entry {entry!r}"):
            flags[m.group(1)] = m.group(2)
    return flags


def help_flags(help_text):
    """{name: default} from gnc's --help ("--name=default" or "--name (unset)")."""
    flags = {}
    for m in re.finditer(r"^  --([A-Za-z0-9_]+)(?:=(.*)| \(unset\))$", help_text, flags=re.M):
        flags[m.group(1)] = m.group(2) or ""
    return flags


def cache_value(build_dir, key):
    with open(f"{build_dir}/CMakeCache.txt") as f:
        for line in f:
            m = re.match(rf"^{key}:[A-Z]+=(.*)$", line)
            if m:
                return m.group(1).strip()
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--source-dir", required=True)
    ap.add_argument("--build-dir", required=True)
    ap.add_argument("binaries", nargs="+", help="NAME=PATH")
    args = ap.parse_args()

    with open(f"{args.source_dir}/CMakeLists.txt") as f:
        version = re.search(r"project\(gnc VERSION ([0-9.]+)", f.read()).group(1)
    build_type = cache_value(args.build_dir, "CMAKE_BUILD_TYPE") or "no build type"
    cuda = "on" if cache_value(args.build_dir, "GNC_WITH_CUDA") in ("ON", "1", "TRUE") else "off"
    want_version = f"({re.escape(version)} \\({re.escape(build_type)} build, CUDA {cuda}\\))"

    for entry in args.binaries:
        name, binary = entry.split("=", 1)
        code, out, err = run([binary, "--help"])
        expect(code == 0, f"{name} --help exited {code}: {err.strip()}")
        listed = help_flags(out)
        code, full, _ = run([binary, "--helpfull"])
        reference = abseil_flags(full)
        if expect(len(reference) >= 10, f"{name} --helpfull lists {len(reference)} gnc flags:\n{full}"):
            missing = sorted(set(reference) - set(listed))
            expect(not missing, f"{name} --help does not list {', '.join('--' + m for m in missing)}")
            for flag, default in sorted(reference.items()):
                if flag in listed:
                    expect(listed[flag] == default,
                           f"{name} --help: --{flag} default {listed[flag]!r}, Abseil says {default!r}")
            extra = sorted(set(listed) - set(reference))
            expect(not extra, f"{name} --help lists flags Abseil does not know: {extra}")
        expect(re.search(rf"^{re.escape(name)} {want_version}$", out, re.M),
               f"{name} --help does not start with its version line:\n{out[:300]}")

        for flag in ("--version", "-version"):
            code, out, err = run([binary, flag])
            expect(code == 0, f"{name} {flag} exited {code}: {err.strip()}")
            expect(re.fullmatch(rf"{re.escape(name)} {want_version}\n", out),
                   f"{name} {flag} printed {out!r}, want '{name} {version} ({build_type} build, CUDA {cuda})'")

        # Handling --help first must not make the daemons accept what they refuse.
        code, out, err = run([binary, "--no_such_gnc_flag=1"])
        expect(code != 0, f"{name} accepts an unknown flag (exit 0)")
        print(f"{name}: --help listed {len(listed)} flags, Abseil {len(reference)}")

    for f in failures:
        print(f"FAIL: {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
