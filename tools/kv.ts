/**
 * Moving the books between KVs (README "Operating"):
 *
 *   deno task kv:export [--kv PATH|URL] [--out FILE]
 *   deno task kv:import [--kv PATH|URL] [--force] FILE
 *
 * The KV is `--kv`, else KV_PATH, else ./data/router.kv; an http(s) URL is a remote KV reached over
 * KV Connect with DENO_KV_ACCESS_TOKEN. The import ends with the books check and exits 1 if it fails.
 */
import { parseArgs } from "node:util";
import { DumpError, exportKv, importDump } from "../lib/kv/dump.ts";
import { migrateSchema, SCHEMA_VERSION } from "../lib/migrations.ts";
import { MigrationError } from "../lib/kv/migrate.ts";
import { verifyBooks } from "../lib/billing/accounts.ts";
import { formatUsd } from "../lib/money.ts";
import type { Logger } from "../lib/log.ts";

const USAGE = `usage:
  deno task kv:export [--kv PATH|URL] [--out FILE]
  deno task kv:import [--kv PATH|URL] [--force] FILE`;

/** Progress and errors go to stderr: stdout carries the export itself or the books check. */
const log: Logger = (level, msg, fields = {}) =>
  console.error(JSON.stringify({ level, msg, ...fields }));

/** A failure the operator can act on: its message alone is printed. */
class CliError extends Error {}

const remote = (location: string) => /^https?:\/\//.test(location);

async function openKv(location: string, mustExist: boolean): Promise<Deno.Kv> {
  if (!remote(location) && location !== ":memory:") {
    const exists = await Deno.stat(location).then(() => true, () => false);
    if (mustExist && !exists) throw new CliError(`no KV at ${location}`);
    const dir = location.replace(/[^/]*$/, "");
    if (!exists && dir) await Deno.mkdir(dir, { recursive: true });
  }
  try {
    return await Deno.openKv(location);
  } catch (e) {
    throw new CliError(`cannot open the KV at ${location}: ${(e as Error).message}`);
  }
}

async function exportCommand(kvAt: string, out: string | undefined) {
  const kv = await openKv(kvAt, true);
  try {
    if (out === undefined) {
      const w = Deno.stdout.writable.getWriter();
      const enc = new TextEncoder();
      const r = await exportKv(kv, (t) => w.write(enc.encode(t)));
      await w.close();
      log("info", "exported", { ...r, to: "stdout" });
      return 0;
    }
    // Written aside and renamed once whole: a failed export leaves no file that looks like one.
    const partial = `${out}.partial`;
    const file = await Deno.open(partial, { write: true, create: true, truncate: true });
    const w = file.writable.getWriter();
    const enc = new TextEncoder();
    try {
      const r = await exportKv(kv, (t) => w.write(enc.encode(t)));
      await w.close();
      await Deno.rename(partial, out);
      log("info", "exported", { ...r, to: out });
    } catch (e) {
      await w.abort().catch(() => {});
      await Deno.remove(partial).catch(() => {});
      throw e;
    }
    return 0;
  } finally {
    kv.close();
  }
}

async function importCommand(kvAt: string, path: string, force: boolean) {
  const kv = await openKv(kvAt, false);
  try {
    const r = await importDump(kv, path, { force, maxSchemaVersion: SCHEMA_VERSION });
    log("info", "imported", { entries: r.entries, schema_version: r.schema_version, from: path });
    // A file of an older schema is brought to this build's, as a router start would.
    await migrateSchema(kv, { log });
    const books = await verifyBooks(kv, { scan: true });
    console.log(JSON.stringify(books, (_k, v) => typeof v === "bigint" ? formatUsd(v) : v));
    if (!books.ok) {
      log("error", "the books check failed", { differences: books.differences.length });
    }
    return books.ok ? 0 : 1;
  } finally {
    kv.close();
  }
}

async function main(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    options: {
      kv: { type: "string" },
      out: { type: "string" },
      force: { type: "boolean", default: false },
    },
    allowPositionals: true,
  });
  const kvAt = values.kv ?? Deno.env.get("KV_PATH") ?? "./data/router.kv";
  const [command, ...rest] = positionals;
  if (command === "export" && rest.length === 0 && !values.force) {
    return await exportCommand(kvAt, values.out);
  }
  if (command === "import" && rest.length === 1 && values.out === undefined) {
    return await importCommand(kvAt, rest[0], values.force);
  }
  throw new CliError(USAGE);
}

try {
  Deno.exit(await main(Deno.args));
} catch (e) {
  // Refusals (a bad or altered file, a non-empty or newer KV, bad arguments) exit 2 with their
  // reason; anything unexpected exits 1 with its stack.
  const known = e instanceof CliError || e instanceof DumpError || e instanceof MigrationError ||
    (e instanceof TypeError && "code" in e && String(e.code).startsWith("ERR_PARSE_ARGS"));
  console.error(known ? (e as Error).message : `kv: ${(e as Error).stack ?? e}`);
  Deno.exit(known ? 2 : 1);
}
