#!/usr/bin/env bash
# install_test.sh BUILD_DIR PREFIX: `cmake --install BUILD_DIR --prefix PREFIX` (for
# the other install tests; files of earlier installs that this one did not install are
# removed, unchanged ones keep their time stamps), then what a user of the install sees:
# the daemons run from PREFIX/bin, the client library with its public headers, CMake
# package and pkg-config file are there, the headers pull in no gRPC or protobuf
# header, and the library exports no gRPC or protobuf symbol.
set -euo pipefail
build=$1
prefix=$2
mkdir -p "$prefix"
cmake --install "$build" --prefix "$prefix" >"$prefix.log" 2>&1 ||
  { cat "$prefix.log"; echo "FAIL: cmake --install"; exit 1; }
comm -23 <(find "$prefix" -not -type d | sort) <(sort "$build/install_manifest.txt") |
  xargs -r rm -f

status=0
fail() {
  echo "FAIL: $*"
  status=1
}
libdir=$(cd "$prefix" && dirname "$(find . -name 'libgnc_client.so' | head -n 1)")
[[ $libdir != . ]] || { echo "FAIL: no libgnc_client.so under $prefix"; find "$prefix"; exit 1; }
for f in bin/gnc-server bin/gnc-worker include/gnc/worker/client.h include/gnc/common/layout.h \
  include/gnc/common/version.h "$libdir/cmake/gnc/gncConfig.cmake" \
  "$libdir/cmake/gnc/gncConfigVersion.cmake" "$libdir/cmake/gnc/gncTargets.cmake" \
  "$libdir/pkgconfig/gnc.pc"; do
  [[ -e $prefix/$f ]] || fail "cmake --install did not install $f"
done
for daemon in gnc-server gnc-worker; do
  out=$("$prefix/bin/$daemon" --version 2>&1) || fail "installed $daemon --version: $out"
done

# The public headers need Abseil and the standard library only.
probe=$(mktemp "${TMPDIR:-/tmp}/gnc-header.XXXXXX.cc")
trap 'rm -f "$probe"' EXIT
printf '#include "worker/client.h"\n#include "common/version.h"\nint main() { return 0; }\n' >"$probe"
headers=$(g++ -std=c++20 -H -fsyntax-only -I"$prefix/include/gnc" "$probe" 2>&1) ||
  fail "the installed headers do not compile on their own: $headers"
if grep -E 'grpc|google/protobuf|proto/gnc' <<<"$headers"; then
  fail "the installed headers include gRPC or protobuf headers (above)"
fi
outside=$(grep -E '^\.+ ' <<<"$headers" | awk '{print $2}' |
  grep -v -E "^(/usr/include/absl/|/usr/include/c\+\+/|/usr/include/x86_64-linux-gnu/|/usr/lib/gcc/|/usr/include/[^/]+\.h$|/usr/include/(bits|sys|asm|asm-generic|linux)/|$prefix/include/gnc/)" || true)
[[ -z $outside ]] || fail "the installed headers include files outside Abseil, the C++ library and gnc: $outside"

# Only gnc's API leaves the library.
exported=$(nm -D --defined-only "$prefix/$libdir/libgnc_client.so" | c++filt | awk '{$1=$2=""; print}')
if grep -E '^ *(grpc|google::protobuf|absl|gnc::v1)::' <<<"$exported" | head -n 5 | grep .; then
  fail "libgnc_client.so exports gRPC, protobuf, Abseil or wire symbols (above)"
fi
grep -q 'gnc::GncClient::Connect' <<<"$exported" || fail "libgnc_client.so does not export GncClient::Connect"
((status == 0)) && echo "installed into $prefix: daemons, libgnc_client.so ($(wc -l <<<"$exported") symbols), headers, CMake package, gnc.pc"
exit "$status"
