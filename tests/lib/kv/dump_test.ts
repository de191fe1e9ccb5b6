import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { startRouter } from "../../_helpers.ts";
import { asPreviousSchema, entries, populateBooks } from "../../_books.ts";
import { DumpError, exportKv, importDump } from "../../../lib/kv/dump.ts";
import { encodeKey, encodeValue } from "../../../lib/kv/codec.ts";
import {
  EPHEMERAL_PREFIXES,
  ledgerPrefix,
  MIGRATION_LOCK_KEY,
  SCHEMA_VERSION_KEY,
} from "../../../lib/kv/schema.ts";
import { ledgerTotals, sumLedger } from "../../../lib/billing/totals.ts";
import { listAccounts, verifyBooks } from "../../../lib/billing/accounts.ts";
import { schemaVersion } from "../../../lib/kv/migrate.ts";
import { SCHEMA_VERSION } from "../../../lib/migrations.ts";

const ROOT = new URL("../../../", import.meta.url).pathname;

/** `deno task kv:<command> …args`, as an operator runs it. */
async function task(
  command: "export" | "import",
  args: string[],
  env: Record<string, string> = {},
) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["task", `kv:${command}`, ...args],
    cwd: ROOT,
    clearEnv: true,
    env: {
      PATH: Deno.env.get("PATH") ?? "",
      HOME: Deno.env.get("HOME") ?? "",
      NO_COLOR: "1",
      ...(Deno.env.get("DENO_DIR") ? { DENO_DIR: Deno.env.get("DENO_DIR")! } : {}),
      ...env,
    },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/** Every entry of a KV as comparable text (type-tagged), keyed by its key's text. */
async function contents(kv: Deno.Kv): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for await (const e of kv.list({ prefix: [] })) {
    out.set(JSON.stringify(encodeKey(e.key)), JSON.stringify(encodeValue(e.value)));
  }
  return out;
}

const isEphemeral = (keyText: string) =>
  EPHEMERAL_PREFIXES.some((p) => keyText.startsWith(JSON.stringify(encodeKey(p)).slice(0, -1)));

async function withKv<T>(path: string, f: (kv: Deno.Kv) => Promise<T>): Promise<T> {
  const kv = await Deno.openKv(path);
  try {
    return await f(kv);
  } finally {
    kv.close();
  }
}

/** The dump's lines with `edit` applied, its trailer recomputed when `reseal`. */
async function rewrite(
  from: string,
  to: string,
  edit: (lines: string[]) => string[],
  reseal = false,
) {
  let lines = (await Deno.readTextFile(from)).trimEnd().split("\n");
  lines = edit(lines);
  if (reseal) {
    const body = lines.slice(0, -1);
    const hash = createHash("sha256");
    for (const l of body) hash.update(l + "\n");
    lines = [
      ...body,
      JSON.stringify({ end: true, entries: body.length - 1, sha256: hash.digest("hex") }),
    ];
  }
  await Deno.writeTextFile(to, lines.join("\n") + "\n");
}

/** Books written through the router into `dir`/source.kv (with `more` after), exported. */
async function exportedBooks(dir: string, more?: (kv: Deno.Kv) => Promise<void>) {
  const source = `${dir}/source.kv`;
  const t = await startRouter({ kvPath: source });
  try {
    await populateBooks(t);
    await more?.(t.kv);
  } finally {
    await t.close();
  }
  const dump = `${dir}/books.jsonl`;
  const exported = await task("export", ["--kv", source, "--out", dump]);
  assert.equal(exported.code, 0, exported.stderr);
  return { source, dump };
}

