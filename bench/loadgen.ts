/**
 * The fallback load generator when `wrk` is missing: keeps `concurrency` POSTs in flight for
 * `durationMs` and prints the same JSON summary as bench/post.lua. Runs in its own process.
 *
 * Usage: deno run -A bench/loadgen.ts '{"url":…,"body":…,"tokens":[…],"headers":{…},
 *   "concurrency":32,"durationMs":10000}'
 */

/** What one load run is asked to do. */
export interface LoadSpec {
  url: string;
  body: string;
  /** Bearer tokens, rotated per request; empty for none. */
  tokens: string[];
  headers: Record<string, string>;
  concurrency: number;
  durationMs: number;
}

/** The summary printed by both load generators. */
export interface LoadResult {
  requests: number;
  duration_us: number;
  p50_us: number;
  p99_us: number;
  max_us: number;
  errors: { connect: number; read: number; write: number; status: number; timeout: number };
  /** The latency at percentiles 1 to 99, then 99.9 (wrk's bench/post.lua; absent otherwise). */
  pcts_us?: number[];
}

/** Runs the load and returns its summary. */
export async function runLoad(spec: LoadSpec): Promise<LoadResult> {
  const latencies: number[] = [];
  const errors = { connect: 0, read: 0, write: 0, status: 0, timeout: 0 };
  const headers: Record<string, string>[] = spec.tokens.map((t) => ({
    "content-type": "application/json",
    ...spec.headers,
    authorization: `Bearer ${t}`,
  }));
  if (headers.length === 0) headers.push({ "content-type": "application/json", ...spec.headers });
  let next = 0;
  const start = performance.now();
  const end = start + spec.durationMs;
  const worker = async () => {
    while (performance.now() < end) {
      const h = headers[next++ % headers.length];
      const t0 = performance.now();
      try {
        const res = await fetch(spec.url, { method: "POST", headers: h, body: spec.body });
        await res.arrayBuffer();
        if (res.status >= 400) errors.status++;
        latencies.push(performance.now() - t0);
      } catch {
        errors.read++;
      }
    }
  };
  await Promise.all(Array.from({ length: spec.concurrency }, worker));
  const duration = performance.now() - start;
  latencies.sort((a, b) => a - b);
  const pct = (p: number) =>
    latencies.length
      ? latencies[Math.min(latencies.length - 1, Math.floor(latencies.length * p))]
      : 0;
  const us = (ms: number) => Math.round(ms * 1000);
  return {
    requests: latencies.length,
    duration_us: us(duration),
    p50_us: us(pct(0.5)),
    p99_us: us(pct(0.99)),
    max_us: us(latencies.at(-1) ?? 0),
    errors,
  };
}

if (import.meta.main) {
  const spec = JSON.parse(Deno.args[0]) as LoadSpec;
  console.log(JSON.stringify(await runLoad(spec)));
}
