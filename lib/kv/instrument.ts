/**
 * The router's view of its KV: every atomic commit counted (plain integers, read by
 * `GET /v1/admin/stats`) and timed (`router_kv_commit_duration_seconds`), and, for benchmarks
 * only, every call delayed by a simulated network round trip (KV_SIMULATED_LATENCY_MS), as a
 * remote KV such as Deno Deploy's would answer.
 */
import { isLocked, sleep } from "./util.ts";
import { kvCommitDuration } from "../metrics.ts";

/** Counts of this process's atomic commits since it started. */
export interface KvStats {
  /** Atomics committed. */
  commits: number;
  /** Atomics refused because a checked entry had changed (a conflict). */
  conflicts: number;
  /** Commits refused because another process held the KV file's write lock (local KV only). */
  locked: number;
}

/** A list iterator that waits one round trip before each page of `pageSize` entries. */
function delayedList<T>(
  inner: Deno.KvListIterator<T>,
  ms: number,
  pageSize: number,
): Deno.KvListIterator<T> {
  let seen = 0;
  const it = {
    get cursor() {
      return inner.cursor;
    },
    async next() {
      if (seen++ % pageSize === 0) await sleep(ms);
      return await inner.next();
    },
    [Symbol.asyncIterator]() {
      return it;
    },
  };
  return it as unknown as Deno.KvListIterator<T>;
}

/**
 * `kv` with its commits counted into `stats`; with `latencyMs` > 0 every read, write, list page and
 * commit waits that long first (a benchmark's stand-in for a remote KV, never for production).
 */
export function instrumentKv(
  kv: Deno.Kv,
  stats: KvStats,
  latencyMs = 0,
): Deno.Kv {
  const count = async (commit: () => Promise<Deno.KvCommitResult | Deno.KvCommitError>) => {
    const started = performance.now();
    let outcome = "error";
    try {
      const res = await commit();
      if (res.ok) stats.commits++;
      else stats.conflicts++;
      outcome = res.ok ? "committed" : "conflict";
      return res;
    } catch (e) {
      if (isLocked(e)) stats.locked++;
      throw e;
    } finally {
      kvCommitDuration.observe({ outcome }, (performance.now() - started) / 1000);
    }
  };
  const delayed = <A extends unknown[], R>(f: (...a: A) => Promise<R>) =>
    latencyMs > 0 ? async (...a: A) => (await sleep(latencyMs), await f(...a)) : f;
  const set = delayed(kv.set.bind(kv));
  const del = delayed(kv.delete.bind(kv));
  const methods: Record<string | symbol, unknown> = {
    atomic() {
      const op = kv.atomic();
      const commit = delayed(() => op.commit());
      // A view of the operation whose commit is counted; its chained calls return the view.
      const view: Deno.AtomicOperation = new Proxy(op, {
        get(target, p) {
          if (p === "commit") return () => count(commit);
          const v = Reflect.get(target, p, target);
          if (typeof v !== "function") return v;
          return (...a: unknown[]) => {
            const r = v.apply(target, a);
            return r === target ? view : r;
          };
        },
      });
      return view;
    },
    get: delayed(kv.get.bind(kv)),
    getMany: delayed(kv.getMany.bind(kv)),
    set: (...a: Parameters<Deno.Kv["set"]>) => count(() => set(...a)),
    delete: async (key: Deno.KvKey) => {
      await del(key);
      stats.commits++;
    },
    enqueue: delayed(kv.enqueue.bind(kv)),
    list: (selector: Deno.KvListSelector, options?: Deno.KvListOptions) => {
      const inner = kv.list(selector, options);
      return latencyMs > 0 ? delayedList(inner, latencyMs, options?.batchSize ?? 100) : inner;
    },
  };
  return new Proxy(kv, {
    get(target, p) {
      if (p in methods) return methods[p];
      const v = Reflect.get(target, p, target);
      return typeof v === "function" ? v.bind(target) : v;
    },
  });
}
