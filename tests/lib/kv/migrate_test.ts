import assert from "node:assert/strict";
import { ADMIN_TOKEN, json, startRouter } from "../../_helpers.ts";
import { asPreviousSchema, chat, populateBooks } from "../../_books.ts";
import { spawnRouter } from "../../_main.ts";
import { startFakeOpenAI } from "../../_fakes/openai.ts";
import { migrate, type Migration, MigrationError, schemaVersion } from "../../../lib/kv/migrate.ts";
import { migrateSchema, SCHEMA_VERSION } from "../../../lib/migrations.ts";
import { MIGRATION_LOCK_KEY, SCHEMA_VERSION_KEY } from "../../../lib/kv/schema.ts";
import { ledgerTotals, sumLedger } from "../../../lib/billing/totals.ts";
import { listAccounts, verifyBooks } from "../../../lib/billing/accounts.ts";
import { createAccount } from "../../../lib/onboarding.ts";
import { type Logger, silentLogger } from "../../../lib/log.ts";
import { sleep } from "../../../lib/kv/util.ts";

/** Migrations that count their runs in the KV itself (so runners on other handles count too). */
function counting(n: number, during?: (kv: Deno.Kv, version: number) => Promise<void>) {
  return Array.from({ length: n }, (_, i): Migration => ({
    version: i + 1,
    name: `step ${i + 1}`,
    async run(kv) {
      await kv.atomic().sum(["runs", i + 1], 1n).commit();
      await (during?.(kv, i + 1) ?? sleep(20));
    },
  }));
}

const runs = async (kv: Deno.Kv, n: number) =>
  await Promise.all(
    Array.from({ length: n }, async (_, i) =>
      (await kv.get<Deno.KvU64>(["runs", i + 1])).value?.value),
  );

function recorder() {
  const lines: { msg: string; fields?: Record<string, unknown> }[] = [];
  const log: Logger = (_level, msg, fields) => lines.push({ msg, fields });
  return { lines, log };
}

