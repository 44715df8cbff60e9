// pod-specs.mjs OVERLAY OUT_DIR: renders a kustomize overlay with the real kubectl
// and writes, for every pod of the gnc job (the StatefulSet's servers, the Indexed
// Job's workers), the `podman run` that runs its container the way Kubernetes would:
// the image, command (as the entrypoint) and arguments after $(VAR) expansion, the
// environment from the ConfigMap and the downward API, the security context, the
// resource limits and the emptyDir volumes.
//
// Output in OUT_DIR:
//   pods.tsv      one line per pod: role (server|worker), pod name, the DNS name other
//                 pods use for it (servers: <pod>.<service>; workers: -), the
//                 termination grace period in seconds, the cpu limit (cores) and
//                 the memory limit (bytes)
//   POD.opts      podman run options, NUL-separated (no name, network or image)
//   POD.image     the image reference as the manifest writes it
//   POD.args      the container's arguments (Kubernetes' args), NUL-separated
//   POD.env       the environment, one NAME=value a line (for the log)
//
// A field this translation does not know is an error naming it, so a new manifest
// setting cannot be silently left out of the container test. Fields with no
// meaning outside a cluster (probes, ports, scheduling, service accounts) are
// listed on stderr as not applied.
import fs from "node:fs";
import path from "node:path";

import {
  containerEnv, cpuCores, expand, find, kustomize, loadYamlAll, memoryBytes, podTemplates,
  replicaIdentities,
} from "../k8s/lib/manifests.mjs";

const kNotApplied = {
  pod: ["restartPolicy", "enableServiceLinks", "automountServiceAccountToken", "nodeSelector",
    "tolerations", "affinity", "priorityClassName", "serviceAccountName"],
  container: ["ports", "readinessProbe", "livenessProbe", "imagePullPolicy"],
};
const kTranslated = {
  pod: ["containers", "securityContext", "volumes", "terminationGracePeriodSeconds"],
  container: ["name", "image", "command", "args", "env", "envFrom", "resources",
    "securityContext", "volumeMounts", "workingDir"],
  securityContext: ["runAsNonRoot", "runAsUser", "runAsGroup", "readOnlyRootFilesystem",
    "allowPrivilegeEscalation", "capabilities", "seccompProfile"],
  podSecurityContext: ["runAsNonRoot", "runAsUser", "runAsGroup", "fsGroup", "seccompProfile"],
};

// checkKnown: every key of `obj` (at `where`, a `kind` of object) is translated or
// known not to apply; `ignored` collects the latter by kind for one note.
const ignored = new Set();
function checkKnown(where, kind, obj, known, notApplied = []) {
  for (const key of Object.keys(obj ?? {})) {
    if (known.includes(key)) continue;
    if (!notApplied.includes(key)) {
      throw new Error(`${where}: ${kind}.${key} is set, and tests/containers/pod-specs.mjs does not translate it to podman`);
    }
    ignored.add(`${kind}.${key}`);
  }
}

