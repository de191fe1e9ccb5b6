/**
 * The import-layer check (`deno task check`): every module under lib/, routes/, islands/ and
 * main.ts belongs to one layer, and imports only its own layer and those below. Fails naming each
 * upward import as `file:line imports path (layer a → layer b)`.
 *
 * @example
 * ```sh
 * deno run --allow-read tools/layers.ts        # this repository
 * deno run --allow-read tools/layers.ts ../x   # another tree laid out the same way
 * ```
 */

/** The layers, lowest first: a module may import its own layer and those below it. */
export const LAYERS = ["primitives", "domain", "application", "http", "composition"] as const;
export type Layer = 0 | 1 | 2 | 3 | 4;

/**
 * Path rules, most specific first: a rule ending in "/" takes a folder, any other one file. The
 * first rule that matches a module gives its layer; a module no rule takes is an error.
 */
export const RULES: readonly [path: string, layer: Layer][] = [
  // 4 composition: the roots that put everything together, and the generated registries.
  ["main.ts", 4],
  ["lib/app.ts", 4],
  ["lib/gen/", 4],
  // The browser's composition root: the island registry and the hydration boot.
  ["lib/render/client.ts", 4],
  // 0 primitives: no knowledge of accounts, keys or requests.
  ["lib/money.ts", 0],
  ["lib/ids.ts", 0],
  ["lib/json.ts", 0],
  ["lib/log.ts", 0],
  ["lib/errors.ts", 0],
  ["lib/crypto.ts", 0],
  ["lib/net.ts", 0],
  // The SSE codec: splitting, events, translation between formats, the error events.
  ["lib/sse.ts", 0],
  // The metric instruments and span helpers: infrastructure every layer may record into.
  ["lib/metrics.ts", 0],
  ["lib/telemetry/trace.ts", 0],
  // The key schema, KV's limits and helpers, migrations' runner, export and import of the books.
  ["lib/kv/", 0],
  // 1 domain: accounts, keys, users, billing, usage, audit, webhooks, providers, configuration.
  ["lib/auth/", 1],
  ["lib/billing/", 1],
  ["lib/usage/", 1],
  ["lib/audit/", 1],
  ["lib/webhooks/", 1],
  ["lib/providers/", 1],
  ["lib/config.ts", 1],
  ["lib/pricing.ts", 1],
  ["lib/tokenizer.ts", 1],
  // What the gauges read of the books (outbox backlogs, holds and leases outstanding).
  ["lib/telemetry/backlog.ts", 1],
  ["lib/migrations.ts", 1],
  // 2 application: the inference pipeline, onboarding, and the services handed to the HTTP layer.
  ["lib/proxy/", 2],
  ["lib/formats/", 2],
  ["lib/onboarding.ts", 2],
  ["lib/services.ts", 2],
  // The spans of an inference request's stages, and what its committed events count.
  ["lib/telemetry/inference.ts", 2],
  // 3 HTTP: routes, presenters, middleware, pages, rendering, islands.
  ["lib/http/", 3],
  ["lib/render/", 3],
  // An inference request's span; `GET /metrics`.
  ["lib/telemetry/middleware.ts", 3],
  ["lib/telemetry/route.ts", 3],
  ["routes/", 3],
  ["islands/", 3],
];

/**
 * Upward imports known today, each left to the work that removes it. The check fails when one of
 * these no longer occurs, so that whoever removes the import removes its line here too.
 */
export const EXCEPTIONS: readonly { from: string; to: string; owner: string }[] = [];

/** The folders and files the check reads, relative to the root. */
export const SOURCES = ["lib", "routes", "islands", "main.ts"];

export interface Finding {
  file: string;
  line: number;
  /** The import as written. */
  specifier: string;
  /** The module it names, relative to the root. */
  target: string;
  from: Layer;
  to: Layer;
}

export interface Report {
  /** Upward imports not listed in EXCEPTIONS. */
  violations: Finding[];
  /** Modules no rule places. */
  unplaced: string[];
  /** EXCEPTIONS entries of modules in the tree that no longer make their import. */
  stale: { from: string; to: string; owner: string }[];
}

/** The layer of a module (a path relative to the root, with "/"), or null when no rule takes it. */
export function layerOf(path: string, rules = RULES): Layer | null {
  for (const [p, layer] of rules) {
    if (p.endsWith("/") ? path.startsWith(p) : path === p) return layer;
  }
  return null;
}

