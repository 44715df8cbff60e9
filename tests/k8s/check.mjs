// Offline checks of gnc's container images and Kubernetes manifests, run by ctest
// (tests/k8s/CMakeLists.txt) through run-check.sh, which skips (exit 77) when node or
// kubectl is missing. Usage: node check.mjs CHECK, one of the keys of `checks`.
//
// Environment (set by CMake): GNC_BUILD_DIR, the build tree; GNC_TARGETS,
// "name=path;..." of the daemons that are built ($<TARGET_FILE:...>).
import { execFileSync, spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

import { aptPackages, copies, parseDockerfile, stageArgs } from "./lib/dockerfile.mjs";
import {
  containerEnv, durationSeconds, expand, find, flagValue, k8sRoot, kPodIndexRef,
  loadYamlAll, podTemplates, renderAll, renderWithComponent, replicaIdentities, repoRoot,
} from "./lib/manifests.mjs";
import { validateObject } from "./lib/schema.mjs";

const kDockerfile = path.join(repoRoot, "deploy/docker/Dockerfile");
const kBinDir = "/opt/gnc/bin";
const kDaemons = ["gnc-server", "gnc-worker"];
// Kubernetes image name -> Dockerfile target that builds it.
const kImageTargets = { gnc: "cpu", "gnc-cuda": "cuda" };
// Images of tools the manifests run besides gnc (not built here, no gnc flags).
const kToolImages = new Set(["kubectl"]);
// Files that Debian packages put in an image (checked with dpkg-query where the
// package is installed on this machine).
const kPackageFiles = {
  "/usr/bin/tini": "tini",
  "/usr/bin/tini-static": "tini",
  "/usr/share/datasets/fashion-mnist": "dataset-fashion-mnist",
};
// Libraries the debian:12-slim base brings without any apt-get install.
const kSlimBasePackages = new Set(["libc6", "libgcc-s1", "libstdc++6", "zlib1g"]);

const failures = [];
const notes = [];
function fail(msg) {
  failures.push(msg);
}
function expect(cond, msg) {
  if (!cond) fail(msg);
  return cond;
}

function targets() {
  const out = {};
  for (const entry of (process.env.GNC_TARGETS ?? "").split(";")) {
    if (!entry) continue;
    const eq = entry.indexOf("=");
    out[entry.slice(0, eq)] = entry.slice(eq + 1);
  }
  return out;
}

function dpkgInstalled(pkg) {
  const r = spawnSync("dpkg-query", ["-W", "-f=${Status}", pkg], { encoding: "utf8" });
  return r.status === 0 && r.stdout.includes("install ok installed");
}

function hasDpkg() {
  return spawnSync("dpkg-query", ["--version"], { encoding: "utf8" }).status === 0;
}

// ---------------------------------------------------------------- Dockerfile
// What a stage puts in its image: {path -> how}, from COPY destinations and from
// the packages it (or a stage it is built FROM) installs.
function stageChain(doc, stage) {
  const chain = [stage];
  let s = stage;
  while (true) {
    const parent = doc.stages.find((p) => p.name && p.name === s.base);
    if (!parent) break;
    chain.push(parent);
    s = parent;
  }
  return chain;
}

function providedPaths(doc, stage) {
  const provided = new Map();
  for (const s of stageChain(doc, stage).reverse()) {
    const pkgs = aptPackages(s, stageArgs(doc, s));
    for (const [file, pkg] of Object.entries(kPackageFiles)) {
      if (pkgs.has(pkg)) provided.set(file, `package ${pkg}`);
    }
    for (const c of copies(s)) {
      if (c.dest.endsWith("/")) {
        for (const src of c.sources) {
          if (src.endsWith("/")) provided.set(c.dest.replace(/\/$/, ""), `COPY ${src}`);
          else provided.set(path.posix.join(c.dest, path.posix.basename(src)), `COPY ${src}`);
        }
      } else {
        provided.set(c.dest, `COPY ${c.sources.join(" ")}`);
      }
    }
  }
  return provided;
}

function ignoreMatchers() {
  const file = `${kDockerfile}.dockerignore`;
  if (!fs.existsSync(file)) return [];
  return fs
    .readFileSync(file, "utf8")
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith("#"))
    .map((pat) => {
      const re = pat
        .replace(/[.+^${}()|[\]\\]/g, "\\$&")
        .replace(/\*\*\//g, "(.*/)?")
        .replace(/\*/g, "[^/]*");
      return { pat, re: new RegExp(`^${re}(/.*)?$`) };
    });
}

// A stage's source tree (COPY . DIR), CMake build tree (-B DIR) and built targets.
function buildInfo(stage) {
  const info = { srcDir: null, buildDir: null, targets: new Set(), runs: [] };
  for (const inst of stage.instructions) {
    if (inst.keyword === "COPY" && !inst.flags.from && inst.args[0] === ".") info.srcDir = inst.args[1];
    if (inst.keyword !== "RUN") continue;
    info.runs.push(inst.rest);
    const b = /cmake\s[^&;]*-B\s*(\S+)/.exec(inst.rest);
    if (b) info.buildDir = b[1];
    const t = /cmake\s+--build\s+\S+\s+--target\s+([^&;]*)/.exec(inst.rest);
    if (t) for (const name of t[1].trim().split(/\s+/)) info.targets.add(name);
  }
  return info;
}

function checkCopySource(doc, stage, c, src, ignores) {
  const where = `Dockerfile:${c.inst.line} (${stage.name ?? stage.base})`;
  if (c.from === null) {
    if (/^https?:\/\//.test(src)) {
      expect(c.keyword === "ADD" && src.startsWith("https://"), `${where}: remote source ${src} must be an https ADD`);
      return;
    }
    const abs = path.join(repoRoot, src);
    if (!expect(fs.existsSync(abs), `${where}: COPY source '${src}' does not exist in the repository`)) return;
    const rel = path.relative(repoRoot, abs);
    if (rel !== "") {
      const hit = ignores.find((m) => m.re.test(rel));
      expect(!hit, `${where}: COPY source '${src}' is excluded by Dockerfile.dockerignore (${hit?.pat})`);
    }
    return;
  }
  const from = doc.stages.find((s) => s.name === c.from);
  if (!expect(from && doc.stages.indexOf(from) < doc.stages.indexOf(stage), `${where}: --from=${c.from} is not an earlier stage`)) return;
  const chain = stageChain(doc, from);
  const infos = chain.map(buildInfo);
  const clean = src.replace(/\/$/, "");
  // 1. A CMake target at its build-tree path.
  const info = infos.find((i) => i.buildDir && clean.startsWith(`${i.buildDir}/`));
  if (info) {
    const name = path.posix.basename(clean);
    const built = targets();
    if (!expect(name in built, `${where}: '${src}' is not a CMake target of this build (targets: ${Object.keys(built).join(", ") || "none"})`)) return;
    const rel = path.posix.relative(info.buildDir, clean);
    const actual = path.relative(process.env.GNC_BUILD_DIR, built[name]);
    expect(rel === actual, `${where}: CMake puts ${name} at <build>/${actual}, the Dockerfile copies <build>/${rel}`);
    expect(info.targets.has(name), `${where}: stage ${from.name} does not build target ${name} (cmake --build --target)`);
    return;
  }
  // 2. A file of a package installed in that stage.
  const pkg = kPackageFiles[clean];
  if (pkg !== undefined) {
    const pkgs = new Set(chain.flatMap((s) => [...aptPackages(s, stageArgs(doc, s))]));
    if (!expect(pkgs.has(pkg), `${where}: '${src}' comes from package ${pkg}, which stage ${from.name} does not install`)) return;
    if (dpkgInstalled(pkg)) {
      const files = execFileSync("dpkg-query", ["-L", pkg], { encoding: "utf8" }).split("\n");
      expect(files.includes(clean), `${where}: package ${pkg} does not ship ${clean}`);
    } else {
      notes.push(`package ${pkg} is not installed here: that it ships ${clean} is taken from the table in check.mjs`);
    }
    return;
  }
  // 3. Written by a repository script that a RUN of that stage calls with the path.
  for (const i of infos) {
    if (!i.srcDir) continue;
    for (const run of i.runs) {
      if (!run.includes(clean)) continue;
      const scripts = [...run.matchAll(new RegExp(`${i.srcDir.replace(/\//g, "\\/")}/(\\S+)`, "g"))]
        .map((m) => m[1])
        .filter((rel) => fs.existsSync(path.join(repoRoot, rel)) && fs.statSync(path.join(repoRoot, rel)).isFile());
      if (scripts.length > 0) {
        for (const s of scripts) {
          const mode = fs.statSync(path.join(repoRoot, s)).mode;
          expect(mode & 0o111, `${where}: ${s} (which writes ${src}) is not executable`);
        }
        return;
      }
    }
  }
  fail(`${where}: COPY --from=${c.from} '${src}' is neither a CMake target, nor a package file, nor written by a repository script in that stage`);
}

function checkEntrypoint(doc, stage) {
  const where = `Dockerfile target ${stage.name}`;
  const provided = providedPaths(doc, stage);
  const ep = stage.instructions.filter((i) => i.keyword === "ENTRYPOINT").pop();
  const cmd = stage.instructions.filter((i) => i.keyword === "CMD").pop();
  if (!expect(ep && Array.isArray(ep.json), `${where}: needs an exec-form (JSON) ENTRYPOINT`)) return;
  for (const arg of ep.json) {
    if (!arg.startsWith("/")) continue;
    expect(provided.has(arg), `${where}: ENTRYPOINT runs ${arg}, which the image does not contain`);
    if (arg.startsWith(kBinDir)) {
      const copy = copies(stage).find((c) => c.dest === arg && c.from === null);
      const src = copy && path.join(repoRoot, copy.sources[0]);
      if (src && fs.existsSync(src)) {
        expect(fs.statSync(src).mode & 0o111, `${where}: ${copy.sources[0]} is not executable in the repository`);
        expect(fs.readFileSync(src, "utf8").startsWith("#!"), `${where}: ${copy.sources[0]} has no #! line`);
      }
    }
  }
  if (expect(cmd && Array.isArray(cmd.json) && cmd.json.length > 0, `${where}: needs an exec-form CMD`)) {
    expect(kDaemons.includes(cmd.json[0]) && provided.has(`${kBinDir}/${cmd.json[0]}`),
      `${where}: CMD starts '${cmd.json[0]}', which is not a daemon of the image`);
  }
  for (const d of kDaemons) expect(provided.has(`${kBinDir}/${d}`), `${where}: the image has no ${kBinDir}/${d}`);
  const user = stage.instructions.filter((i) => i.keyword === "USER").pop();
  expect(user && /^[1-9][0-9]*(:[1-9][0-9]*)?$/.test(user.rest),
    `${where}: USER must be a numeric non-root uid (runAsNonRoot can only verify numbers), got '${user?.rest}'`);
}

// The CPU image installs the runtime packages by name: every library the built
// binaries load must come from them, their dependencies or the slim base.
function checkRuntimePackages(doc, stage) {
  if (!hasDpkg()) {
    notes.push("dpkg-query not found: runtime package coverage of the cpu image not checked");
    return;
  }
  // The dependency closure of the listed packages, one dpkg-query per level.
  const closure = new Set(kSlimBasePackages);
  let level = [...aptPackages(stage, stageArgs(doc, stage))];
  while (level.length > 0) {
    level = level.filter((p) => !closure.has(p));
    for (const p of level) closure.add(p);
    if (level.length === 0) break;
    const r = spawnSync("dpkg-query", ["-W", "-f=${Depends},${Pre-Depends}\n", ...level], { encoding: "utf8" });
    const next = new Set();
    for (const alt of r.stdout.replace(/\n/g, ",").split(",")) {
      for (const dep of alt.split("|")) {
        const name = dep.trim().split(/[\s(:]/)[0];
        if (name && !closure.has(name)) next.add(name);
      }
    }
    level = [...next];
  }
  // Which package owns each library the binaries load (one dpkg-query -S).
  const libs = new Map();  // path -> [binary, soname]
  for (const [name, bin] of Object.entries(targets())) {
    const ldd = spawnSync("ldd", [bin], { encoding: "utf8" });
    if (!expect(ldd.status === 0, `ldd ${bin} failed: ${ldd.stderr}`)) continue;
    for (const line of ldd.stdout.split("\n")) {
      const m = /^\s*(\S+)\s+=>\s+(\S+)/.exec(line);
      if (!m) continue;
      if (!expect(m[2] !== "not", `${name}: ${m[1]} not found by ldd`)) continue;
      // A CUDA-enabled build here links the CUDA runtime and cuBLAS; the cpu image is
      // built with GNC_WITH_CUDA=OFF and never loads them.
      if (/^lib(cudart|cublas|cublasLt|curand)\.so/.test(m[1])) continue;
      libs.set(fs.realpathSync(m[2]), [name, m[1]]);
    }
  }
  const owners = new Map();
  const query = (paths) => {
    const r = spawnSync("dpkg-query", ["-S", ...paths], { encoding: "utf8" });
    for (const line of r.stdout.split("\n")) {
      const m = /^([^:,]+)(?::[^:,\s]+)?(?:, [^:]+)*: (\S+)$/.exec(line);
      if (m) owners.set(m[2], m[1]);
    }
  };
  query([...libs.keys()]);
  // Debian 12 is merged-/usr: dpkg may know a library by its /lib or /usr/lib path.
  const alias = (p) => (p.startsWith("/usr/lib/") ? p.slice(4) : `/usr${p}`);
  const missing = [...libs.keys()].filter((p) => !owners.has(p));
  if (missing.length > 0) query(missing.map(alias));
  for (const [file, [name, soname]] of libs) {
    const owner = owners.get(file) ?? owners.get(alias(file));
    if (!expect(owner, `${name}: no Debian package owns ${file} (${soname})`)) continue;
    expect(closure.has(owner),
      `Dockerfile target ${stage.name}: ${name} loads ${soname} from package ${owner}, which the image does not install`);
  }
}

function checkDockerfile() {
  // The parser checks the syntax of stages no builder here reaches (the cuda target):
  // it must refuse a misspelt instruction or flag, or that check proves nothing.
  for (const bad of ["FROM a AS b\nCOPPY x y\n", "FROM a\nCOPY --form=b x y\n"]) {
    let refused = false;
    try {
      parseDockerfile(bad);
    } catch {
      refused = true;
    }
    expect(refused, `the Dockerfile parser accepts ${JSON.stringify(bad)}`);
  }
  const doc = parseDockerfile(fs.readFileSync(kDockerfile, "utf8"));
  const ignores = ignoreMatchers();
  const built = targets();
  for (const d of kDaemons) {
    expect(d in built, `CMake defines no target ${d} in this build: the images copy it`);
  }
  for (const stage of doc.stages) {
    for (const c of copies(stage)) for (const src of c.sources) checkCopySource(doc, stage, c, src, ignores);
  }
  for (const target of Object.values(kImageTargets)) {
    const stage = doc.stages.find((s) => s.name === target);
    if (!expect(stage, `Dockerfile has no target '${target}'`)) continue;
    checkEntrypoint(doc, stage);
  }
  const cpu = doc.stages.find((s) => s.name === "cpu");
  if (cpu) {
    expect(cpu.base.startsWith("debian:12-slim"), `target cpu must build on debian:12-slim, not ${cpu.base}`);
    checkRuntimePackages(doc, cpu);
  }
  const cuda = doc.stages.find((s) => s.name === "cuda");
  if (cuda) expect(cuda.base.startsWith("nvidia/cuda:") && cuda.base.includes("runtime"), `target cuda must build on an nvidia/cuda runtime image, not ${cuda.base}`);
  // The CUDA image's library gathering works on these binaries.
  const scratch = fs.mkdtempSync(path.join(os.tmpdir(), "gnc-libs-"));
  try {
    const r = spawnSync(path.join(repoRoot, "deploy/docker/collect-runtime-libs"), [scratch, ...Object.values(built)], { encoding: "utf8" });
    if (expect(r.status === 0, `collect-runtime-libs failed: ${r.stderr}`)) {
      const libs = fs.readdirSync(scratch);
      expect(libs.some((l) => l.startsWith("libgrpc++")), `collect-runtime-libs gathered no gRPC library: ${libs.join(" ")}`);
      expect(!libs.some((l) => /^(libc|libstdc\+\+|libcuda)\.so/.test(l)), `collect-runtime-libs copied base libraries: ${libs.join(" ")}`);
    }
  } finally {
    fs.rmSync(scratch, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------- rendering
async function checkRender() {
  const trees = await renderAll({ skip: ["monitoring"] });
  for (const t of trees) {
    expect(t.objects.length > 0, `${t.name}: renders no object`);
    console.log(`${t.name}: ${t.objects.map((o) => `${o.kind}/${o.metadata.name}`).join(" ")}`);
  }
}

async function checkRenderMonitoring() {
  const objects = await loadYamlAll(renderWithComponent("monitoring"));
  const cm = objects.find((o) => o.kind === "ConfigMap" && o.metadata.labels?.grafana_dashboard !== undefined);
  if (!expect(cm, "components/monitoring renders no ConfigMap labelled grafana_dashboard")) return;
  const files = Object.keys(cm.data ?? {});
  expect(files.length === 1 && files[0].endsWith(".json"), `dashboard ConfigMap holds ${files.join(", ")}`);
  for (const f of files) {
    let dash;
    try {
      dash = JSON.parse(cm.data[f]);
    } catch (e) {
      fail(`${f} is not JSON: ${e.message}`);
      continue;
    }
    expect(Array.isArray(dash.panels) && dash.panels.length > 0, `${f} has no panels`);
  }
  const failures0 = failures.length;
  for (const o of objects) for (const p of await validateObject(o)) fail(`base+components/monitoring: ${p}`);
  if (failures.length === failures0) console.log(`components/monitoring: ConfigMap/${cm.metadata.name} (${files.join(", ")})`);
}

function checkDashboardInSync() {
  const source = path.join(repoRoot, "deploy/grafana/dashboards/gnc-dashboard.json");
  const copy = path.join(k8sRoot, "components/monitoring/gnc-dashboard.json");
  if (!expect(fs.existsSync(source), `${path.relative(repoRoot, source)} does not exist`)) return;
  expect(
    fs.readFileSync(source, "utf8") === fs.readFileSync(copy, "utf8"),
    `${path.relative(repoRoot, copy)} differs from ${path.relative(repoRoot, source)}; run\n` +
      `  cp ${path.relative(repoRoot, source)} ${path.relative(repoRoot, copy)}`,
  );
}

async function checkSchema() {
  const trees = await renderAll({ skip: ["monitoring"] });
  let n = 0;
  for (const t of trees) {
    for (const o of t.objects) {
      n++;
      for (const p of await validateObject(o)) fail(`${t.name}: ${p}`);
    }
  }
  // The validator must refuse what the API server would: a known-bad object.
  const bad = structuredClone(find(trees[0].objects, "StatefulSet", "gnc-server"));
  bad.spec.template.spec.containers[0].imagePullPolicy = "Sometimes";
  bad.spec.template.spec.containers[0].livenessProbes = {};
  const problems = await validateObject(bad);
  expect(problems.some((p) => p.includes("imagePullPolicy")) && problems.some((p) => p.includes("livenessProbes")),
    `the schema check accepts a bad StatefulSet: ${problems.join("; ")}`);
  console.log(`${n} objects in ${trees.length} trees valid`);
}

// ---------------------------------------------------------------- command lines
// A directory that stands for the image's /opt/gnc/bin: gnc-launch from the
// repository, the daemons from the build.
function localBinDir() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "gnc-bin-"));
  fs.symlinkSync(path.join(repoRoot, "deploy/docker/gnc-launch"), path.join(dir, "gnc-launch"));
  for (const [name, file] of Object.entries(targets())) fs.symlinkSync(file, path.join(dir, name));
  return dir;
}

function runCheckConfig(binDir, argv, env) {
  const local = argv.map((a) => (a.startsWith(`${kBinDir}/`) ? path.join(binDir, a.slice(kBinDir.length + 1)) : a));
  const r = spawnSync(local[0], [...local.slice(1), "--check_config"], {
    encoding: "utf8",
    env: { PATH: process.env.PATH, ...env },
    timeout: 30000,
  });
  return r;
}

// gnc-launch: an explicit flag wins over the pod's identity; a malformed identity
// is refused rather than passed on.
function checkLaunch(binDir) {
  const launch = `${kBinDir}/gnc-launch`;
  const cases = [
    { argv: ["gnc-server", "--num_shards=3"], env: { GNC_SHARD_INDEX: "2" }, out: /shard 2\/3/ },
    { argv: ["gnc-server", "--num_shards=3", "--shard_index=1"], env: { GNC_SHARD_INDEX: "2" }, out: /shard 1\/3/ },
    { argv: ["gnc-server", "--num_shards=3"], env: { GNC_SHARD_INDEX: "x1" }, status: 2 },
    { argv: ["gnc-worker", "--servers=a:1", "--num_workers=4"], env: { JOB_COMPLETION_INDEX: "3" }, out: /worker 3\/4/ },
    { argv: ["gnc-worker", "--servers=a:1", "--num_workers=4", "--rank=1"], env: { JOB_COMPLETION_INDEX: "3" }, out: /worker 1\/4/ },
    { argv: ["gnc-worker", "--servers=a:1", "--num_workers=4"], env: { JOB_COMPLETION_INDEX: "-1" }, status: 2 },
    { argv: ["sh", "-c", "true"], env: {}, status: 2 },
  ];
  for (const c of cases) {
    if (kDaemons.includes(c.argv[0]) && !(c.argv[0] in targets())) continue;
    const r = runCheckConfig(binDir, [launch, ...c.argv], c.env);
    const out = `${r.stdout}${r.stderr}`.trim();
    const what = `gnc-launch ${c.argv.join(" ")} with ${JSON.stringify(c.env)}`;
    if (c.status !== undefined) expect(r.status === c.status, `${what}: exit ${r.status}, want ${c.status}: ${out}`);
    else expect(r.status === 0 && c.out.test(out), `${what}: exit ${r.status}, want '${c.out.source}': ${out}`);
  }
}

async function checkFlags() {
  const built = targets();
  const doc = parseDockerfile(fs.readFileSync(kDockerfile, "utf8"));
  const binDir = localBinDir();
  try {
    // The daemons must refuse an unknown flag, or this check could not fail.
    for (const d of Object.keys(built)) {
      const r = runCheckConfig(binDir, [`${kBinDir}/${d}`, "--no_such_flag_in_gnc=1"], {});
      expect(r.status !== 0, `${d} accepts an unknown flag: the flag check would prove nothing`);
    }
    checkLaunch(binDir);
    const trees = await renderAll({ skip: ["monitoring"] });
    let runs = 0;
    for (const t of trees) {
      for (const { owner, template } of podTemplates(t.objects)) {
        for (const c of template.spec.containers) {
          const where = `${t.name}: ${owner.kind}/${owner.metadata.name} container ${c.name}`;
          if (!expect(Array.isArray(c.command) && c.command.length > 0, `${where}: no command`)) continue;
          const imageName = c.image.split("@")[0].replace(/:[^/:]*$/, "").split("/").pop();
          if (kToolImages.has(imageName)) continue;  // checked in checkReaper
          const target = kImageTargets[imageName];
          if (!expect(target, `${where}: image ${c.image} is not built by deploy/docker/Dockerfile (${Object.keys(kImageTargets).join(", ")})`)) continue;
          const provided = providedPaths(doc, doc.stages.find((s) => s.name === target));
          for (const identity of replicaIdentities(owner)) {
            const env = { ...containerEnv(t.objects, c, identity.fieldRefs), ...identity.env };
            let argv = [...c.command, ...(c.args ?? [])].map((a) => expand(a, env));
            const unexpanded = argv.filter((a) => /\$\([A-Za-z_]/.test(a));
            expect(unexpanded.length === 0, `${where}: unresolved variables in ${unexpanded.join(" ")}`);
            if (argv[0] === "/usr/bin/tini") {
              expect(provided.has("/usr/bin/tini"), `${where}: image ${imageName} has no /usr/bin/tini`);
              expect(argv[1] === "--", `${where}: tini must be followed by --`);
              argv = argv.slice(2);
            }
            if (!expect(provided.has(argv[0]), `${where}: runs ${argv[0]}, which image ${imageName} does not contain`)) break;
            let daemon = path.posix.basename(argv[0]);
            if (daemon === "gnc-launch") {
              daemon = argv[1];
              expect(provided.has(`${kBinDir}/${daemon}`), `${where}: gnc-launch starts ${daemon}, which image ${imageName} does not contain`);
            }
            if (!(daemon in built)) {
              fail(`${where}: ${daemon} is not built, its flags cannot be checked`);
              break;
            }
            const dataDir = flagValue(argv, "data_dir");
            if (dataDir !== undefined) {
              expect(provided.has(dataDir.replace(/\/$/, "")), `${where}: --data_dir=${dataDir} is not in image ${imageName}`);
            }
            const r = runCheckConfig(binDir, argv, env);
            runs++;
            const out = `${r.stdout}${r.stderr}`.trim();
            if (!expect(r.status === 0, `${where} (pod ${identity.index}): --check_config exited ${r.status}:\n  ${argv.join(" ")}\n  ${out}`)) continue;
            const want = daemon === "gnc-server" ? new RegExp(`shard ${identity.index}/`) : new RegExp(`worker ${identity.index}/`);
            expect(want.test(out), `${where} (pod ${identity.index}): expected '${want.source}' in: ${out}`);
          }
        }
      }
    }
    console.log(`${runs} container command lines accepted by --check_config`);
  } finally {
    fs.rmSync(binDir, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------- consistency
function argvOf(objects, c, identity = {}) {
  const env = containerEnv(objects, c, { [kPodIndexRef]: "0", ...identity });
  return [...c.command, ...(c.args ?? [])].map((a) => expand(a, env));
}

function checkContainerBasics(where, template, c) {
  const pod = template.spec.securityContext ?? {};
  const sc = c.securityContext ?? {};
  expect(pod.runAsNonRoot === true || sc.runAsNonRoot === true, `${where}: runAsNonRoot is not set`);
  const uid = sc.runAsUser ?? pod.runAsUser;
  expect(Number.isInteger(uid) && uid > 0, `${where}: runAsUser must be a non-root uid`);
  expect(sc.readOnlyRootFilesystem === true, `${where}: readOnlyRootFilesystem must be true`);
  expect(sc.allowPrivilegeEscalation === false, `${where}: allowPrivilegeEscalation must be false`);
  expect(JSON.stringify(sc.capabilities?.drop) === '["ALL"]' && !(sc.capabilities?.add?.length > 0), `${where}: capabilities must drop ALL and add none`);
  const seccomp = sc.seccompProfile?.type ?? pod.seccompProfile?.type;
  expect(seccomp === "RuntimeDefault", `${where}: seccompProfile must be RuntimeDefault`);
  for (const kind of ["requests", "limits"]) {
    for (const res of ["cpu", "memory"]) {
      expect(c.resources?.[kind]?.[res] !== undefined, `${where}: resources.${kind}.${res} is not set`);
    }
  }
  const tag = c.image.split("@")[0].split("/").pop().split(":")[1];
  expect(tag && tag !== "latest", `${where}: image ${c.image} needs an explicit tag`);
}

function checkMetrics(where, template, c, argv) {
  const port = flagValue(argv, "metrics_port");
  const ann = template.metadata?.annotations ?? {};
  if (port === undefined || port === "0") {
    expect(ann["prometheus.io/scrape"] !== "true", `${where}: scrape annotation without --metrics_port`);
    return;
  }
  expect(ann["prometheus.io/scrape"] === "true", `${where}: --metrics_port=${port} but no prometheus.io/scrape annotation`);
  expect(ann["prometheus.io/port"] === port, `${where}: prometheus.io/port '${ann["prometheus.io/port"]}' != --metrics_port=${port}`);
  expect((ann["prometheus.io/path"] ?? "/metrics") === "/metrics", `${where}: prometheus.io/path must be /metrics`);
  const named = (c.ports ?? []).find((p) => p.name === "metrics");
  expect(named && String(named.containerPort) === port, `${where}: no container port named metrics on ${port}`);
}

function checkTree(name, objects) {
  const sts = find(objects, "StatefulSet", "gnc-server");
  const job = find(objects, "Job", "gnc-worker");
  if (!expect(sts && job, `${name}: needs StatefulSet gnc-server and Job gnc-worker`)) return;
  const svc = find(objects, "Service", sts.spec.serviceName);
  const server = sts.spec.template.spec.containers.find((c) => c.name === "server");
  const worker = job.spec.template.spec.containers.find((c) => c.name === "worker");
  if (!expect(server && worker, `${name}: containers server and worker`)) return;
  const senv = containerEnv(objects, server, { [kPodIndexRef]: "0" });
  const wenv = containerEnv(objects, worker);
  for (const k of ["GNC_NUM_SHARDS", "GNC_NUM_WORKERS", "GNC_SERVERS"]) {
    expect(k in senv || k in wenv, `${name}: the job's ConfigMap has no ${k}`);
  }

  // StatefulSet, headless Service, shard count and DNS names.
  const S = sts.spec.replicas ?? 1;
  expect(sts.spec.podManagementPolicy === "Parallel", `${name}: StatefulSet podManagementPolicy must be Parallel`);
  expect(svc && svc.spec.clusterIP === "None", `${name}: Service ${sts.spec.serviceName} must exist and be headless`);
  const sargv = argvOf(objects, server);
  const wargv = argvOf(objects, worker, {});
  expect(Number(senv.GNC_NUM_SHARDS) === S, `${name}: GNC_NUM_SHARDS=${senv.GNC_NUM_SHARDS} but StatefulSet replicas=${S}`);
  expect(Number(flagValue(sargv, "num_shards")) === S, `${name}: server --num_shards=${flagValue(sargv, "num_shards")} but replicas=${S}`);
  const port = flagValue(sargv, "port") ?? "7070";
  expect(svc?.spec.ports?.some((p) => String(p.port) === port && (p.targetPort === "grpc" || String(p.targetPort) === port)),
    `${name}: Service ${sts.spec.serviceName} does not expose the gRPC port ${port}`);
  const servers = (flagValue(wargv, "servers") ?? "").split(",");
  const want = Array.from({ length: S }, (_, i) => `${sts.metadata.name}-${i}.${sts.spec.serviceName}:${port}`);
  expect(JSON.stringify(servers) === JSON.stringify(want), `${name}: worker --servers=${servers.join(",")}, want ${want.join(",")}`);
  const grpcPort = (server.ports ?? []).find((p) => p.name === "grpc");
  expect(grpcPort && String(grpcPort.containerPort) === port, `${name}: server has no container port grpc on ${port}`);

  // Indexed Job, worker count.
  const K = job.spec.completions;
  expect(job.spec.completionMode === "Indexed", `${name}: Job completionMode must be Indexed`);
  expect(job.spec.parallelism === K, `${name}: Job parallelism=${job.spec.parallelism} != completions=${K} (synchronous training runs all workers at once)`);
  expect(Number(wenv.GNC_NUM_WORKERS) === K, `${name}: GNC_NUM_WORKERS=${wenv.GNC_NUM_WORKERS} but Job completions=${K}`);
  expect(Number(flagValue(sargv, "num_workers")) === K && Number(flagValue(wargv, "num_workers")) === K,
    `${name}: --num_workers must be ${K} on servers and workers`);
  checkWorkerFailurePolicy(name, job, worker);
  expect(Number.isInteger(job.spec.backoffLimit), `${name}: Job needs a backoffLimit`);
  checkCheckpoints(name, sts, server, sargv);
  expect(flagValue(sargv, "total_steps") === flagValue(wargv, "steps"),
    `${name}: server --total_steps=${flagValue(sargv, "total_steps")} != worker --steps=${flagValue(wargv, "steps")}`);

  // Lifecycle: the servers do not exit by themselves (a StatefulSet would restart
  // them); the reaper scales them to zero once the workers' Job completed, and they
  // drain in time.
  expect(flagValue(sargv, "exit_when_done") === "false", `${name}: servers in a StatefulSet need --exit_when_done=false`);
  checkReaper(name, objects, sts, job);
  const drain = durationSeconds(flagValue(sargv, "drain_timeout") ?? "10s");
  const grace = sts.spec.template.spec.terminationGracePeriodSeconds ?? 30;
  expect(grace > drain, `${name}: terminationGracePeriodSeconds=${grace} must exceed --drain_timeout (${drain}s)`);

  // Probes: native gRPC on the health service, on the plaintext health port when
  // there is one (the kubelet's probes cannot speak TLS).
  const healthPort = flagValue(sargv, "health_port");
  const probePort = healthPort !== undefined && healthPort !== "0" ? healthPort : port;
  if (flagValue(sargv, "tls_cert_file") !== undefined) {
    expect(probePort !== port, `${name}: the servers serve TLS, so their probes need a plaintext --health_port`);
  }
  if (probePort !== port) {
    expect((server.ports ?? []).some((p) => p.name === "health" && String(p.containerPort) === probePort),
      `${name}: server has no container port health on --health_port=${probePort}`);
  }
  for (const probe of ["readinessProbe", "livenessProbe"]) {
    const p = server[probe];
    expect(p?.grpc && String(p.grpc.port) === probePort && !p.grpc.service, `${name}: server ${probe} must be a gRPC probe on port ${probePort} (overall health)`);
  }
  for (const problem of securityProblems(objects)) fail(`${name}: ${problem}`);

  for (const { owner, template } of podTemplates(objects)) {
    if (owner.metadata.name === "gnc-reaper") continue;  // checkReaper
    expect(template.spec.automountServiceAccountToken === false, `${name}: ${owner.kind}/${owner.metadata.name} mounts a service account token it does not need`);
    for (const c of template.spec.containers) {
      const where = `${name}: ${owner.kind}/${owner.metadata.name} container ${c.name}`;
      checkContainerBasics(where, template, c);
      checkMetrics(where, template, c, argvOf(objects, c, { [kPodIndexRef]: "0" }));
      if (c.resources?.limits?.["nvidia.com/gpu"] !== undefined) {
        const argv = argvOf(objects, c, { [kPodIndexRef]: "0" });
        expect(flagValue(argv, "device") === "cuda", `${where}: has a GPU but --device=${flagValue(argv, "device")}`);
        expect(c.image.split("/").pop().startsWith("gnc-cuda"), `${where}: has a GPU but runs image ${c.image}`);
      }
    }
  }

  // PodMonitor: selects the gnc pods and scrapes a port they have.
  for (const pm of objects.filter((o) => o.kind === "PodMonitor")) {
    const sel = pm.spec.selector.matchLabels ?? {};
    const exprs = pm.spec.selector.matchExpressions ?? [];
    const selects = (labels) => Object.entries(sel).every(([k, v]) => labels[k] === v) &&
      exprs.every((e) => (e.operator === "In" ? e.values.includes(labels[e.key]) :
        e.operator === "NotIn" ? !e.values.includes(labels[e.key]) :
        e.operator === "Exists" ? e.key in labels : !(e.key in labels)));
    for (const { owner, template } of podTemplates(objects)) {
      const labels = template.metadata?.labels ?? {};
      if (owner.metadata.name === "gnc-reaper") {
        expect(!selects(labels), `${name}: PodMonitor ${pm.metadata.name} selects the reaper, which serves no metrics`);
        continue;
      }
      expect(selects(labels), `${name}: PodMonitor ${pm.metadata.name} does not select ${owner.kind}/${owner.metadata.name}`);
      for (const ep of pm.spec.podMetricsEndpoints) {
        expect(template.spec.containers.some((c) => (c.ports ?? []).some((p) => p.name === ep.port)),
          `${name}: ${owner.kind}/${owner.metadata.name} has no port ${ep.port} for PodMonitor ${pm.metadata.name}`);
      }
    }
  }
}

// The flags that name a secret file, and the flags each side needs given the other's.
const kSecretFlags = ["tls_cert_file", "tls_key_file", "tls_client_ca_file", "tls_ca_file", "auth_token_file"];

// securityProblems: what is wrong with a tree's transport security: every secret file
// a container is given must come from a Secret mounted read-only and readable by the
// pod's user; the workers must present what the servers require (TLS, a client
// certificate, the token) and nothing the servers would not check.
function securityProblems(objects) {
  const problems = [];
  const sts = find(objects, "StatefulSet", "gnc-server");
  const job = find(objects, "Job", "gnc-worker");
  const server = sts?.spec.template.spec.containers.find((c) => c.name === "server");
  const worker = job?.spec.template.spec.containers.find((c) => c.name === "worker");
  if (!server || !worker) return ["no server or worker container"];
  const sargv = argvOf(objects, server);
  const wargv = argvOf(objects, worker, {});
  for (const [owner, c, argv] of [[sts, server, sargv], [job, worker, wargv]]) {
    const pod = owner.spec.template.spec;
    const uid = c.securityContext?.runAsUser ?? pod.securityContext?.runAsUser;
    for (const flag of kSecretFlags) {
      const file = flagValue(argv, flag);
      if (file === undefined || file === "") continue;
      const where = `${owner.kind}/${owner.metadata.name} --${flag}=${file}`;
      const mount = (c.volumeMounts ?? []).find((m) => file.startsWith(`${m.mountPath.replace(/\/$/, "")}/`));
      if (!mount) { problems.push(`${where}: nothing is mounted there`); continue; }
      const volume = (pod.volumes ?? []).find((v) => v.name === mount.name);
      if (!volume?.secret?.secretName) { problems.push(`${where}: volume ${mount.name} is not a Secret`); continue; }
      if (mount.readOnly !== true) problems.push(`${where}: the Secret must be mounted readOnly`);
      const key = file.slice(mount.mountPath.replace(/\/$/, "").length + 1);
      const items = volume.secret.items;
      if (items && !items.some((i) => i.path === key)) problems.push(`${where}: Secret ${volume.secret.secretName} projects no ${key}`);
      const mode = volume.secret.defaultMode ?? 0o644;
      const readable = (mode & 0o004) !== 0 || uid === 0 ||
        ((mode & 0o040) !== 0 && pod.securityContext?.fsGroup !== undefined);
      if (!readable) problems.push(`${where}: mode ${mode.toString(8)} is not readable by uid ${uid} (set an fsGroup)`);
      if ((mode & 0o002) !== 0) problems.push(`${where}: the Secret's files are world-writable (mode ${mode.toString(8)})`);
    }
  }
  const has = (argv, flag) => (flagValue(argv, flag) ?? "") !== "";
  if (has(sargv, "tls_cert_file") && !has(wargv, "tls_ca_file")) {
    problems.push("the servers serve TLS but the workers have no --tls_ca_file to verify them");
  }
  if (!has(sargv, "tls_cert_file") && (has(wargv, "tls_ca_file") || has(wargv, "tls_cert_file"))) {
    problems.push("the workers speak TLS to servers that serve plaintext");
  }
  if (has(sargv, "tls_client_ca_file") && !(has(wargv, "tls_cert_file") && has(wargv, "tls_key_file"))) {
    problems.push("the servers require client certificates (--tls_client_ca_file) the workers do not present");
  }
  if (has(sargv, "auth_token_file") !== has(wargv, "auth_token_file")) {
    problems.push("--auth_token_file must be given to servers and workers alike");
  }
  return problems;
}

// checkSecurityCheck: securityProblems must find what is wrong, or it proves nothing:
// each mutation of the security component's tree must be reported.
function checkSecurityCheck(objects) {
  const mutations = {
    "worker without the token": (o) => {
      const c = find(o, "Job", "gnc-worker").spec.template.spec.containers[0];
      c.args = c.args.filter((a) => !a.startsWith("--auth_token_file"));
    },
    "worker without a client certificate": (o) => {
      const c = find(o, "Job", "gnc-worker").spec.template.spec.containers[0];
      c.args = c.args.filter((a) => !a.startsWith("--tls_cert_file") && !a.startsWith("--tls_key_file"));
    },
    "token not mounted": (o) => {
      const c = find(o, "StatefulSet", "gnc-server").spec.template.spec.containers[0];
      c.volumeMounts = c.volumeMounts.filter((m) => !m.mountPath.includes("token"));
    },
    "TLS Secret writable": (o) => {
      const c = find(o, "StatefulSet", "gnc-server").spec.template.spec.containers[0];
      for (const m of c.volumeMounts) m.readOnly = false;
    },
    "no fsGroup for group-readable files": (o) => {
      delete find(o, "Job", "gnc-worker").spec.template.spec.securityContext.fsGroup;
    },
  };
  for (const [what, mutate] of Object.entries(mutations)) {
    const copy = structuredClone(objects);
    mutate(copy);
    expect(securityProblems(copy).length > 0, `the security check misses: ${what}`);
  }
}

// checkWorkerFailurePolicy: a failed worker is replaced with the same rank (it
// rejoins); bad flags (exit 2) fail the Job at once; evictions do not count.
function checkWorkerFailurePolicy(name, job, worker) {
  const policy = job.spec.template.spec.restartPolicy;
  const rules = job.spec.podFailurePolicy?.rules ?? [];
  if (policy === "OnFailure") return;  // restarted in place, same rank
  if (!expect(policy === "Never" && rules.length > 0,
    `${name}: worker restartPolicy must be OnFailure, or Never with a podFailurePolicy (a replaced worker rejoins)`)) return;
  const failsOnFlags = rules.some((r) => r.action === "FailJob" && r.onExitCodes?.operator === "In" &&
    r.onExitCodes.values.includes(2) && (r.onExitCodes.containerName ?? worker.name) === worker.name);
  expect(failsOnFlags, `${name}: podFailurePolicy must fail the Job on exit code 2 (bad flags)`);
  const ignoresDisruption = rules.some((r) => r.action === "Ignore" &&
    (r.onPodConditions ?? []).some((c) => c.type === "DisruptionTarget"));
  expect(ignoresDisruption, `${name}: podFailurePolicy must not count evictions (DisruptionTarget)`);
  expect(!rules.some((r) => r.action === "FailJob" && r.onExitCodes?.values?.includes(1)),
    `${name}: exit code 1 (a shard away, no progress) must be retried, not fail the Job`);
}

// checkCheckpoints: the servers checkpoint to a volume of their own that outlives
// the pod (a volumeClaimTemplate), writable by their user.
function checkCheckpoints(name, sts, server, sargv) {
  const dir = flagValue(sargv, "checkpoint_dir");
  if (!expect(dir, `${name}: servers need --checkpoint_dir (a restarted shard must restore its state)`)) return;
  expect(Number(flagValue(sargv, "checkpoint_every")) > 0, `${name}: servers need --checkpoint_every > 0`);
  const mount = (server.volumeMounts ?? []).find((m) => m.mountPath === dir);
  if (!expect(mount, `${name}: nothing is mounted at --checkpoint_dir=${dir}`)) return;
  const claim = (sts.spec.volumeClaimTemplates ?? []).find((t) => t.metadata.name === mount.name);
  expect(claim, `${name}: the checkpoint volume ${mount.name} must come from a volumeClaimTemplate (it must outlive the pod)`);
  expect(!mount.readOnly, `${name}: the checkpoint volume is mounted read-only`);
  const uid = server.securityContext?.runAsUser ?? sts.spec.template.spec.securityContext?.runAsUser;
  const group = sts.spec.template.spec.securityContext?.fsGroup;
  expect(group !== undefined, `${name}: the server pod needs an fsGroup so that uid ${uid} can write its checkpoints`);
  expect((sts.spec.persistentVolumeClaimRetentionPolicy?.whenScaled ?? "Retain") === "Retain",
    `${name}: the reaper scales the servers to zero: their checkpoints must be retained`);
}

// checkReaper: the Job that scales the servers to zero once the workers' Job has
// completed: it waits for that Job, scales that StatefulSet, and its service account
// may do exactly that.
function checkReaper(name, objects, sts, job) {
  const reaper = find(objects, "Job", "gnc-reaper");
  if (!expect(reaper, `${name}: no Job gnc-reaper: the servers would run after the job for ever`)) return;
  const spec = reaper.spec.template.spec;
  const all = [...(spec.initContainers ?? []), ...spec.containers];
  for (const c of all) checkContainerBasics(`${name}: Job/gnc-reaper container ${c.name}`, reaper.spec.template, c);
  const argv = (c) => [...(c.command ?? []), ...(c.args ?? [])];
  const waits = (spec.initContainers ?? []).some((c) => {
    const a = argv(c);
    return a[0] === "kubectl" && a[1] === "wait" && a.includes(`job/${job.metadata.name}`) &&
      a.includes("--for=condition=complete");
  });
  expect(waits, `${name}: gnc-reaper must first wait for job/${job.metadata.name} to complete (init container)`);
  const scales = spec.containers.some((c) => {
    const a = argv(c);
    return a[0] === "kubectl" && a[1] === "scale" && a.includes(`statefulset/${sts.metadata.name}`) &&
      a.includes("--replicas=0");
  });
  expect(scales, `${name}: gnc-reaper must scale statefulset/${sts.metadata.name} to 0`);
  const sa = spec.serviceAccountName;
  const binding = objects.find((o) => o.kind === "RoleBinding" &&
    (o.subjects ?? []).some((s) => s.kind === "ServiceAccount" && s.name === sa));
  const role = binding && find(objects, "Role", binding.roleRef.name);
  if (!expect(role, `${name}: no Role bound to the reaper's service account ${sa}`)) return;
  const allows = (group, resource, verb) => role.rules.some((r) => r.apiGroups.includes(group) &&
    r.resources.includes(resource) && (r.verbs.includes(verb) || r.verbs.includes("*")));
  expect(allows("batch", "jobs", "watch") && allows("batch", "jobs", "get"), `${name}: reaper cannot watch Jobs`);
  expect(allows("apps", "statefulsets/scale", "patch"), `${name}: reaper cannot scale StatefulSets`);
  expect(!role.rules.some((r) => r.verbs.includes("delete") || r.verbs.includes("*")), `${name}: reaper may delete: more than it needs`);
}

async function checkConsistency() {
  const trees = await renderAll({ skip: ["monitoring"] });
  for (const t of trees) checkTree(t.name, t.objects);
  const secure = trees.find((t) => t.name === "base+components/security");
  if (expect(secure, "no tree renders components/security")) {
    checkSecurityCheck(secure.objects);
    const argv = argvOf(secure.objects, find(secure.objects, "StatefulSet", "gnc-server").spec.template.spec.containers[0]);
    expect(flagValue(argv, "tls_client_ca_file") && flagValue(argv, "auth_token_file"),
      "components/security must give the servers mutual TLS and the token");
  }
  console.log(`${trees.length} trees consistent: ${trees.map((t) => t.name).join(", ")}`);
}

// ---------------------------------------------------------------- main
const checks = {
  dockerfile: checkDockerfile,
  render: checkRender,
  "render-monitoring": checkRenderMonitoring,
  "dashboard-in-sync": checkDashboardInSync,
  schema: checkSchema,
  flags: checkFlags,
  consistency: checkConsistency,
};

const name = process.argv[2];
if (!(name in checks)) {
  console.error(`usage: node check.mjs ${Object.keys(checks).join("|")}`);
  process.exit(2);
}
try {
  await checks[name]();
} catch (e) {
  fail(e.stack ?? String(e));
}
for (const n of notes) console.log(`note: ${n}`);
if (failures.length > 0) {
  const unique = [...new Set(failures)];
  for (const f of unique) console.error(`FAIL: ${f}`);
  console.error(`${name}: ${unique.length} problem(s)`);
  process.exit(1);
}
console.log(`${name}: ok`);
