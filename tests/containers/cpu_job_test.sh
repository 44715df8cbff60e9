#!/usr/bin/env bash
# cpu_job_test.sh SOURCE_DIR IID_FILE [OVERLAY]: runs the gnc job of a Kubernetes
# overlay (default deploy/k8s/overlays/cpu-small) in podman containers of the image
# IID_FILE names, the way the cluster would run it:
# - every server and worker container with exactly the rendered image name's build,
#   command, arguments, environment (ConfigMap, downward API), security context,
#   resource limits, emptyDir volumes and claims (podman named volumes, removed at
#   the end) (tests/containers/pod-specs.mjs);
# - on a private podman network, the workers reaching the shards by the names the
#   manifests use (gnc-server-<i>.gnc-server, as /etc/hosts entries);
# - the job done when every worker exits 0; then the reaper's route: each server is
#   stopped with SIGTERM and its grace period (the StatefulSet scaled to zero) and
#   must drain and exit 0 at the job's last step.
# Prints the final test accuracy, and checks inside a running container that the
# security context and limits took effect. Every wait has a deadline.
set -euo pipefail
src=$1
iid_file=$2
overlay=${3:-$src/deploy/k8s/overlays/cpu-small}
# shellcheck source=tests/containers/lib.sh
source "$src/tests/containers/lib.sh"
require_podman
command -v node >/dev/null || skip "node not found (deploy/local/install-deps.sh --tests installs it)"
command -v kubectl >/dev/null || skip "kubectl not found: the overlay cannot be rendered"
[[ -s $iid_file ]] || { echo "FAIL: no image id in $iid_file (test containers_cpu_image builds it)"; exit 1; }
iid=$(cat "$iid_file")
podman image exists "$iid" || { echo "FAIL: image $iid is gone (rerun containers_cpu_image)"; exit 1; }