// Static imports and re-exports (their `from` may follow names over several lines), bare imports
// and dynamic imports of a literal path; only relative specifiers name the tree's own modules.
const IMPORT_RE =
  /^[ \t]*(?:import|export)\b[^;]*?\bfrom\s*["'](\.[^"']*)["']|^[ \t]*import\s*["'](\.[^"']*)["']|\bimport\(\s*["'](\.[^"']*)["']\s*\)/gm;

/** The relative imports of a module's source, each with the line it starts on (1-based). */
export function importsOf(source: string): { specifier: string; line: number }[] {
  // Comments are blanked (lines kept), so that an example in a comment is no import.
  const code = source.replace(
    /\/\*[\s\S]*?\*\/|(^|[^:"'`\\])\/\/[^\n]*/g,
    (m, lead: string | undefined) =>
      (lead ?? "") + m.slice(lead?.length ?? 0).replace(/[^\n]/g, " "),
  );
  const out: { specifier: string; line: number }[] = [];
  for (const m of code.matchAll(IMPORT_RE)) {
    const specifier = m[1] ?? m[2] ?? m[3];
    const at = m.index + m[0].search(/\S/);
    out.push({ specifier, line: code.slice(0, at).split("\n").length });
  }
  return out;
}

/** `specifier` imported from `file` (both relative to the root), as a normalised root path. */
export function resolve(file: string, specifier: string): string {
  const parts = file.split("/").slice(0, -1);
  for (const seg of specifier.split("/")) {
    if (seg === "..") parts.pop();
    else if (seg !== "." && seg !== "") parts.push(seg);
  }
  return parts.join("/");
}

async function* walk(root: string, dir: string): AsyncGenerator<string> {
  for await (const e of Deno.readDir(`${root}/${dir}`)) {
    const path = `${dir}/${e.name}`;
    if (e.isDirectory) yield* walk(root, path);
    else if (/\.tsx?$/.test(e.name)) yield path;
  }
}

/** The modules the check reads under `root`, sorted. */
export async function sourcesOf(root: string): Promise<string[]> {
  const files: string[] = [];
  for (const s of SOURCES) {
    const info = await Deno.stat(`${root}/${s}`).catch(() => null);
    if (info?.isFile) files.push(s);
    else if (info?.isDirectory) { for await (const f of walk(root, s)) files.push(f); }
  }
  return files.sort();
}

/** Checks every module under `root` against the rules and the known exceptions. */
export async function checkLayers(
  root: string,
  opts: { rules?: typeof RULES; exceptions?: typeof EXCEPTIONS } = {},
): Promise<Report> {
  const rules = opts.rules ?? RULES;
  const exceptions = opts.exceptions ?? EXCEPTIONS;
  const used = new Set<number>();
  const report: Report = { violations: [], unplaced: [], stale: [] };
  const files = await sourcesOf(root);
  for (const file of files) {
    const from = layerOf(file, rules);
    if (from === null) {
      report.unplaced.push(file);
      continue;
    }
    for (const { specifier, line } of importsOf(await Deno.readTextFile(`${root}/${file}`))) {
      const target = resolve(file, specifier);
      const to = layerOf(target, rules);
      if (to === null || to <= from) continue;
      const known = exceptions.findIndex((x) => x.from === file && x.to === target);
      if (known >= 0) used.add(known);
      else report.violations.push({ file, line, specifier, target, from, to });
    }
  }
  // Only of modules in this tree (a module moved away takes its exceptions' truth with it: the
  // test of this repository checks each names a module that exists).
  report.stale = exceptions.filter((x, i) => !used.has(i) && files.includes(x.from));
  return report;
}

/** The report as lines for a terminal; empty when the check passes. */
export function describe(report: Report): string[] {
  const name = (l: Layer) => `${l} ${LAYERS[l]}`;
  return [
    ...report.violations.map((v) =>
      `${v.file}:${v.line} imports ${v.specifier} (layer ${name(v.from)} → layer ${name(v.to)})`
    ),
    ...report.unplaced.map((f) => `${f}: no layer rule places it (tools/layers.ts RULES)`),
    ...report.stale.map((x) =>
      `${x.from} → ${x.to}: listed as a known exception (${x.owner}) but no longer imported; remove it from EXCEPTIONS`
    ),
  ];
}

if (import.meta.main) {
  const root = Deno.args[0] ?? new URL("..", import.meta.url).pathname.replace(/\/$/, "");
  const lines = describe(await checkLayers(root));
  for (const l of lines) console.error(l);
  if (lines.length) Deno.exit(1);
  console.log("layers: every import points down");
}
