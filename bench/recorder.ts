/**
 * The recorder alone: puts 1,000 billed usage events in the outbox of a temp-file KV, spread over
 * N accounts, and records them in deliveries of 32 ids (as the drainer does under load), then
 * folds the pending rollup entries into the counters (lib/usage/compact.ts). Prints, for each
 * phase, wall time, atomics, KV writes (mutations) and CPU per event.
 * Usage: deno run -A bench/recorder.ts [accounts=100]
 */
import { recordEvents } from "../lib/audit/recorder.ts";
import { compactPending } from "../lib/usage/compact.ts";
import { newId } from "../lib/ids.ts";
import { outboxKey } from "../lib/kv/schema.ts";
import type { UsageEvent } from "../lib/billing/types.ts";

const accounts = Number(Deno.args[0] ?? 100);
const N = 1000;
const dir = await Deno.makeTempDir({ prefix: "recorder-bench-" });
const kv = await Deno.openKv(`${dir}/r.kv`);
const now = Date.now();
const ids: string[] = [];
for (let i = 0; i < N; i++) {
  const a = i % accounts;
  const e: UsageEvent = {
    id: newId("evt", now),
    account_id: `acct_bench_${a}`,
    ts: now,
    request_id: newId("req", now),
    key_id: `key_bench_${a}`,
    key_name: "bench",
    provider: "openai",
    model: "gpt-4o-mini",
    prompt_tokens: 12,
    completion_tokens: 20,
    cached_tokens: 0,
    cache_write_tokens: 0,
    reasoning_tokens: 0,
    cost: 1000n,
    market_cost: 1200n,
    latency_ms: 5,
    status: 200,
    streaming: false,
    client_ip: "127.0.0.1",
    user_agent: "bench",
    billed: true,
    balance_after: 1_000_000n,
    error_code: null,
  };
  await kv.set(outboxKey(e.id), e);
  ids.push(e.id);
}

const cpuMs = () => {
  const f = Deno.readTextFileSync("/proc/self/stat").split(") ")[1].split(" ");
  return (Number(f[11]) + Number(f[12])) * 10;
};
let atomics = 0;
let writes = 0;
const proto = Deno.AtomicOperation.prototype as unknown as Record<
  string,
  (...args: unknown[]) => unknown
>;
const originals = new Map<string, (...args: unknown[]) => unknown>();
for (const m of ["set", "delete", "sum", "min", "max", "enqueue"]) {
  const f = proto[m];
  originals.set(m, f);
  proto[m] = function (this: unknown, ...args: unknown[]) {
    writes++;
    return f.apply(this, args);
  };
}
const commit = Deno.AtomicOperation.prototype.commit;
Deno.AtomicOperation.prototype.commit = function () {
  atomics++;
  return commit.call(this);
};

/** Runs one phase and prints its cost per event. */
async function phase(name: string, run: () => Promise<unknown>) {
  atomics = writes = 0;
  const c0 = cpuMs();
  const t0 = performance.now();
  await run();
  const wall = performance.now() - t0;
  const cpu = cpuMs() - c0;
  console.log(
    `${accounts} account(s), ${name}: ${N} events in ${wall.toFixed(0)} ms ` +
      `(${(N / (wall / 1000)).toFixed(0)} events/s), ${atomics} atomics, ` +
      `${(writes / N).toFixed(1)} KV writes and ${(cpu * 1000 / N).toFixed(0)} µs CPU per event`,
  );
}
await phase("record", async () => {
  for (let i = 0; i < N; i += 32) await recordEvents(kv, ids.slice(i, i + 32));
});
await phase("compact", () => compactPending(kv, { scan: true }));
Deno.AtomicOperation.prototype.commit = commit;
for (const [m, f] of originals) proto[m] = f;
kv.close();
await Deno.remove(dir, { recursive: true });