// podmanOptions: the podman run options for `container` of pod `podName`.
// A volumeClaimTemplates claim becomes the podman named volume <volumePrefix>-<pod>-<claim>:
// it outlives the container as the claim outlives the pod.
function podmanOptions(podName, spec, container, env, claims, volumePrefix) {
  const where = `${podName}/${container.name}`;
  checkKnown(where, "spec", spec, kTranslated.pod, kNotApplied.pod);
  checkKnown(where, "container", container, kTranslated.container, kNotApplied.container);
  const podSc = spec.securityContext ?? {};
  const sc = container.securityContext ?? {};
  checkKnown(where, "spec.securityContext", podSc, kTranslated.podSecurityContext);
  checkKnown(where, "securityContext", sc, kTranslated.securityContext);
  const pick = (key) => sc[key] ?? podSc[key];

  const opts = [`--hostname=${podName}`, "--pull=never"];
  if (!Array.isArray(container.command) || container.command.length === 0) {
    throw new Error(`${where}: no command (the test runs exactly the manifest's command)`);
  }
  opts.push(`--entrypoint=${JSON.stringify(container.command.map((a) => expand(a, env)))}`);
  if (container.workingDir) opts.push(`--workdir=${container.workingDir}`);
  for (const [k, v] of Object.entries(env)) opts.push("--env", `${k}=${v}`);

  // Security context.
  const uid = pick("runAsUser");
  const gid = pick("runAsGroup") ?? 0;
  if (!Number.isInteger(uid)) throw new Error(`${where}: runAsUser is not set; the image's user would run`);
  if (pick("runAsNonRoot") && uid === 0) throw new Error(`${where}: runAsNonRoot with runAsUser 0`);
  opts.push(`--user=${uid}:${gid}`);
  // fsGroup: the pod's processes are in the group, and a claim's volume is the group's
  // (the kubelet chowns it; podman's U option chowns it to the user and group above).
  const fsGroup = podSc.fsGroup;
  if (fsGroup !== undefined) {
    if (fsGroup !== gid) throw new Error(`${where}: fsGroup ${fsGroup} differs from runAsGroup ${gid}; only equal ones are translated`);
    opts.push(`--group-add=${fsGroup}`);
  }
  if (pick("readOnlyRootFilesystem")) opts.push("--read-only", "--read-only-tmpfs=false");
  if (sc.allowPrivilegeEscalation === false) opts.push("--security-opt=no-new-privileges");
  for (const cap of sc.capabilities?.drop ?? []) opts.push(`--cap-drop=${cap}`);
  for (const cap of sc.capabilities?.add ?? []) opts.push(`--cap-add=${cap}`);
  const seccomp = pick("seccompProfile")?.type ?? "RuntimeDefault";
  if (seccomp === "Unconfined") opts.push("--security-opt=seccomp=unconfined");
  else if (seccomp !== "RuntimeDefault") throw new Error(`${where}: seccompProfile ${seccomp} is not translated`);

  // Resources, as the kubelet sets the cgroup: the cpu limit as a CFS quota, the cpu
  // request as shares, the memory limit with no swap on top.
  const limits = container.resources?.limits ?? {};
  const requests = container.resources?.requests ?? {};
  checkKnown(where, "resources", container.resources, ["limits", "requests"]);
  checkKnown(where, "resources.limits", limits, ["cpu", "memory"]);
  checkKnown(where, "resources.requests", requests, ["cpu", "memory"]);
  if (limits.cpu !== undefined) opts.push(`--cpus=${cpuCores(limits.cpu)}`);
  if (requests.cpu !== undefined) {
    opts.push(`--cpu-shares=${Math.max(2, Math.floor(cpuCores(requests.cpu) * 1024))}`);
  }
  if (limits.memory !== undefined) {
    const bytes = memoryBytes(limits.memory);
    opts.push(`--memory=${bytes}`, `--memory-swap=${bytes}`);
  }
  if (requests.memory !== undefined) ignored.add("resources.requests.memory");

  // Volumes: emptyDir as a tmpfs of its size limit, world-writable like an emptyDir.
  for (const vm of container.volumeMounts ?? []) {
    checkKnown(where, "volumeMounts[]", vm, ["name", "mountPath", "readOnly"]);
    const claim = claims.find((c) => c.metadata?.name === vm.name);
    if (claim) {
      checkKnown(where, "volumeClaimTemplates[]", claim, ["metadata", "spec"]);
      checkKnown(where, "volumeClaimTemplates[].spec", claim.spec, ["accessModes", "resources", "storageClassName"]);
      if (fsGroup === undefined) throw new Error(`${where}: claim ${vm.name} without an fsGroup is not writable by uid ${uid}`);
      opts.push(`--mount=type=volume,source=${volumePrefix}-${podName}-${vm.name},destination=${vm.mountPath},U=true${vm.readOnly ? ",ro=true" : ""}`);
      continue;
    }
    const vol = (spec.volumes ?? []).find((v) => v.name === vm.name);
    if (!vol) throw new Error(`${where}: volumeMount ${vm.name} has no volume`);
    checkKnown(where, "spec.volumes[]", vol, ["name", "emptyDir"]);
    const size = vol.emptyDir.sizeLimit !== undefined ? `,tmpfs-size=${memoryBytes(vol.emptyDir.sizeLimit)}` : "";
    opts.push(`--mount=type=tmpfs,destination=${vm.mountPath},tmpfs-mode=1777${size}${vm.readOnly ? ",ro=true" : ""}`);
  }
  opts.push(`--stop-timeout=${spec.terminationGracePeriodSeconds ?? 30}`);
  return { opts, cpu: limits.cpu !== undefined ? cpuCores(limits.cpu) : 0,
    memory: limits.memory !== undefined ? memoryBytes(limits.memory) : 0 };
}

