// Rendering the kustomize trees with the real kubectl, and reading what a pod's
// containers would run: the ConfigMaps they load, their environment and their
// command lines after Kubernetes' $(VAR) expansion.
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");
export const k8sRoot = path.join(repoRoot, "deploy/k8s");

// loadYaml: js-yaml, imported lazily so that checks without node_modules still run.
let yamlModule = null;
export async function loadYamlAll(text) {
  yamlModule ??= await import("js-yaml");
  return yamlModule.loadAll(text).filter((d) => d !== null && d !== undefined);
}

// kustomize: renders a kustomization directory; throws with kubectl's message.
export function kustomize(dir) {
  try {
    return execFileSync("kubectl", ["kustomize", dir], {
      encoding: "utf8",
      stdio: ["ignore", "pipe", "pipe"],
      maxBuffer: 64 << 20,
    });
  } catch (e) {
    throw new Error(`kubectl kustomize ${path.relative(repoRoot, dir) || dir} failed:\n${e.stderr || e.message}`);
  }
}

// overlayDirs: base and every overlay, as {name, dir}.
export function overlayDirs() {
  const out = [{ name: "base", dir: path.join(k8sRoot, "base") }];
  const overlays = path.join(k8sRoot, "overlays");
  for (const name of fs.readdirSync(overlays).sort()) {
    const dir = path.join(overlays, name);
    if (fs.existsSync(path.join(dir, "kustomization.yaml"))) out.push({ name: `overlays/${name}`, dir });
  }
  return out;
}

export function componentNames() {
  const dir = path.join(k8sRoot, "components");
  return fs
    .readdirSync(dir)
    .filter((n) => fs.existsSync(path.join(dir, n, "kustomization.yaml")))
    .sort();
}

// withComponent: renders `base` plus one component the way an operator's overlay
// would list it (components: [...], images retagged), in a scratch directory.
export function renderWithComponent(component, scratchParent = os.tmpdir()) {
  const scratch = fs.mkdtempSync(path.join(scratchParent, `gnc-k8s-${component}-`));
  try {
    const rel = (p) => path.relative(scratch, p);
    fs.writeFileSync(
      path.join(scratch, "kustomization.yaml"),
      [
        "apiVersion: kustomize.config.k8s.io/v1beta1",
        "kind: Kustomization",
        "resources:",
        `  - ${rel(path.join(k8sRoot, "base"))}`,
        "components:",
        `  - ${rel(path.join(k8sRoot, "components", component))}`,
        "images:",
        "  - name: gnc",
        "    newTag: 0.1.0",
        "  - name: gnc-cuda",
        "    newTag: 0.1.0",
        "",
      ].join("\n"),
    );
    return kustomize(scratch);
  } finally {
    fs.rmSync(scratch, { recursive: true, force: true });
  }
}

// renderAll: every tree the checks look at, {name, objects}. Components other than
// `skip` are rendered on top of base.
export async function renderAll({ skip = [] } = {}) {
  const out = [];
  for (const { name, dir } of overlayDirs()) {
    out.push({ name, objects: await loadYamlAll(kustomize(dir)) });
  }
  for (const c of componentNames()) {
    if (skip.includes(c)) continue;
    out.push({ name: `base+components/${c}`, objects: await loadYamlAll(renderWithComponent(c)) });
  }
  return out;
}

export function find(objects, kind, name) {
  return objects.find((o) => o.kind === kind && o.metadata?.name === name);
}

// podTemplates: {owner, template} for every workload object.
export function podTemplates(objects) {
  const out = [];
  for (const o of objects) {
    if (["StatefulSet", "Deployment", "DaemonSet", "ReplicaSet", "Job"].includes(o.kind)) {
      out.push({ owner: o, template: o.spec.template });
    } else if (o.kind === "CronJob") {
      out.push({ owner: o, template: o.spec.jobTemplate.spec.template });
    } else if (o.kind === "Pod") {
      out.push({ owner: o, template: { metadata: o.metadata, spec: o.spec } });
    }
  }
  return out;
}

// The downward-API field a StatefulSet pod reads its ordinal from (Kubernetes >= 1.28).
export const kPodIndexRef = "metadata.labels['apps.kubernetes.io/pod-index']";

