/** The KV schema's migrations, in order: lib/kv/migrate.ts applies the ones a KV lacks. */
import { migrate, type MigrateOptions, type Migration } from "./kv/migrate.ts";
import { ACCOUNT_PREFIX, accountIdOfKey } from "./kv/schema.ts";
import { backfillLedgerTotals } from "./billing/totals.ts";

// Accounts back-filled at once: each is a few round trips, which a remote KV makes slow one by one.
const BACKFILL_CONCURRENCY = 8;

export const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    name: "ledger totals",
    // Accounts created before the running ledger totals get them from their rows.
    async run(kv, { signal, log, now }) {
      let filled = 0, batch: string[] = [];
      const fill = async () => {
        const done = await Promise.all(batch.map((id) => backfillLedgerTotals(kv, id, now())));
        filled += done.filter(Boolean).length;
        batch = [];
        signal.throwIfAborted();
      };
      for await (const e of kv.list<unknown>({ prefix: ACCOUNT_PREFIX })) {
        batch.push(accountIdOfKey(e.key));
        if (batch.length === BACKFILL_CONCURRENCY) await fill();
      }
      await fill();
      log("info", "ledger totals back-filled", { accounts: filled });
    },
  },
];

/** The schema version this build writes. */
export const SCHEMA_VERSION = MIGRATIONS.length;

/** Applies this build's missing migrations to `kv` (see `migrate`). */
export const migrateSchema = (kv: Deno.Kv, opts: MigrateOptions) => migrate(kv, MIGRATIONS, opts);
