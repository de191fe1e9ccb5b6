/**
 * Schema versions: the KV stores the version of the last migration applied, and each process runs
 * the ones it lacks at start, one process at a time under a lock kept in the KV itself, so that
 * processes starting together apply each migration once and the others wait for it.
 */
import { MIGRATION_LOCK_KEY, SCHEMA_VERSION_KEY } from "./schema.ts";
import { commitRetrying, pause } from "./util.ts";
import { newId } from "../ids.ts";
import type { Logger } from "../log.ts";

export interface Migration {
  /** The schema version it brings the KV to: 1, 2, … in order. */
  version: number;
  name: string;
  /**
   * The change, idempotent: run again after a process died part-way (or on a KV it already
   * changed), it completes the work and repeats none of it. It stops early when `signal` aborts.
   */
  run(kv: Deno.Kv, ctx: { signal: AbortSignal; log: Logger; now: () => number }): Promise<void>;
}

/** The process running migrations, until it renews or releases the lock. */
export interface MigrationLock {
  owner: string;
  expires_ms: number;
}

/** The KV's schema is newer than this build's migrations know, or the list is malformed. */
export class MigrationError extends Error {
  override name = "MigrationError";
}

export interface MigrateOptions {
  log: Logger;
  /** Aborts the wait or the migration in progress (a signal while starting). */
  signal?: AbortSignal;
  /** How long the lock lives unrenewed; renewed every third of it while migrations run. */
  lockTtlMs?: number;
  /** How often a waiting process looks whether the migrations are done or the lock free. */
  pollMs?: number;
  /** The clock (lock expiries, the migrations' own records); the system's by default. */
  now?: () => number;
}

/** The schema version stored in `kv` (0 before any migration). */
export async function schemaVersion(kv: Deno.Kv): Promise<number> {
  return (await kv.get<number>(SCHEMA_VERSION_KEY)).value ?? 0;
}

/**
 * Brings `kv` to the last version of `migrations`, applying each missing one once across every
 * process doing the same: the one that takes the lock runs them in order, storing the version after
 * each; the others wait until the version is current, or take over once the lock expires (its holder
 * died). Returns the versions this call applied. Throws a MigrationError when the KV is newer.
 */
export async function migrate(
  kv: Deno.Kv,
  migrations: readonly Migration[],
  opts: MigrateOptions,
): Promise<number[]> {
  migrations.forEach((m, i) => {
    if (m.version !== i + 1) {
      throw new MigrationError(`migration "${m.name}" is not version ${i + 1}`);
    }
  });
  const target = migrations.length;
  const ttl = opts.lockTtlMs ?? 30_000;
  const now = opts.now ?? Date.now;
  const signal = opts.signal ?? new AbortController().signal;
  const owner = newId("mig");
  let waited = false;
  for (;;) {
    signal.throwIfAborted();
    const [version, lock] = await kv.getMany<[number, MigrationLock]>([
      SCHEMA_VERSION_KEY,
      MIGRATION_LOCK_KEY,
    ]);
    const current = version.value ?? 0;
    if (current > target) {
      throw new MigrationError(
        `the KV's schema version is ${current}, newer than this build's ${target}: run the newer build`,
      );
    }
    if (current === target) return [];
    if (lock.value === null || lock.value.expires_ms <= now()) {
      const res = await commitRetrying(
        kv.atomic().check(version, lock).set(MIGRATION_LOCK_KEY, {
          owner,
          expires_ms: now() + ttl,
        }),
      );
      if (res.ok) {
        const held = { key: MIGRATION_LOCK_KEY, versionstamp: res.versionstamp };
        const applied = await runHolding(kv, migrations.slice(current), held, owner, ttl, {
          ...opts,
          signal,
        });
        if (applied) return applied;
        opts.log("warn", "the migration lock expired while migrating; waiting for its new holder");
      }
    } else if (!waited) {
      waited = true;
      opts.log("info", "waiting for another process's migrations", {
        schema_version: current,
        target,
      });
    }
    await pause(opts.pollMs ?? 250, signal);
  }
}

/**
 * Runs `pending` while holding the lock, renewing it meanwhile, then releases it. Returns the
 * versions applied, or null when the lock was lost (it expired and another process took it).
 */
async function runHolding(
  kv: Deno.Kv,
  pending: readonly Migration[],
  held: { key: Deno.KvKey; versionstamp: string },
  owner: string,
  ttl: number,
  opts: MigrateOptions & { signal: AbortSignal },
): Promise<number[] | null> {
  const now = opts.now ?? Date.now;
  const lost = new AbortController();
  // Renewals and version writes each check the lock's last versionstamp: one at a time.
  let writing: Promise<unknown> = Promise.resolve();
  const underLock = (atomic: Deno.AtomicOperation) => {
    const done = writing.then(async () => {
      if (lost.signal.aborted) return false;
      const res = await commitRetrying(
        atomic.check(held).set(MIGRATION_LOCK_KEY, { owner, expires_ms: now() + ttl }),
      );
      if (res.ok) held.versionstamp = res.versionstamp;
      else lost.abort();
      return res.ok;
    });
    writing = done.catch(() => {});
    return done;
  };
  const heartbeat = setInterval(() => underLock(kv.atomic()).catch(() => {}), ttl / 3);
  const signal = AbortSignal.any([opts.signal, lost.signal]);
  const applied: number[] = [];
  try {
    for (const m of pending) {
      opts.signal.throwIfAborted();
      const started = now();
      try {
        await m.run(kv, { signal, log: opts.log, now });
      } catch (e) {
        if (lost.signal.aborted) return null;
        throw e;
      }
      if (lost.signal.aborted) return null;
      if (!await underLock(kv.atomic().set(SCHEMA_VERSION_KEY, m.version))) return null;
      applied.push(m.version);
      opts.log("info", "migration applied", {
        version: m.version,
        name: m.name,
        ms: now() - started,
      });
    }
    return applied;
  } finally {
    clearInterval(heartbeat);
    await writing;
    if (!lost.signal.aborted) {
      await commitRetrying(kv.atomic().check(held).delete(MIGRATION_LOCK_KEY)).catch(() => {});
    }
  }
}
