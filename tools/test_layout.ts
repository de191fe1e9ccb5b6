/**
 * The test layout check (`deno task check`): `tests/` mirrors `lib/`, `routes/` and `tools/` file
 * for file, and suites across many modules live in `tests/scenarios/`. A test of `lib/a/b.ts` is
 * `tests/lib/a/b_test.ts` or `tests/lib/a/b_<topic>_test.ts` (the longest module name that starts
 * the file's name is the one it tests); no test file sits outside those four folders. Fails naming
 * each file as `path: what is wrong`.
 *
 * @example
 * ```sh
 * deno run --allow-read tools/test_layout.ts        # this repository
 * deno run --allow-read tools/test_layout.ts ../x   # another tree laid out the same way
 * ```
 */

/** The folders whose modules tests mirror, each under `tests/` of the same name. */
export const MIRRORED = ["lib", "routes", "tools"];
/** Where the suites that span many modules live. */
export const SCENARIOS = "tests/scenarios";

// What `deno test tests/` runs: `*_test`, `*.test` and `test` modules.
const TEST_FILE = /(^|[_.])test\.(ts|tsx|mts|js|mjs|jsx)$/;
const MODULE_FILE = /\.tsx?$/;

async function* walk(root: string, dir: string): AsyncGenerator<string> {
  for await (const e of Deno.readDir(`${root}/${dir}`)) {
    const path = `${dir}/${e.name}`;
    if (e.isDirectory) yield* walk(root, path);
    else if (e.isFile) yield path;
  }
}

/** The module names (file names without extension) of one folder under `root`; none if absent. */
async function modulesIn(root: string, dir: string): Promise<string[]> {
  const names: string[] = [];
  try {
    for await (const e of Deno.readDir(`${root}/${dir}`)) {
      if (e.isFile && MODULE_FILE.test(e.name)) names.push(e.name.replace(MODULE_FILE, ""));
    }
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  return names;
}

/**
 * The module a mirrored test names: for `tests/lib/a/b_x_test.ts`, the longest module name `m` of
 * `lib/a/` with `b_x` equal to `m` or starting `m_`; null when none.
 */
export function moduleOf(testName: string, modules: readonly string[]): string | null {
  const base = testName.replace(/_test\.tsx?$/, "");
  let best: string | null = null;
  for (const m of modules) {
    if ((base === m || base.startsWith(m + "_")) && m.length > (best?.length ?? -1)) best = m;
  }
  return best;
}

/** Every test file under `root/tests` out of its place, as lines for a terminal; empty when none. */
export async function checkTestLayout(root: string): Promise<string[]> {
  const files: string[] = [];
  for await (const f of walk(root, "tests")) if (TEST_FILE.test(f.split("/").pop()!)) files.push(f);
  const problems: string[] = [];
  const modules = new Map<string, string[]>();
  for (const file of files.sort()) {
    if (file.startsWith(`${SCENARIOS}/`)) continue;
    const parts = file.split("/");
    const name = parts.pop()!;
    if (!MIRRORED.includes(parts[1])) {
      const places = [...MIRRORED.map((m) => `tests/${m}/`), `${SCENARIOS}/`].join(", ");
      problems.push(`${file}: out of place; tests live under ${places}`);
      continue;
    }
    // The folder of the modules it may test: tests/lib/a/x_test.ts → lib/a.
    const dir = parts.slice(1).join("/");
    if (!/_test\.tsx?$/.test(name)) {
      problems.push(`${file}: a test of a module of ${dir}/ is named <module>_test.ts`);
      continue;
    }
    if (!modules.has(dir)) modules.set(dir, await modulesIn(root, dir));
    if (moduleOf(name, modules.get(dir)!) === null) {
      problems.push(
        `${file}: names no module of ${dir}/ (a test of ${dir}/b.ts is b_test.ts or b_<topic>_test.ts)`,
      );
    }
  }
  return problems;
}

if (import.meta.main) {
  const root = Deno.args[0] ?? new URL("..", import.meta.url).pathname.replace(/\/$/, "");
  const lines = await checkTestLayout(root);
  for (const l of lines) console.error(l);
  if (lines.length) Deno.exit(1);
  console.log("test layout: tests/ mirrors lib/, routes/ and tools/");
}
