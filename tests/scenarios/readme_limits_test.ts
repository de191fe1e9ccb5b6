/**
 * README's tables state the defaults the router really uses: each variable's default as
 * `loadConfig({})` reads it, each fixed limit as the constant the code checks, and every numeric
 * variable with a default in lib/config.ts has its row.
 */
import assert from "node:assert/strict";
import { loadConfig } from "../../lib/config.ts";
import { MAX_URL_BYTES } from "../../lib/http/limits.ts";
import { MAX_JSON_DEPTH } from "../../lib/json.ts";
import { MAX_EMAIL_CHARS } from "../../lib/auth/users.ts";

const readme = await Deno.readTextFile(new URL("../../README.md", import.meta.url));
const configSource = await Deno.readTextFile(new URL("../../lib/config.ts", import.meta.url));

/** Each row of each Markdown table, as cells named by its table's header. */
function tableRows(md: string): Record<string, string>[] {
  const rows: Record<string, string>[] = [];
  const cells = (line: string) => line.trim().slice(1, -1).split("|").map((c) => c.trim());
  const lines = md.split("\n");
  for (let i = 0; i + 1 < lines.length; i++) {
    if (!lines[i].startsWith("|") || !/^\|[\s|:-]+\|$/.test(lines[i + 1].trim())) continue;
    const header = cells(lines[i]);
    for (i += 2; i < lines.length && lines[i].startsWith("|"); i++) {
      const row = cells(lines[i]);
      rows.push(Object.fromEntries(header.map((h, k) => [h, row[k] ?? ""])));
    }
  }
  return rows;
}

/** The `code` spans of a cell, in order. */
const spans = (cell: string) => [...cell.matchAll(/`([^`]+)`/g)].map((m) => m[1]);
const camel = (name: string) =>
  name.toLowerCase().replace(/_([a-z])/g, (_, c: string) => c.toUpperCase());

Deno.test("README's limit and configuration tables state the numeric defaults loadConfig uses", () => {
  const loaded = loadConfig({});
  // Each variable's value: its camel-cased field, or where a group of settings keeps it.
  const config: Record<string, unknown> = {
    ...loaded,
    leaseTtlMs: loaded.leases?.ttlMs,
    leaseIdleMs: loaded.leases?.idleMs,
  };
  const rows = tableRows(readme).filter((r) => "variable" in r && "default" in r);
  const checked = new Set<string>();
  for (const row of rows) {
    const names = spans(row.variable).filter((s) => /^[A-Z][A-Z0-9_]+$/.test(s));
    const defaults = spans(row.default);
    // A row naming several variables gives a default for each, in order, or is not checked.
    if (names.length === 0 || names.length !== defaults.length) continue;
    names.forEach((name, i) => {
      // Numbers stated as numbers only: others are resolved further (OUTBOX_DELIVERY's `auto`),
      // left unset, or stated as a rule (HOLD_TTL_MS's).
      if (typeof config[camel(name)] !== "number" || !/^\d+$/.test(defaults[i])) return;
      assert.equal(String(config[camel(name)]), defaults[i], `README's default of ${name}`);
      checked.add(name);
    });
  }
  // Every numeric variable with a default has a row whose default was checked.
  const numeric = [...configSource.matchAll(/^\s+([A-Z][A-Z0-9_]*): int\([^)]*\)\.default\(/gm)]
    .map((m) => m[1]);
  assert.ok(numeric.length >= 10, `${numeric.length} numeric variables found in lib/config.ts`);
  assert.deepEqual(numeric.filter((n) => !checked.has(n)), [], "variables without a README row");
});

Deno.test("README's fixed limits are the constants the router checks", () => {
  const fixed = tableRows(readme).filter((r) => r.variable === "fixed");
  const constants: [RegExp, number][] = [
    [/\bURL\b/, MAX_URL_BYTES],
    [/\bJSON\b/, MAX_JSON_DEPTH],
    [/\bemail\b/, MAX_EMAIL_CHARS],
  ];
  for (const [word, value] of constants) {
    const stated = fixed.filter((r) => word.test(r.limit)).map((r) => spans(r.default)[0]);
    assert.ok(stated.length > 0, `a fixed limit row for ${word}`);
    for (const s of stated) assert.equal(s, String(value), `README's ${word} limit`);
  }
});