async function main() {
  const [overlay, out, volumePrefix = "gnc"] = process.argv.slice(2);
  if (!overlay || !out) throw new Error("usage: node pod-specs.mjs OVERLAY OUT_DIR [VOLUME_PREFIX]");
  const objects = await loadYamlAll(kustomize(overlay));
  fs.mkdirSync(out, { recursive: true });
  const rows = [];
  for (const { owner, template } of podTemplates(objects)) {
    const id = `${owner.kind}/${owner.metadata.name}`;
    const role = { "StatefulSet/gnc-server": "server", "Job/gnc-worker": "worker" }[id] ?? null;
    if (role === null) {
      console.error(`pod-specs: not run: ${id} (not a gnc server or worker)`);
      continue;
    }
    if (template.spec.initContainers?.length) throw new Error(`${owner.metadata.name}: initContainers are not translated`);
    if (template.spec.containers.length !== 1) throw new Error(`${owner.metadata.name}: one container per pod is translated`);
    const container = template.spec.containers[0];
    for (const identity of replicaIdentities(owner)) {
      // Pod names and hostnames as Kubernetes gives them: <statefulset>-<ordinal>,
      // and <job>-<index> for an Indexed Job.
      const pod = `${owner.metadata.name}-${identity.index}`;
      const env = { ...containerEnv(objects, container, identity.fieldRefs), ...identity.env };
      const { opts, cpu, memory } = podmanOptions(pod, template.spec, container, env,
        owner.spec.volumeClaimTemplates ?? [], volumePrefix);
      const args = (container.args ?? []).map((a) => expand(a, env));
      const unexpanded = [...container.command, ...(container.args ?? [])]
        .map((a) => expand(a, env))
        .filter((a) => /\$\([A-Za-z_]/.test(a));
      if (unexpanded.length > 0) throw new Error(`${pod}: unresolved variables in ${unexpanded.join(" ")}`);
      let dns = "-";
      if (role === "server") {
        const svc = find(objects, "Service", owner.spec.serviceName);
        if (!svc || svc.spec.clusterIP !== "None") throw new Error(`${pod}: Service ${owner.spec.serviceName} is not headless`);
        dns = `${pod}.${owner.spec.serviceName}`;
      }
      fs.writeFileSync(path.join(out, `${pod}.opts`), opts.map((o) => `${o}\0`).join(""));
      fs.writeFileSync(path.join(out, `${pod}.args`), args.map((a) => `${a}\0`).join(""));
      fs.writeFileSync(path.join(out, `${pod}.image`), `${container.image}\n`);
      fs.writeFileSync(path.join(out, `${pod}.env`), Object.entries(env).map(([k, v]) => `${k}=${v}\n`).join(""));
      rows.push([role, pod, dns, template.spec.terminationGracePeriodSeconds ?? 30, cpu, memory].join("\t"));
    }
  }
  if (!rows.some((r) => r.startsWith("server\t")) || !rows.some((r) => r.startsWith("worker\t"))) {
    throw new Error(`${overlay} renders no gnc-server StatefulSet or no gnc-worker Job`);
  }
  fs.writeFileSync(path.join(out, "pods.tsv"), rows.map((r) => `${r}\n`).join(""));
  if (ignored.size > 0) console.error(`pod-specs: not applied outside a cluster: ${[...ignored].join(", ")}`);
}

main().catch((e) => {
  console.error(`pod-specs: ${e.message}`);
  process.exit(1);
});
