import assert from "node:assert/strict";
import { checkLayers, describe, EXCEPTIONS, importsOf, layerOf } from "../../tools/layers.ts";
import { root, tree } from "./_tree.ts";

const clean = {
  "main.ts": 'import { createApp } from "./lib/app.ts";\n',
  "lib/app.ts": 'import { keys } from "../routes/v1/keys.ts";\nexport const createApp = keys;\n',
  "routes/v1/keys.ts": 'import { formatUsd } from "../../lib/money.ts";\nexport const keys = 1;\n',
  "lib/money.ts": "export const formatUsd = 1;\n",
};

Deno.test("checkLayers: this repository's imports all point down (or are known exceptions)", async () => {
  const report = await checkLayers(root);
  assert.deepEqual(describe(report), []);
});

Deno.test("checkLayers: a tree whose imports point down passes", async () => {
  const dir = await tree(clean);
  try {
    assert.deepEqual(describe(await checkLayers(dir)), []);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("checkLayers: a planted upward import fails, named by file, line and layers", async () => {
  const dir = await tree({
    ...clean,
    "lib/money.ts": [
      '// An import in a comment is none: import { x } from "../routes/v1/keys.ts";',
      "import {",
      "  keys,",
      '} from "../routes/v1/keys.ts";',
      "export const formatUsd = keys;",
      "",
    ].join("\n"),
  });
  try {
    const lines = describe(await checkLayers(dir));
    assert.deepEqual(lines, [
      "lib/money.ts:2 imports ../routes/v1/keys.ts (layer 0 primitives → layer 3 http)",
    ]);
    // As `deno task check` runs it: a failing exit with the same line.
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "--allow-read", `${root}/tools/layers.ts`, dir],
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.equal(out.code, 1);
    assert.match(new TextDecoder().decode(out.stderr), /lib\/money\.ts:2 imports/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("checkLayers: dynamic imports count, a module no rule places fails, an exception passes until stale", async () => {
  const dir = await tree({
    ...clean,
    "lib/billing/refunds.ts": 'export const f = () => import("../app.ts");\n',
    "lib/stray.ts": "export {};\n",
  });
  try {
    assert.deepEqual(describe(await checkLayers(dir)), [
      "lib/billing/refunds.ts:1 imports ../app.ts (layer 1 domain → layer 4 composition)",
      "lib/stray.ts: no layer rule places it (tools/layers.ts RULES)",
    ]);
    const exceptions = [{ from: "lib/billing/refunds.ts", to: "lib/app.ts", owner: "test" }];
    const known = await checkLayers(dir, { exceptions });
    assert.deepEqual(known.violations, []);
    assert.deepEqual(known.stale, []);
    await Deno.writeTextFile(`${dir}/lib/billing/refunds.ts`, "export const f = 1;\n");
    const stale = await checkLayers(dir, { exceptions });
    assert.deepEqual(stale.stale, exceptions);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("importsOf: static, re-exports, bare and dynamic imports with their lines; npm ones skipped", () => {
  const src = [
    'import { z } from "zod";',
    'import type { A } from "./a.ts";',
    'export { b } from "../b.ts";',
    'import "./c.ts";',
    "const u = 'http://example.com'; // import x from \"./no.ts\"",
    '/* import y from "./no2.ts" */ const d = await import("./d.ts");',
  ].join("\n");
  assert.deepEqual(importsOf(src), [
    { specifier: "./a.ts", line: 2 },
    { specifier: "../b.ts", line: 3 },
    { specifier: "./c.ts", line: 4 },
    { specifier: "./d.ts", line: 6 },
  ]);
});

Deno.test("EXCEPTIONS: each names two modules of this repository, placed, the import pointing up", async () => {
  for (const x of EXCEPTIONS) {
    const from = layerOf(x.from), to = layerOf(x.to);
    assert.ok(from !== null && to !== null && to > from, `${x.from} → ${x.to}`);
    assert.ok((await Deno.stat(`${root}/${x.from}`)).isFile, x.from);
  }
});
