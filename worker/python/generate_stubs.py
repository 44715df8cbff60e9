#!/usr/bin/env python3
"""Generates the gRPC stubs of the gnc package (gnc/v1/gnc_pb2.py, gnc_pb2_grpc.py)
from proto/gnc.proto. Used by the CMake build and by setup.py; the generated files
are never edited or committed.

The proto is compiled as gnc/v1/gnc.proto so that the generated modules import each
other as gnc.v1.*. Uses protoc with grpc_python_plugin (Debian: protobuf-compiler,
protobuf-compiler-grpc) when found, else the grpc_tools module (python3-grpc-tools).

Usage: generate_stubs.py --proto PATH --out DIR [--protoc PATH] [--plugin PATH]
  writes DIR/gnc/v1/{__init__,gnc_pb2,gnc_pb2_grpc}.py
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

_PACKAGE = Path("gnc") / "v1"
_INIT = '"""gnc.v1: stubs generated from proto/gnc.proto at build time. Do not edit."""\n'


def generate(proto: Path, out: Path, protoc: Optional[str] = None,
             plugin: Optional[str] = None) -> list[Path]:
    """Writes the stubs under out/gnc/v1 and returns their paths.

    Raises RuntimeError when neither protoc with grpc_python_plugin nor grpc_tools is
    available, or when the compiler fails (its message included).
    """
    proto = Path(proto).resolve()
    out = Path(out).resolve()
    protoc = protoc or shutil.which("protoc")
    plugin = plugin or shutil.which("grpc_python_plugin")
    with tempfile.TemporaryDirectory(prefix="gnc-proto-") as tmp:
        staged = Path(tmp) / _PACKAGE / "gnc.proto"
        staged.parent.mkdir(parents=True)
        shutil.copyfile(proto, staged)
        args = [f"-I{tmp}", f"--python_out={out}", f"--grpc_python_out={out}",
                str(staged.relative_to(tmp))]
        if protoc and plugin:
            command = [protoc, f"--plugin=protoc-gen-grpc_python={plugin}", *args]
        else:
            try:
                import grpc_tools  # noqa: F401  (python3-grpc-tools)
            except ImportError:
                raise RuntimeError(
                    "cannot generate the gnc stubs: need protoc and grpc_python_plugin "
                    "(Debian: protobuf-compiler protobuf-compiler-grpc) or python3-grpc-tools"
                ) from None
            command = [sys.executable, "-m", "grpc_tools.protoc", *args]
        (out / _PACKAGE).mkdir(parents=True, exist_ok=True)
        result = subprocess.run(command, cwd=tmp, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr}")
    init = out / _PACKAGE / "__init__.py"
    init.write_text(_INIT)
    return [init, out / _PACKAGE / "gnc_pb2.py", out / _PACKAGE / "gnc_pb2_grpc.py"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proto", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--protoc")
    parser.add_argument("--plugin")
    args = parser.parse_args()
    try:
        generate(args.proto, args.out, args.protoc, args.plugin)
    except (RuntimeError, OSError) as e:
        print(f"generate_stubs: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
