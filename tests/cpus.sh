#!/usr/bin/env bash
# cpus.sh: how many CPUs this process may really use: nproc (the affinity mask), lowered
# to a cgroup's CPU quota when one is set (cgroup v2 cpu.max, or v1 cfs_quota_us), so
# that the test scripts do not run more jobs at once than the machine gives them time
# for (a container with a quota of 4 CPUs on a 32-core host reports 32 to nproc).
set -euo pipefail
n=$(nproc)
quota="" period=""
if [[ -r /sys/fs/cgroup/cpu.max ]]; then
  read -r quota period </sys/fs/cgroup/cpu.max || true
elif [[ -r /sys/fs/cgroup/cpu/cpu.cfs_quota_us && -r /sys/fs/cgroup/cpu/cpu.cfs_period_us ]]; then
  quota=$(</sys/fs/cgroup/cpu/cpu.cfs_quota_us)
  period=$(</sys/fs/cgroup/cpu/cpu.cfs_period_us)
fi
if [[ $quota =~ ^[0-9]+$ && $period =~ ^[0-9]+$ ]] && ((period > 0)); then
  q=$(((quota + period - 1) / period))
  ((q >= 1 && q < n)) && n=$q
fi
echo "$n"