job_deadline_s=${GNC_CONTAINER_JOB_DEADLINE:-900}
run="gnc-ct-$$"
work=$(mktemp -d "${TMPDIR:-/tmp}/gnc-ct.XXXXXX")
cleanup() {
  local ids
  ids=$(podman ps -aq --filter "label=gnc.test.run=$run" 2>/dev/null || true)
  [[ -z $ids ]] || podman rm -f -t 0 $ids >/dev/null 2>&1 || true
  podman network rm -f "$run" >/dev/null 2>&1 || true
  remove_volumes "$run"
  rm -rf "$work"
}
# remove_volumes RUN: the claims' volumes of a run.
remove_volumes() {
  local vols
  vols=$(podman volume ls -q 2>/dev/null | grep "^$1-" || true)
  [[ -z $vols ]] || podman volume rm -f $vols >/dev/null 2>&1 || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Leftovers of a run whose script was killed (ctest's timeout): its pid is gone.
for id in $(podman ps -aq --filter label=gnc.test=containers); do
  pid=$(podman inspect --format '{{index .Config.Labels "gnc.test.pid"}}' "$id" 2>/dev/null || true)
  if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
    net=$(podman inspect --format '{{index .Config.Labels "gnc.test.run"}}' "$id")
    podman rm -f -t 0 "$id" >/dev/null
    podman network rm -f "$net" >/dev/null 2>&1 || true
    remove_volumes "$net"
  fi
done

node "$src/tests/containers/pod-specs.mjs" "$overlay" "$work/plan" "$run"
servers=() workers=() dns=()
declare -A grace_of cpu_of memory_of
while IFS=$'\t' read -r role pod name seconds cpu bytes; do
  if [[ $role == server ]]; then servers+=("$pod"); dns+=("$name"); else workers+=("$pod"); fi
  grace_of[$pod]=$seconds cpu_of[$pod]=$cpu memory_of[$pod]=$bytes
done <"$work/plan/pods.tsv"
echo "job: ${#servers[@]} servers (${servers[*]}), ${#workers[@]} workers (${workers[*]})"

podman network create "$run" >/dev/null
labels=(--label gnc.test=containers --label "gnc.test.run=$run" --label "gnc.test.pid=$$")

# start POD [EXTRA_OPTS...]: the pod's container, detached, on the job's network.
start() {
  local pod=$1 image opts args
  shift
  image=$(cat "$work/plan/$pod.image")
  # The image the manifests name must be the cpu target built by containers_cpu_image.
  [[ ${image%%:*} == gnc || ${image%%:*} == */gnc ]] ||
    { echo "FAIL: $pod runs image $image, not the cpu image gnc"; exit 1; }
  mapfile -d '' opts <"$work/plan/$pod.opts"
  mapfile -d '' args <"$work/plan/$pod.args"
  podman_run -d --name "$run-$pod" --network "$run" "${labels[@]}" "$@" "${opts[@]}" \
    "$iid" "${args[@]}" >/dev/null
}
state() { podman inspect --format '{{.State.Status}} {{.State.ExitCode}}' "$run-$1"; }
show_logs() {
  local pod
  for pod in "$@"; do
    echo "--- last lines of $pod ($(state "$pod"))"
    podman logs "$run-$pod" 2>&1 | tail -n 25 | sed "s/^/[$pod] /"
  done
}
fail() {
  echo "FAIL: $*"
  show_logs "${servers[@]}" "${workers[@]}"
  exit 1
}

start_time=$SECONDS
hosts=()
for i in "${!servers[@]}"; do
  start "${servers[$i]}"
  ip=$(podman inspect --format "{{(index .NetworkSettings.Networks \"$run\").IPAddress}}" "$run-${servers[$i]}")
  [[ -n $ip ]] || fail "${servers[$i]} has no address on network $run"
  hosts+=(--add-host "${dns[$i]}:$ip")
done
for pod in "${workers[@]}"; do start "$pod" "${hosts[@]}"; done

# What the security context and limits did, seen from inside a running container.
check_inside() {
  local pod=$1 got want want_quota want_mem=${memory_of[$1]}
  # The CFS quota per 100 ms period that podman's --cpus sets.
  want_quota=$(awk -v c="${cpu_of[$pod]}" 'BEGIN { printf "%d", c * 100000 }')
  # shellcheck disable=SC2016
  got=$(podman exec "$run-$pod" sh -c '
    id -u
    for f in CapEff CapBnd NoNewPrivs Seccomp; do grep "^$f:" /proc/1/status | cut -f2; done
    awk '"'"'$2 == "/" { split($4, o, ","); print "root-" o[1] }'"'"' /proc/mounts
    if touch /tmp/probe 2>/dev/null; then echo tmp-writable; else echo tmp-read-only; fi
    if [ -r /sys/fs/cgroup/cpu.max ]; then  # cgroup v2, else v1
      cut -d" " -f1 /sys/fs/cgroup/cpu.max; cat /sys/fs/cgroup/memory.max
    else
      cat /sys/fs/cgroup/cpu*/cpu.cfs_quota_us | head -n 1
      cat /sys/fs/cgroup/memory/memory.limit_in_bytes
    fi' 2>&1) ||
    fail "podman exec in $pod: $got"
  # uid; no capabilities, effective or obtainable (a non-root uid has none effective
  # anyway, so the bounding set is what shows the drop); no new privileges; seccomp
  # filter (RuntimeDefault); root mounted read-only; /tmp (the emptyDir) writable;
  # the limits.
  want=$(printf '%s\n' 10001 0000000000000000 0000000000000000 1 2 root-ro tmp-writable \
    "$want_quota" "$want_mem")
  [[ $got == "$want" ]] || fail "inside $pod (uid, CapEff, CapBnd, NoNewPrivs, Seccomp, /, /tmp, cpu quota, memory limit):
$got
want:
$want"
  echo "$pod: uid 10001, no capabilities, no new privileges, seccomp filter, read-only root," \
    "/tmp writable, cpu quota $want_quota us/100 ms, memory limit $want_mem bytes"
}
for pod in "${workers[0]}" "${servers[0]}"; do
  [[ $(state "$pod") == "running 0" ]] || fail "$pod is not running: $(state "$pod")"
  check_inside "$pod"
done

# The job: every worker exits 0, no server exits meanwhile.
deadline=$((SECONDS + job_deadline_s))
while true; do
  done_count=0
  for pod in "${workers[@]}"; do
    read -r status code <<<"$(state "$pod")"
    if [[ $status == exited ]]; then
      ((code == 0)) || fail "worker $pod exited with status $code"
      done_count=$((done_count + 1))
    fi
  done
  ((done_count == ${#workers[@]})) && break
  for pod in "${servers[@]}"; do
    [[ $(state "$pod") == running* ]] || fail "server $pod stopped while the workers were training"
  done
  ((SECONDS < deadline)) ||
    fail "waited ${job_deadline_s}s for the workers to finish; $done_count of ${#workers[@]} done"
  sleep 2
done
train_s=$((SECONDS - start_time))

# The reaper's route: scale the StatefulSet to zero = SIGTERM, then SIGKILL after
# the pod's grace period. A server must drain and exit 0 by itself before that.
total_steps=$(grep -a -o -- '--steps=[0-9]*' "$work/plan/${workers[0]}.args" | cut -d= -f2)
for pod in "${servers[@]}"; do
  podman stop --time "${grace_of[$pod]}" "$run-$pod" >/dev/null
  read -r status code <<<"$(state "$pod")"
  ((code == 0)) || fail "server $pod exited with status $code after SIGTERM (137: killed after its grace period)"
  podman logs "$run-$pod" 2>&1 | grep -q "gnc-server stopped at step $total_steps\$" ||
    fail "server $pod did not report stopping at the job's last step $total_steps"
  ! podman logs "$run-$pod" 2>&1 | grep -E "checkpoint.* failed|last checkpoint:" ||
    fail "server $pod could not write a checkpoint to its claim"
  # The claim (a podman volume here) holds the checkpoint of the last step.
  claim=$(podman volume inspect --format '{{.Mountpoint}}' "$run-$pod-checkpoints") ||
    fail "server $pod has no checkpoints volume"
  compgen -G "$claim/shard-*-step-$total_steps.ckpt" >/dev/null ||
    fail "server $pod left no checkpoint of step $total_steps in its claim: $(ls "$claim")"
done

final=$(podman logs "$run-${workers[0]}" 2>&1 | grep -o 'final test accuracy .*' | tail -n 1)
[[ -n $final ]] || fail "${workers[0]} printed no final test accuracy"
accuracy=$(awk '{print $4}' <<<"$final")
# Chance is 0.1; 3 epochs of this MLP reach about 0.85.
awk -v a="$accuracy" 'BEGIN { exit !(a >= 0.75) }' ||
  fail "final test accuracy $accuracy is below 0.75: the job did not learn"
echo "cpu-small job in containers: $final; workers done after ${train_s} s;" \
  "servers drained on SIGTERM at step $total_steps, its checkpoint in each server's claim"
