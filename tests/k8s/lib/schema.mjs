// Offline schema validation of rendered objects: the Kubernetes OpenAPI schemas as
// compiled by kubernetes-models 4.x, plus a check for fields the schema does not
// know (the compiled validators ignore them, the API server would refuse or drop
// them), plus a hand check of the PodMonitor CRD, which kubernetes-models lacks.

// modelClass: the kubernetes-models class of an object, or null.
export async function modelClass(apiVersion, kind) {
  const [group, version] = apiVersion.includes("/") ? apiVersion.split("/") : ["", apiVersion];
  const modulePath = group === "" ? `kubernetes-models/${version}` : `kubernetes-models/${group}/${version}`;
  let mod;
  try {
    mod = await import(modulePath);
  } catch {
    return null;
  }
  return mod[kind] ?? null;
}

// readTracker: wraps objects in proxies that record which keys the validator reads.
// A key that was never read, in an object whose keys were never enumerated (maps
// such as labels are enumerated), is unknown to the schema.
function readTracker() {
  const records = new Map();
  const proxies = new WeakMap();
  function track(obj, where) {
    if (obj === null || typeof obj !== "object") return obj;
    if (proxies.has(obj)) return proxies.get(obj);
    const rec = { read: new Set(), enumerated: false, where };
    records.set(obj, rec);
    const proxy = new Proxy(obj, {
      get(t, k, r) {
        if (typeof k === "string") rec.read.add(k);
        const v = Reflect.get(t, k, r);
        return typeof k === "string" && v !== null && typeof v === "object" ? track(v, `${where}/${k}`) : v;
      },
      has(t, k) {
        if (typeof k === "string") rec.read.add(k);
        return Reflect.has(t, k);
      },
      ownKeys(t) {
        rec.enumerated = true;
        return Reflect.ownKeys(t);
      },
    });
    proxies.set(obj, proxy);
    return proxy;
  }
  function unknownFields() {
    const out = [];
    for (const [obj, rec] of records) {
      if (rec.enumerated || Array.isArray(obj)) continue;
      for (const k of Object.keys(obj)) if (!rec.read.has(k)) out.push(`${rec.where}/${k}`);
    }
    return out;
  }
  return { track, unknownFields };
}

const kTopLevel = new Set([
  "apiVersion", "kind", "metadata", "spec", "data", "binaryData", "immutable", "stringData", "type",
  "rules", "roleRef", "subjects",  // RBAC objects have no spec
]);

// validateObject: list of problems (empty = valid).
export async function validateObject(obj) {
  const id = `${obj.kind}/${obj.metadata?.name}`;
  if (obj.apiVersion === "monitoring.coreos.com/v1" && obj.kind === "PodMonitor") {
    return checkPodMonitor(obj).map((p) => `${id}: ${p}`);
  }
  const Model = await modelClass(obj.apiVersion ?? "", obj.kind ?? "");
  if (Model === null) return [`${id}: no schema for ${obj.apiVersion} ${obj.kind}`];
  const problems = [];
  for (const k of Object.keys(obj)) if (!kTopLevel.has(k)) problems.push(`${id}: unknown field /${k}`);
  const model = new Model(structuredClone(obj));
  const tracker = readTracker();
  for (const k of Object.keys(model)) model[k] = tracker.track(model[k], `/${k}`);
  try {
    model.validate();
  } catch (e) {
    problems.push(`${id}: ${e.message}`);
  }
  for (const f of tracker.unknownFields()) problems.push(`${id}: unknown field ${f}`);
  return problems;
}

