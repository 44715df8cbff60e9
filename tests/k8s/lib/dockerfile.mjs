// Dockerfile parsing for the image checks: instructions with line continuations,
// comments and parser directives, FROM ... AS stages with global ARG defaults, and
// COPY/ADD flags and sources. Enough of the Dockerfile grammar for our Dockerfiles;
// anything it does not understand is an error, not a silent pass.

// Dockerfile instructions (BuildKit's frontend, dockerfile:1) and the flags each takes;
// anything else is refused, since a builder only reports it when it reaches that stage.
const kInstructionFlags = {
  FROM: ["platform"], RUN: ["mount", "network", "security"],
  COPY: ["from", "chmod", "chown", "link", "parents", "exclude"],
  ADD: ["chmod", "chown", "checksum", "link", "keep-git-dir"],
  ARG: [], ENV: [], LABEL: [], USER: [], WORKDIR: [], EXPOSE: [], ENTRYPOINT: [], CMD: [],
  VOLUME: [], SHELL: [], STOPSIGNAL: [], HEALTHCHECK: ["interval", "timeout", "start-period", "start-interval", "retries"],
  ONBUILD: [], MAINTAINER: [],
};

// parseDockerfile: text -> { args, stages: [{name, base, instructions}] }.
// Every instruction is {keyword, flags, rest, args, json, line}.
export function parseDockerfile(text) {
  const logical = [];
  let current = null;
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const raw = lines[i];
    const trimmed = raw.trim();
    if (current === null && (trimmed === "" || trimmed.startsWith("#"))) continue;
    if (current !== null && trimmed.startsWith("#")) continue;  // comment inside a continuation
    const continued = /\\\s*$/.test(raw);
    const body = continued ? raw.replace(/\\\s*$/, "") : raw;
    if (current === null) current = { text: body, line: i + 1 };
    else current.text += " " + body.trim();
    if (!continued) {
      logical.push(current);
      current = null;
    }
  }
  if (current !== null) throw new Error(`line ${current.line}: continuation at end of file`);

  const globalArgs = {};
  const stages = [];
  for (const { text: t, line } of logical) {
    const m = /^\s*([A-Za-z]+)\s*(.*)$/.exec(t);
    if (!m) throw new Error(`line ${line}: cannot parse '${t}'`);
    const keyword = m[1].toUpperCase();
    const restAll = m[2].trim();
    const inst = { keyword, line, ...splitFlags(restAll) };
    if (!(keyword in kInstructionFlags)) throw new Error(`line ${line}: unknown instruction ${m[1]}`);
    for (const flag of Object.keys(inst.flags)) {
      if (!kInstructionFlags[keyword].includes(flag)) throw new Error(`line ${line}: ${keyword} has no flag --${flag}`);
    }
    if (inst.rest.startsWith("[")) {
      try {
        inst.json = JSON.parse(inst.rest);
      } catch (e) {
        throw new Error(`line ${line}: bad JSON form: ${e.message}`);
      }
    }
    inst.args = inst.json ?? splitWords(inst.rest);
    if (keyword === "FROM") {
      const words = splitWords(restAll.replace(/^--platform=\S+\s+/, ""));
      const base = substitute(words[0], globalArgs);
      const name = words.length >= 3 && words[1].toUpperCase() === "AS" ? words[2] : null;
      stages.push({ name, base, instructions: [], line });
    } else if (stages.length === 0) {
      if (keyword !== "ARG") throw new Error(`line ${line}: ${keyword} before the first FROM`);
      const [k, v] = splitArg(inst.rest);
      globalArgs[k] = v;
    } else {
      stages[stages.length - 1].instructions.push(inst);
    }
  }
  return { args: globalArgs, stages };
}

function splitFlags(rest) {
  const flags = {};
  let r = rest;
  for (;;) {
    const m = /^--([a-z-]+)(?:=(\S*))?\s+/.exec(r);
    if (!m) break;
    flags[m[1]] = m[2] ?? true;
    r = r.slice(m[0].length);
  }
  return { flags, rest: r.trim() };
}

function splitWords(s) {
  return s.split(/\s+/).filter((w) => w !== "");
}

function splitArg(rest) {
  const eq = rest.indexOf("=");
  if (eq < 0) return [rest.trim(), undefined];
  return [rest.slice(0, eq).trim(), rest.slice(eq + 1).trim()];
}

// substitute: ${VAR} and $VAR from vars; an unknown variable is an error.
export function substitute(s, vars) {
  return s.replace(/\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)/g, (_, a, b) => {
    const k = a ?? b;
    if (vars[k] === undefined) throw new Error(`unknown build argument ${k} in '${s}'`);
    return vars[k];
  });
}

// stageArgs: the ARG defaults a stage sees (global ARGs are visible once redeclared).
export function stageArgs(doc, stage) {
  const vars = {};
  for (const inst of stage.instructions) {
    if (inst.keyword !== "ARG") continue;
    const [k, v] = splitArg(inst.rest);
    vars[k] = v ?? doc.args[k];
  }
  return vars;
}

// copies: the COPY/ADD instructions of a stage as {from, sources, dest, inst}.
export function copies(stage) {
  const out = [];
  for (const inst of stage.instructions) {
    if (inst.keyword !== "COPY" && inst.keyword !== "ADD") continue;
    const words = inst.args;
    if (words.length < 2) throw new Error(`line ${inst.line}: ${inst.keyword} needs a source and a destination`);
    out.push({
      keyword: inst.keyword,
      from: typeof inst.flags.from === "string" ? inst.flags.from : null,
      sources: words.slice(0, -1),
      dest: words[words.length - 1],
      inst,
    });
  }
  return out;
}

// aptPackages: the packages a stage installs with apt-get install (its RUN lines).
export function aptPackages(stage, vars = {}) {
  const pkgs = new Set();
  for (const inst of stage.instructions) {
    if (inst.keyword !== "RUN") continue;
    for (const cmd of inst.rest.split(/&&|;|\|\|/)) {
      const m = /apt-get\s+install\s+(.*)$/.exec(cmd.trim());
      if (!m) continue;
      for (const w of splitWords(m[1])) {
        if (w.startsWith("-")) continue;
        pkgs.add(substitute(w, vars));
      }
    }
  }
  return pkgs;
}
