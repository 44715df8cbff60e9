#!/usr/bin/env bash
# compare_mpi.sh: one gnc round against the tool a user would pick instead,
# MPI_Allreduce of the same floats with np = K (Debian's OpenMPI), over TCP on the
# loopback and over shared memory, all in one run with interleaved repetitions;
# medians and ratios. Also gnc's round in each smoothing mode and in bfloat16.
#   tests/bench/compare_mpi.sh [--build_dir DIR] [--workers K] [--servers S]
#                              [--mfloats N] [--reps R] [--rounds N]
# Needs mpicc and mpirun (deploy/local/install-deps.sh --tests installs them) and a
# build with gnc_round_bench. Prints a table; asserts nothing.
set -euo pipefail

build=build workers=4 servers=2 mfloats=4 reps=5 rounds=10
while (($#)); do
  case $1 in
    --build_dir) build=$2; shift 2 ;;
    --workers) workers=$2; shift 2 ;;
    --servers) servers=$2; shift 2 ;;
    --mfloats) mfloats=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    -h | --help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "compare_mpi.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
command -v mpicc >/dev/null && command -v mpirun >/dev/null || {
  echo "compare_mpi.sh: needs mpicc and mpirun (Debian openmpi-bin libopenmpi-dev)" >&2
  exit 77
}
bench=$build/tests/bench/gnc_round_bench
[[ -x $bench ]] || { echo "compare_mpi.sh: $bench is not built" >&2; exit 2; }

work=$(mktemp -d "${TMPDIR:-/tmp}/gnc-compare-mpi.XXXXXX")
trap 'rm -rf "$work"' EXIT
mpicc -O2 -o "$work/mpi_allreduce" "$(dirname "$0")/mpi_allreduce.c"

# OpenMPI as root needs these; both transports keep to this machine.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
mpi() {  # mpi BTL: median allreduce ms of one run
  mpirun -np "$workers" --mca pml ob1 --mca btl "$1,self" --mca btl_tcp_if_include lo \
    "$work/mpi_allreduce" "$mfloats" "$rounds" 2>/dev/null | sed -n 's/^allreduce_ms=//p'
}
gnc() {  # gnc MODE DTYPE: median round ms of one run
  "$bench" --servers="$servers" --workers="$workers" --mfloats="$mfloats" --rounds="$rounds" \
    --mode="$1" --wire_dtype="$2" --no_tcp 2>/dev/null | sed -n 's/^round_ms=\([0-9.]*\) .*/\1/p'
}

names=("gnc none float32" "gnc none bfloat16" "gnc gnc float32" "gnc isotropic float32"
  "MPI_Allreduce tcp" "MPI_Allreduce shared memory")
declare -A results
for ((r = 1; r <= reps; r++)); do
  results[0]+=" $(gnc none float32)"
  results[1]+=" $(gnc none bfloat16)"
  results[2]+=" $(gnc gnc float32)"
  results[3]+=" $(gnc isotropic float32)"
  results[4]+=" $(mpi tcp)"
  results[5]+=" $(mpi vader)"
  echo "repetition $r/$reps done" >&2
done
median() { tr ' ' '\n' | sed '/^$/d' | sort -g | awk '{a[NR] = $1} END {print (NR ? a[int((NR + 1) / 2)] : "nan")}'; }
declare -a med
for i in 0 1 2 3 4 5; do med[i]=$(echo "${results[$i]}" | median); done
printf 'K=%s workers, S=%s shards, N=%s Mi floats, medians of %s interleaved runs of %s rounds\n' \
  "$workers" "$servers" "$mfloats" "$reps" "$rounds"
printf '%-28s %10s %16s %16s\n' "" "ms" "vs MPI tcp" "vs gnc none f32"
for i in 0 1 2 3 4 5; do
  printf '%-28s %10.1f %15.2fx %15.2fx\n' "${names[$i]}" "${med[i]}" \
    "$(awk -v a="${med[i]}" -v b="${med[4]}" 'BEGIN { print a / b }')" \
    "$(awk -v a="${med[i]}" -v b="${med[0]}" 'BEGIN { print a / b }')"
done
