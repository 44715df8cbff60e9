"""Builds the gnc Python package. The gRPC stubs (gnc.v1) are generated from
proto/gnc.proto while building, by generate_stubs.py (protoc and grpc_python_plugin,
or grpc_tools). The proto is taken from ../../proto/gnc.proto, or from $GNC_PROTO.

    pip install --no-deps --no-build-isolation worker/python
"""

import importlib.util
import os
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


class BuildPyWithStubs(build_py):
    """build_py that also writes gnc/v1 into the build folder."""

    def run(self) -> None:
        super().run()
        spec = importlib.util.spec_from_file_location("generate_stubs",
                                                      HERE / "generate_stubs.py")
        generator = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(generator)
        proto = Path(os.environ.get("GNC_PROTO", HERE.parent.parent / "proto" / "gnc.proto"))
        if not proto.is_file():
            raise RuntimeError(f"{proto} not found: build from a gnc checkout or set GNC_PROTO")
        generator.generate(proto, Path(self.build_lib))


setup(packages=["gnc"], cmdclass={"build_py": BuildPyWithStubs})