// replicaIdentities: per pod of a workload, the env/fieldRefs that tell it apart.
export function replicaIdentities(owner) {
  if (owner.kind === "StatefulSet") {
    const n = owner.spec.replicas ?? 1;
    return Array.from({ length: n }, (_, i) => ({ index: i, fieldRefs: { [kPodIndexRef]: String(i) }, env: {} }));
  }
  if (owner.kind === "Job" && owner.spec.completionMode === "Indexed") {
    const n = owner.spec.completions ?? 1;
    return Array.from({ length: n }, (_, i) => ({ index: i, fieldRefs: {}, env: { JOB_COMPLETION_INDEX: String(i) } }));
  }
  return [{ index: 0, fieldRefs: {}, env: {} }];
}

// containerEnv: the environment Kubernetes gives `container` (envFrom first, then
// env, later entries winning), with `fieldRefs` supplying downward-API values and
// resourceFieldRef resolved from the container's own resources.
export function containerEnv(objects, container, fieldRefs = {}) {
  const env = {};
  for (const src of container.envFrom ?? []) {
    if (src.configMapRef) {
      const cm = find(objects, "ConfigMap", src.configMapRef.name);
      if (!cm) throw new Error(`container ${container.name}: ConfigMap ${src.configMapRef.name} is not rendered`);
      for (const [k, v] of Object.entries(cm.data ?? {})) env[(src.prefix ?? "") + k] = String(v);
    } else {
      throw new Error(`container ${container.name}: unsupported envFrom ${JSON.stringify(src)}`);
    }
  }
  for (const e of container.env ?? []) {
    if (e.value !== undefined) {
      env[e.name] = expand(String(e.value), env);
    } else if (e.valueFrom?.fieldRef) {
      const f = e.valueFrom.fieldRef.fieldPath;
      if (!(f in fieldRefs)) throw new Error(`container ${container.name}: no test value for fieldRef ${f}`);
      env[e.name] = fieldRefs[f];
    } else if (e.valueFrom?.resourceFieldRef) {
      const r = e.valueFrom.resourceFieldRef.resource;
      const [kind, res] = r.split(".");
      const q = container.resources?.[kind]?.[res];
      if (q === undefined) throw new Error(`container ${container.name}: ${r} is not set, needed by ${e.name}`);
      env[e.name] = String(Math.ceil(cpuCores(q)));
    } else if (e.valueFrom?.configMapKeyRef) {
      const cm = find(objects, "ConfigMap", e.valueFrom.configMapKeyRef.name);
      env[e.name] = String(cm?.data?.[e.valueFrom.configMapKeyRef.key]);
    } else {
      throw new Error(`container ${container.name}: unsupported env ${JSON.stringify(e)}`);
    }
  }
  return env;
}

// expand: Kubernetes' $(VAR) expansion of command/args: $(VAR) with VAR defined is
// replaced, $$ is a literal $, anything else stays as written.
export function expand(s, env) {
  return s.replace(/\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)/g, (m, name) => {
    if (m === "$$") return "$";
    return name in env ? env[name] : m;
  });
}

export function cpuCores(q) {
  const s = String(q);
  if (s.endsWith("m")) return Number(s.slice(0, -1)) / 1000;
  return Number(s);
}

// memoryBytes: a Kubernetes memory quantity ("512Mi", "1G", "1e3", "64Mi") in bytes.
export function memoryBytes(q) {
  const m = /^([0-9.]+(?:e[0-9]+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?$/.exec(String(q));
  if (!m) throw new Error(`not a memory quantity: '${q}'`);
  const units = { Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, Ti: 2 ** 40, k: 1e3, M: 1e6, G: 1e9, T: 1e12 };
  return Math.round(Number(m[1]) * (m[2] ? units[m[2]] : 1));
}

// flagValue: the value of --name=value in argv (the last one wins), or undefined.
export function flagValue(argv, name) {
  let v;
  for (const a of argv) {
    const m = /^--?([A-Za-z0-9_]+)=(.*)$/.exec(a);
    if (m && m[1] === name) v = m[2];
  }
  return v;
}

// durationSeconds: absl::Duration text ("20s", "1m30s", "500ms") in seconds.
export function durationSeconds(s) {
  const units = { h: 3600, m: 60, s: 1, ms: 1e-3, us: 1e-6, ns: 1e-9 };
  let total = 0;
  let rest = s;
  while (rest.length > 0) {
    const m = /^(\d+(?:\.\d+)?)(h|ms|us|ns|m|s)/.exec(rest);
    if (!m) throw new Error(`not a duration: '${s}'`);
    total += Number(m[1]) * units[m[2]];
    rest = rest.slice(m[0].length);
  }
  return total;
}