Deno.test("runners starting together on one KV file apply each migration once, in order", async () => {
  const dir = await Deno.makeTempDir();
  const kvs = await Promise.all(Array.from({ length: 5 }, () => Deno.openKv(`${dir}/m.kv`)));
  try {
    const migrations = counting(3);
    const applied = await Promise.all(
      kvs.map((kv) => migrate(kv, migrations, { log: silentLogger, pollMs: 10 })),
    );
    assert.deepEqual(applied.flat().sort(), [1, 2, 3]);
    assert.deepEqual(await runs(kvs[0], 3), [1n, 1n, 1n]);
    assert.equal(await schemaVersion(kvs[0]), 3);
    assert.equal((await kvs[0].get(MIGRATION_LOCK_KEY)).value, null, "the lock is released");
    assert.deepEqual(await migrate(kvs[1], migrations, { log: silentLogger }), [], "nothing left");
  } finally {
    for (const kv of kvs) kv.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a runner waits for a lock holder, and takes over once the lock of a dead one expires", async () => {
  const kv = await Deno.openKv(":memory:");
  try {
    await kv.set(MIGRATION_LOCK_KEY, { owner: "mig_dead", expires_ms: Date.now() + 300 });
    const { lines, log } = recorder();
    assert.deepEqual(await migrate(kv, counting(2), { log, pollMs: 10 }), [1, 2]);
    assert.equal(lines[0].msg, "waiting for another process's migrations");
    assert.deepEqual(await runs(kv, 2), [1n, 1n]);
  } finally {
    kv.close();
  }
});

Deno.test("a runner whose lock was taken from it stores no version, and waits for the new holder", async () => {
  const kv = await Deno.openKv(":memory:");
  try {
    let stolen = false;
    const migrations = counting(1, async (kv) => {
      if (stolen) return;
      stolen = true;
      // Another process found the lock expired (this one stalled) and took it for 200 ms.
      await kv.set(MIGRATION_LOCK_KEY, { owner: "mig_other", expires_ms: Date.now() + 200 });
    });
    const { lines, log } = recorder();
    const applied = await migrate(kv, migrations, { log, pollMs: 10 });
    assert.ok(lines.some((l) => l.msg.startsWith("the migration lock expired")));
    // The other holder never finished: once its lock expired this runner ran the step again.
    assert.deepEqual(applied, [1]);
    assert.deepEqual(await runs(kv, 1), [2n]);
    assert.equal(await schemaVersion(kv), 1);
  } finally {
    kv.close();
  }
});

Deno.test("a KV of a newer schema is refused, and an abort stops a waiting runner", async () => {
  const kv = await Deno.openKv(":memory:");
  try {
    await kv.set(SCHEMA_VERSION_KEY, 3);
    await assert.rejects(migrate(kv, counting(2), { log: silentLogger }), MigrationError);
    await kv.set(SCHEMA_VERSION_KEY, 0);
    await kv.set(MIGRATION_LOCK_KEY, { owner: "mig_alive", expires_ms: Date.now() + 60_000 });
    const ac = new AbortController();
    const waiting = migrate(kv, counting(2), { log: silentLogger, pollMs: 10, signal: ac.signal });
    await sleep(50);
    ac.abort();
    await assert.rejects(waiting, (e: Error) => e.name === "AbortError");
    assert.deepEqual(await runs(kv, 2), [undefined, undefined]);
  } finally {
    kv.close();
  }
});

Deno.test("migration 1 gives books written by the previous schema their ledger totals, exactly", async () => {
  const dir = await Deno.makeTempDir();
  const kvPath = `${dir}/books.kv`;
  try {
    let t = await startRouter({ kvPath });
    let books;
    try {
      books = await populateBooks(t);
    } finally {
      await t.close();
    }
    const kv = await Deno.openKv(kvPath);
    try {
      await asPreviousSchema(kv);
      const ids = (await listAccounts(kv)).map((a) => a.account.id);
      assert.ok(ids.length >= 3);
      assert.deepEqual(await ledgerTotals(kv, ids), ids.map(() => null), "no totals yet");
      assert.equal((await verifyBooks(kv)).ok, true, "the books check sums the rows meanwhile");
      const { lines, log } = recorder();
      assert.deepEqual(await migrateSchema(kv, { log }), [1]);
      assert.equal(await schemaVersion(kv), SCHEMA_VERSION);
      assert.ok(
        lines.some((l) =>
          l.msg === "ledger totals back-filled" && l.fields?.accounts === ids.length
        ),
      );
      for (const id of ids) {
        assert.deepEqual(await ledgerTotals(kv, [id]), [await sumLedger(kv, id)], id);
      }
      assert.equal((await verifyBooks(kv, { scan: true })).ok, true);
    } finally {
      kv.close();
    }
    // The upgraded books go on as new ones do.
    t = await startRouter({ kvPath });
    try {
      assert.equal((await chat(t, books.accounts[0].key, true)).status, 200);
      await t.router.flush();
      assert.equal((await verifyBooks(t.kv, { scan: true })).ok, true);
      await t.assertBooks();
    } finally {
      await t.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("main.ts processes starting together answer /readyz 503 while migrating, and apply migration 1 once", async () => {
  const dir = await Deno.makeTempDir();
  const kvPath = `${dir}/books.kv`;
  const openai = startFakeOpenAI();
  const routers: Awaited<ReturnType<typeof spawnRouter>>[] = [];
  try {
    const t = await startRouter({ kvPath });
    let books;
    try {
      books = await populateBooks(t);
      // Enough accounts that the back-fill takes a while: the processes overlap in it.
      await Promise.all(
        Array.from(
          { length: 300 },
          (_, i) => createAccount(t.kv, { name: `a${i}`, email: null }, Date.now()),
        ),
      );
    } finally {
      await t.close();
    }
    const kv = await Deno.openKv(kvPath);
    await asPreviousSchema(kv);
    // A process is migrating: the others wait for it.
    await kv.set(MIGRATION_LOCK_KEY, { owner: "mig_test", expires_ms: Date.now() + 60_000 });
    const env = {
      KV_PATH: kvPath,
      ADMIN_TOKEN,
      OPENAI_API_KEY: "sk-upstream-test",
      OPENAI_BASE_URL: openai.url,
    };
    routers.push(
      ...await Promise.all([1, 2, 3].map(() => spawnRouter(env, { ready: false }))),
    );
    for (const r of routers) {
      assert.deepEqual(await json(await fetch(`${r.url}/readyz`), 503), {
        ok: false,
        state: "starting",
      });
      assert.deepEqual(await json(await fetch(`${r.url}/healthz`), 200), { ok: true });
      const refused = await json(await fetch(`${r.url}/v1/models`), 503);
      assert.equal(refused.error.code, "starting");
    }
    await kv.delete(MIGRATION_LOCK_KEY);
    kv.close();
    for (const r of routers) {
      while (
        (await fetch(`${r.url}/readyz`).then((res) => (res.body?.cancel(), res.status))) !== 200
      ) {
        await sleep(50);
      }
    }
    const applied = routers.flatMap((r) =>
      r.output().split("\n").filter((l) => l.includes('"msg":"migration applied"'))
    );
    assert.equal(applied.length, 1, "one process applied it");
    // Every process serves the books, with totals the check reads.
    const res = await fetch(`${routers[1].url}/v1/chat/completions`, {
      method: "POST",
      headers: {
        authorization: `Bearer ${books.accounts[1].key}`,
        "content-type": "application/json",
      },
      body: JSON.stringify({ model: "gpt-4o-mini", messages: [{ role: "user", content: "hi" }] }),
    });
    await json(res, 200);
    for (const r of routers.splice(0)) assert.equal((await r.stop()).code, 0);
    const after = await Deno.openKv(kvPath);
    try {
      const ids = (await listAccounts(after)).map((a) => a.account.id);
      assert.ok((await ledgerTotals(after, ids)).every((x) => x !== null));
      const v = await verifyBooks(after, { scan: true });
      assert.equal(v.pending_events, 0);
      assert.deepEqual(v.differences, []);
    } finally {
      after.close();
    }
  } finally {
    for (const r of routers) await r.stop();
    await openai.close();
    await Deno.remove(dir, { recursive: true });
  }
});