// PodMonitor (monitoring.coreos.com/v1), the fields this project uses and the
// CRD's required ones; unknown fields are refused so a typo cannot slip through.
const kPodMonitorSpec = new Set([
  "jobLabel", "podTargetLabels", "podMetricsEndpoints", "selector", "namespaceSelector",
  "sampleLimit", "targetLimit", "labelLimit", "labelNameLengthLimit", "labelValueLengthLimit",
  "keepDroppedTargets", "attachMetadata", "scrapeProtocols", "scrapeClass", "bodySizeLimit",
]);
const kEndpoint = new Set([
  "port", "portNumber", "targetPort", "path", "scheme", "params", "interval", "scrapeTimeout",
  "honorLabels", "honorTimestamps", "trackTimestampsStaleness", "metricRelabelings",
  "relabelings", "proxyUrl", "followRedirects", "enableHttp2", "filterRunning",
  "basicAuth", "bearerTokenSecret", "authorization", "oauth2", "tlsConfig",
]);
const kRelabel = new Set(["sourceLabels", "separator", "targetLabel", "regex", "modulus", "replacement", "action"]);
const kActions = new Set([
  "replace", "keep", "drop", "hashmod", "labelmap", "labeldrop", "labelkeep", "lowercase",
  "uppercase", "keepequal", "dropequal",
  "Replace", "Keep", "Drop", "HashMod", "LabelMap", "LabelDrop", "LabelKeep", "Lowercase",
  "Uppercase", "KeepEqual", "DropEqual",
]);
const kDuration = /^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$/;

export function checkPodMonitor(pm) {
  const p = [];
  const isObj = (v) => v !== null && typeof v === "object" && !Array.isArray(v);
  if (!pm.metadata?.name) p.push("metadata.name is required");
  if (!isObj(pm.spec)) return [...p, "spec is required"];
  for (const k of Object.keys(pm)) if (!kTopLevel.has(k)) p.push(`unknown field /${k}`);
  for (const k of Object.keys(pm.spec)) if (!kPodMonitorSpec.has(k)) p.push(`unknown field spec.${k}`);
  const sel = pm.spec.selector;
  if (!isObj(sel)) p.push("spec.selector is required (an object)");
  else {
    for (const k of Object.keys(sel)) if (!["matchLabels", "matchExpressions"].includes(k)) p.push(`unknown field spec.selector.${k}`);
    if (sel.matchLabels !== undefined && (!isObj(sel.matchLabels) || Object.values(sel.matchLabels).some((v) => typeof v !== "string"))) {
      p.push("spec.selector.matchLabels must map strings to strings");
    }
  }
  const eps = pm.spec.podMetricsEndpoints;
  if (!Array.isArray(eps) || eps.length === 0) p.push("spec.podMetricsEndpoints must be a non-empty list");
  (eps ?? []).forEach((ep, i) => {
    const at = `spec.podMetricsEndpoints[${i}]`;
    if (!isObj(ep)) return p.push(`${at} must be an object`);
    for (const k of Object.keys(ep)) if (!kEndpoint.has(k)) p.push(`unknown field ${at}.${k}`);
    if (ep.port === undefined && ep.portNumber === undefined && ep.targetPort === undefined) p.push(`${at} names no port`);
    if (ep.port !== undefined && typeof ep.port !== "string") p.push(`${at}.port must be a port name`);
    for (const d of ["interval", "scrapeTimeout"]) {
      if (ep[d] !== undefined && !kDuration.test(ep[d])) p.push(`${at}.${d} '${ep[d]}' is not a Prometheus duration`);
    }
    if (ep.path !== undefined && !String(ep.path).startsWith("/")) p.push(`${at}.path must start with /`);
    for (const list of ["relabelings", "metricRelabelings"]) {
      (ep[list] ?? []).forEach((r, j) => {
        const rat = `${at}.${list}[${j}]`;
        for (const k of Object.keys(r)) if (!kRelabel.has(k)) p.push(`unknown field ${rat}.${k}`);
        if (r.action !== undefined && !kActions.has(r.action)) p.push(`${rat}.action '${r.action}' is not a relabel action`);
        if (r.sourceLabels !== undefined && !Array.isArray(r.sourceLabels)) p.push(`${rat}.sourceLabels must be a list`);
        const action = (r.action ?? "replace").toLowerCase();
        if (action === "replace" && r.targetLabel === undefined) p.push(`${rat}: replace needs targetLabel`);
      });
    }
  });
  return p;
}