Deno.test("kv:export then kv:import into a fresh KV: every durable entry identical, books verified", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const { source, dump } = await exportedBooks(dir);
    const lines = (await Deno.readTextFile(dump)).trimEnd().split("\n");
    assert.deepEqual(JSON.parse(lines[0]).schema_version, SCHEMA_VERSION);
    assert.ok(JSON.parse(lines.at(-1)!).end);

    const target = `${dir}/target.kv`;
    const imported = await task("import", ["--kv", target, dump]);
    assert.equal(imported.code, 0, imported.stderr);
    const books = JSON.parse(imported.stdout);
    assert.equal(books.ok, true);
    assert.equal(books.accounts_checked, 3);

    const before = await withKv(source, contents);
    const after = await withKv(target, contents);
    const durable = new Map([...before].filter(([k]) => !isEphemeral(k)));
    assert.ok(durable.size < before.size, "the source had ephemeral entries (a session)");
    assert.equal(after.size, durable.size);
    assert.equal(lines.length, durable.size + 2, "a header, one line per entry, a trailer");
    assert.deepEqual(after, durable, "every durable entry, key, value and type, identical");
    for (const kind of ["ledger", "audit", "balance", "rollup", "rollup_digest", "future_kind"]) {
      assert.ok([...after.keys()].some((k) => k.startsWith(`["${kind}"`)), `${kind} rows moved`);
    }

    // The ledger and audit rows, and balances, read back through the KV API as they were.
    await withKv(source, async (src) => {
      await withKv(target, async (dst) => {
        for (const prefix of [["ledger"], ["audit"], ["balance"], ["ledger_total"]]) {
          assert.deepStrictEqual(await entries(dst, prefix), await entries(src, prefix));
        }
        const totals = (await dst.get<Deno.KvU64>([
          "ledger_total",
          (await listAccounts(dst))[0].account.id,
          "credit",
        ])).value;
        assert.ok(totals instanceof Deno.KvU64, "counters stay KvU64 (sum still works on them)");
        assert.equal(await schemaVersion(dst), SCHEMA_VERSION);
        assert.equal((await verifyBooks(dst, { scan: true })).ok, true);
        const id = (await listAccounts(dst))[0].account.id;
        assert.ok((await entries(dst, ledgerPrefix(id))).length > 0);
      });
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("kv:import refuses a KV that is not empty unless --force, and writes nothing", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const source = `${dir}/source.kv`;
    await withKv(source, async (kv) => {
      await kv.set(["account", "acct_1"], { id: "acct_1" });
      await kv.set(["balance", "acct_1"], { balance: 5n, reserved: 0n });
    });
    const dump = `${dir}/d.jsonl`;
    assert.equal((await task("export", ["--kv", source, "--out", dump])).code, 0);
    const target = `${dir}/target.kv`;
    await withKv(target, (kv) => kv.set(["something"], "already here"));
    const before = await withKv(target, contents);
    const refused = await task("import", ["--kv", target, dump]);
    assert.equal(refused.code, 2);
    assert.match(refused.stderr, /the target KV is not empty \(--force writes over it\)/);
    assert.deepEqual(await withKv(target, contents), before);

    const forced = await task("import", ["--kv", target, "--force", dump]);
    // The books of this account do not add up (no ledger row for its balance): the check says so.
    assert.equal(forced.code, 1);
    assert.equal(JSON.parse(forced.stdout).ok, false);
    const after = await withKv(target, contents);
    assert.equal(after.get('["something"]'), '"already here"', "--force keeps other entries");
    assert.ok(after.has('["balance","acct_1"]'));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("kv:import refuses an altered, cut or newer file before writing anything", async () => {
  const dir = await Deno.makeTempDir();
  try {
    // More than one atomic's worth before the ledger lines: a check made while writing would come
    // too late.
    const { dump } = await exportedBooks(dir, async (kv) => {
      for (let i = 0; i < 20; i++) await kv.set(["bulk", i], "x".repeat(60_000));
    });
    const ledgerLine = (lines: string[]) => lines.findIndex((l) => l.startsWith('{"k":["ledger"'));
    const cases: [string, (lines: string[]) => string[], boolean, RegExp][] = [
      [
        "a ledger amount changed",
        (ls) => {
          const i = ledgerLine(ls);
          ls[i] = ls[i].replace(
            /"amount":\{"\$t":"bigint","v":"(-?)(\d)/,
            '"amount":{"$t":"bigint","v":"$19$2',
          );
          return ls;
        },
        false,
        /altered or damaged/,
      ],
      [
        "a ledger row removed",
        (ls) => ls.filter((_, i) => i !== ledgerLine(ls)),
        false,
        /altered or damaged/,
      ],
      ["the trailer cut off", (ls) => ls.slice(0, -1), false, /cut short/],
      [
        "a newer schema",
        (ls) => {
          ls[0] = ls[0].replace(/"schema_version":\d+/, '"schema_version":99');
          return ls;
        },
        true,
        /schema version 99 is newer/,
      ],
      [
        // Written last, after atomics of the entries before it: found before any is written.
        "a value over KV's 64 KiB",
        (ls) => [...ls.slice(0, -1), '{"k":["zzz"],"v":"' + "x".repeat(70_000) + '"}', ls.at(-1)!],
        true,
        /line \d+: a value KV cannot store/,
      ],
      [
        "a line that is no entry",
        (ls) => [...ls.slice(0, 2), '{"k":"x","v":1}', ...ls.slice(2)],
        true,
        /line 3/,
      ],
    ];
    for (const [what, edit, reseal, message] of cases) {
      const bad = `${dir}/bad.jsonl`;
      await rewrite(dump, bad, edit, reseal);
      assert.notEqual(await Deno.readTextFile(bad), await Deno.readTextFile(dump), what);
      const target = `${dir}/target-${cases.findIndex((c) => c[0] === what)}.kv`;
      const r = await task("import", ["--kv", target, bad]);
      assert.equal(r.code, 2, `${what}: ${r.stderr}`);
      assert.match(r.stderr, message, what);
      assert.equal((await withKv(target, contents)).size, 0, `${what}: nothing written`);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("exportKv and importDump carry every value type through a real KV, in atomics within its limits", async () => {
  const dir = await Deno.makeTempDir();
  const src = await Deno.openKv(":memory:");
  const dst = await Deno.openKv(":memory:");
  try {
    const values: [Deno.KvKey, unknown][] = [
      [["t", "u64"], new Deno.KvU64(7n)],
      [["t", "bytes"], new Uint8Array([1, 2, 3])],
      [["t", "big", 5n], { amount: -5n, when: new Date(1), tags: new Set(["a"]) }],
      [["t", new Uint8Array([0])], new Map([[1, "one"]])],
      [["t", true, 1.5], undefined],
      [["session", "s1"], { user: "u" }],
    ];
    // Enough large values that the import needs several atomics (800 KiB each at most).
    for (let i = 0; i < 40; i++) values.push([["bulk", i], "x".repeat(60_000)]);
    for (const [k, v] of values) await src.set(k, v);
    const path = `${dir}/d.jsonl`;
    let text = "";
    const r = await exportKv(src, (t) => Promise.resolve(void (text += t)));
    assert.equal(r.entries, values.length - 1, "the session is left out");
    await Deno.writeTextFile(path, text);
    let commits = 0;
    const counting = new Proxy(dst, {
      get(target, prop) {
        if (prop === "atomic") {
          return () => {
            const atomic = target.atomic();
            const commit = atomic.commit.bind(atomic);
            atomic.commit = () => (commits++, commit());
            return atomic;
          };
        }
        const v = Reflect.get(target, prop);
        return typeof v === "function" ? v.bind(target) : v;
      },
    });
    const imported = await importDump(counting, path, { maxSchemaVersion: SCHEMA_VERSION });
    assert.equal(imported.entries, values.length - 1);
    // 2.4 MB of text: more than one atomic's 800 KiB, far fewer atomics than entries.
    assert.ok(commits > 1 && commits < 10, `${commits} atomics`);
    for (const [k, v] of values) {
      const got = (await dst.get(k)).value;
      if (k[0] === "session") assert.equal(got, null);
      else assert.deepStrictEqual(got, v, JSON.stringify(encodeKey(k)));
    }
    await assert.rejects(
      importDump(dst, path, { maxSchemaVersion: SCHEMA_VERSION }),
      (e: Error) => e instanceof DumpError && /not empty/.test(e.message),
    );
  } finally {
    src.close();
    dst.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("kv:export reads a remote KV over KV Connect with DENO_KV_ACCESS_TOKEN", async () => {
  // A KV Connect endpoint that refuses the token it is shown: the export's first step.
  const seen: { path: string; auth: string | null }[] = [];
  const server = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen() {} }, async (req) => {
    seen.push({ path: new URL(req.url).pathname, auth: req.headers.get("authorization") });
    await req.body?.cancel();
    return new Response("token refused", { status: 401 });
  });
  try {
    const url = `http://127.0.0.1:${server.addr.port}/databases/db1/connect`;
    const r = await task("export", ["--kv", url], { DENO_KV_ACCESS_TOKEN: "kv-token-123" });
    assert.equal(r.code, 2);
    assert.match(
      r.stderr,
      /cannot open the KV at http:\/\/127\.0\.0\.1:\d+\/databases\/db1\/connect: .*401/,
    );
    assert.deepEqual(seen, [{ path: "/databases/db1/connect", auth: "Bearer kv-token-123" }]);
    const missing = await task("export", ["--kv", "/nonexistent/dir/router.kv"]);
    assert.equal(missing.code, 2);
    assert.match(missing.stderr, /no KV at \/nonexistent\/dir\/router\.kv/);
  } finally {
    await server.shutdown();
  }
});

Deno.test("kv:import --force leaves the KV at the older of its schema and the file's, and refuses a newer KV", async () => {
  const dir = await Deno.makeTempDir();
  try {
    // Books of the previous schema (no ledger totals, no version), exported.
    const { source } = await exportedBooks(dir);
    await withKv(source, asPreviousSchema);
    const oldDump = `${dir}/old.jsonl`;
    assert.equal((await task("export", ["--kv", source, "--out", oldDump])).code, 0);
    assert.equal(JSON.parse((await Deno.readTextFile(oldDump)).split("\n")[0]).schema_version, 0);

    // Over a KV a router of this build already migrated: the file's accounts still get their totals.
    const migrated = `${dir}/migrated.kv`;
    await withKv(migrated, (kv) => kv.set(SCHEMA_VERSION_KEY, SCHEMA_VERSION));
    const forced = await task("import", ["--kv", migrated, "--force", oldDump]);
    assert.equal(forced.code, 0, forced.stderr);
    await withKv(migrated, async (kv) => {
      const ids = (await listAccounts(kv)).map((a) => a.account.id);
      assert.equal(ids.length, 3);
      assert.deepEqual(
        await ledgerTotals(kv, ids),
        await Promise.all(ids.map((id) => sumLedger(kv, id))),
        "migration 1 ran over the imported accounts",
      );
      assert.equal(await schemaVersion(kv), SCHEMA_VERSION);
    });

    // A file of this build's schema over books of the previous one: those get their totals too.
    const current = `${dir}/current.kv`;
    await withKv(current, async (kv) => {
      await kv.set(SCHEMA_VERSION_KEY, SCHEMA_VERSION);
      await kv.set(["future_kind", 1], "x");
    });
    const newDump = `${dir}/new.jsonl`;
    assert.equal((await task("export", ["--kv", current, "--out", newDump])).code, 0);
    const forced2 = await task("import", ["--kv", source, "--force", newDump]);
    assert.equal(forced2.code, 0, forced2.stderr);
    await withKv(source, async (kv) => {
      const ids = (await listAccounts(kv)).map((a) => a.account.id);
      assert.deepEqual(
        await ledgerTotals(kv, ids),
        await Promise.all(ids.map((id) => sumLedger(kv, id))),
        "the KV's own accounts were not left behind by the file's version",
      );
    });

    // A hand-made file carrying a live migration lock: left out (it would hold the migrations).
    const locked = `${dir}/locked.jsonl`;
    const lock = { owner: "mig_x", expires_ms: Date.now() + 86_400_000 };
    await rewrite(oldDump, locked, (ls) => [
      ...ls.slice(0, -1),
      JSON.stringify({ k: encodeKey(MIGRATION_LOCK_KEY), v: encodeValue(lock) }),
      ls.at(-1)!,
    ], true);
    await withKv(":memory:", async (kv) => {
      await importDump(kv, locked, { maxSchemaVersion: SCHEMA_VERSION });
      assert.equal((await kv.get(MIGRATION_LOCK_KEY)).value, null);
    });

    // A KV of a newer schema than the build: refused before anything is written.
    const newer = `${dir}/newer.kv`;
    await withKv(newer, (kv) => kv.set(SCHEMA_VERSION_KEY, SCHEMA_VERSION + 1));
    const before = await withKv(newer, contents);
    const refused = await task("import", ["--kv", newer, "--force", oldDump]);
    assert.equal(refused.code, 2, refused.stderr);
    assert.match(refused.stderr, /newer than this build/);
    assert.deepEqual(await withKv(newer, contents), before, "nothing written");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
