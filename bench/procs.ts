/**
 * What the gateway and scale benchmarks share: starting and stopping processes, their CPU time,
 * the load generators (wrk with bench/post.lua, or bench/loadgen.ts), merging load results, and
 * setting a router up through its admin and management API.
 */
import type { LoadResult, LoadSpec } from "./loadgen.ts";

export const ROOT = new URL("../", import.meta.url).pathname;
export const BENCH = new URL("./", import.meta.url).pathname;
export const ADMIN_TOKEN = "bench-admin-token-0123456789abcdef";
export const UPSTREAM_KEY = "sk-bench-upstream";

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export interface Proc {
  name: string;
  pid: number;
  url: string;
  child: Deno.ChildProcess;
  /** The last lines the process printed, for error messages. */
  tail: () => string;
}

/** Every process started, stopped by `stopAll`. */
export const procs: Proc[] = [];

export function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

/** Keeps the last few KB a stream printed, reading it to the end so the pipe never fills. */
function drain(stream: ReadableStream<Uint8Array>): () => string {
  let tail = "";
  const d = new TextDecoder();
  (async () => {
    for await (const chunk of stream) {
      tail = (tail + d.decode(chunk, { stream: true })).slice(-4000);
    }
  })().catch(() => {});
  return () => tail;
}

/** Starts a process and waits until `readyPath` on its port answers over HTTP, other than 503. */
export async function start(
  name: string,
  cmd: string,
  cmdArgs: string[],
  opts: { port: number; env?: Record<string, string>; cwd?: string; readyPath?: string },
): Promise<Proc> {
  const child = new Deno.Command(cmd, {
    args: cmdArgs,
    env: { NO_COLOR: "1", DENO_NO_UPDATE_CHECK: "1", ...opts.env },
    cwd: opts.cwd ?? ROOT,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const out = drain(child.stdout);
  const err = drain(child.stderr);
  const url = `http://127.0.0.1:${opts.port}`;
  const p: Proc = { name, pid: child.pid, url, child, tail: () => out() + err() };
  procs.push(p);
  let exited = false;
  child.status.then(() => exited = true);
  for (let i = 0; i < 300; i++) {
    if (exited) throw new Error(`${name} exited at start:\n${p.tail()}`);
    try {
      const res = await fetch(url + (opts.readyPath ?? "/"));
      await res.body?.cancel();
      // A router answers 503 until it is ready (`/readyz`).
      if (res.status !== 503) return p;
    } catch {
      // not listening yet
    }
    await sleep(100);
  }
  throw new Error(`${name} did not start within 30 s:\n${p.tail()}`);
}

export async function stopAll() {
  for (const p of procs.splice(0).reverse()) {
    try {
      p.child.kill("SIGTERM");
    } catch { /* already gone */ }
    const done = await Promise.race([p.child.status.then(() => true), sleep(3000)]);
    if (!done) {
      try {
        p.child.kill("SIGKILL");
      } catch { /* already gone */ }
      await p.child.status;
    }
  }
}

/** User + system CPU time a process has used so far, in microseconds (Linux). */
export async function cpuMicros(pid: number): Promise<number | null> {
  try {
    const stat = await Deno.readTextFile(`/proc/${pid}/stat`);
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    // utime and stime are fields 14 and 15 of the whole line, in clock ticks (100 per second).
    return (Number(fields[11]) + Number(fields[12])) * 10_000;
  } catch {
    return null;
  }
}

export async function haveWrk(): Promise<boolean> {
  const probe = async () => {
    try {
      const r = await new Deno.Command("wrk", {
        args: ["--version"],
        stdout: "null",
        stderr: "null",
      })
        .output();
      return r.code === 0 || r.code === 1;
    } catch {
      return false;
    }
  };
  if (await probe()) return true;
  if (Deno.uid?.() === 0) {
    console.log("wrk is missing: trying apt-get install -y wrk");
    try {
      await new Deno.Command("apt-get", {
        args: ["install", "-y", "-qq", "wrk"],
        env: { DEBIAN_FRONTEND: "noninteractive" },
        stdout: "null",
        stderr: "null",
      }).output();
    } catch { /* no apt */ }
    if (await probe()) return true;
  }
  return false;
}

let fileSeq = 0;

/** One wrk run (one thread) of `spec`; its body and tokens are written into `tmp`. */
export async function runWrk(spec: LoadSpec, tmp: string): Promise<LoadResult> {
  const bodyFile = `${tmp}/body-${fileSeq}.json`;
  const tokensFile = `${tmp}/tokens-${fileSeq++}.txt`;
  await Deno.writeTextFile(bodyFile, spec.body);
  await Deno.writeTextFile(tokensFile, spec.tokens.join("\n") + "\n");
  const out = await new Deno.Command("wrk", {
    args: [
      "-t1",
      `-c${spec.concurrency}`,
      `-d${Math.round(spec.durationMs / 1000)}s`,
      "--timeout",
      "10s",
      "-s",
      `${BENCH}post.lua`,
      spec.url,
      "--",
      bodyFile,
      spec.tokens.length ? tokensFile : "-",
      ...Object.entries(spec.headers).map(([k, v]) => `${k}: ${v}`),
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  const line = text.split("\n").find((l) => l.startsWith("{"));
  if (!line) throw new Error(`wrk failed: ${text}${new TextDecoder().decode(out.stderr)}`);
  return JSON.parse(line);
}

export async function runDenoLoad(spec: LoadSpec): Promise<LoadResult> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${BENCH}loadgen.ts`, JSON.stringify(spec)],
    cwd: ROOT,
    stdout: "piped",
    stderr: "inherit",
  }).output();
  if (out.code !== 0) throw new Error("the load generator failed");
  return JSON.parse(new TextDecoder().decode(out.stdout).trim().split("\n").at(-1)!);
}

/**
 * One target's slices of a load as one result: counts and durations summed, p50 the median of the
 * slices' p50s, p99 the largest of their p99s.
 */
export function merged(slices: LoadResult[]): LoadResult {
  const sum = (f: (r: LoadResult) => number) => slices.reduce((n, r) => n + f(r), 0);
  const p50s = slices.map((r) => r.p50_us).sort((a, b) => a - b);
  const mid = p50s.length >> 1;
  return {
    requests: sum((r) => r.requests),
    duration_us: sum((r) => r.duration_us),
    p50_us: p50s.length % 2 ? p50s[mid] : (p50s[mid - 1] + p50s[mid]) / 2,
    p99_us: Math.max(...slices.map((r) => r.p99_us)),
    max_us: Math.max(...slices.map((r) => r.max_us)),
    errors: sumErrors(slices),
  };
}

/** The errors of several loads, added up. */
function sumErrors(parts: LoadResult[]): LoadResult["errors"] {
  const sum = (f: (e: LoadResult["errors"]) => number) =>
    parts.reduce((n, r) => n + f(r.errors), 0);
  return {
    connect: sum((e) => e.connect),
    read: sum((e) => e.read),
    write: sum((e) => e.write),
    status: sum((e) => e.status),
    timeout: sum((e) => e.timeout),
  };
}

/**
 * Runs a benchmark's `main` (true: it passed), prints the last output of every process on a
 * failure, stops every process, runs `cleanup` and exits with the outcome.
 */
export async function runBench(main: () => Promise<boolean>, cleanup: () => Promise<void>) {
  let ok = false;
  try {
    ok = await main();
  } catch (e) {
    console.error(e instanceof Error ? e.message : e);
    for (const p of procs) {
      const tail = p.tail().trim();
      if (tail) console.error(`--- ${p.name} (last output)\n${tail.slice(-1500)}`);
    }
  } finally {
    await stopAll();
    await cleanup();
  }
  Deno.exit(ok ? 0 : 1);
}

/** Successful replies per second of one load. */
export const successRate = (r: LoadResult) =>
  (r.requests - r.errors.status) / (r.duration_us / 1e6);

/** An admin API call to a router; throws on a status of 300 or more. */
export async function admin(router: Proc, method: string, path: string, payload?: unknown) {
  const res = await fetch(router.url + path, {
    method,
    headers: { authorization: `Bearer ${ADMIN_TOKEN}`, "content-type": "application/json" },
    body: payload === undefined ? undefined : JSON.stringify(payload),
  });
  const text = await res.text();
  if (res.status >= 300) throw new Error(`${method} ${path}: ${res.status} ${text}`);
  return JSON.parse(text);
}

/**
 * Creates an account with credit and one inference key (`keySpec` adds to its fields) through the
 * admin and management API.
 */
export async function account(
  router: Proc,
  i: number,
  credit = "1000",
  keySpec: Record<string, unknown> = {},
): Promise<string> {
  const acct = await admin(router, "POST", "/v1/admin/accounts", { name: `Bench ${i}` });
  await admin(router, "POST", `/v1/admin/accounts/${acct.id}/adjustments`, {
    amount: credit,
    reason: "benchmark credit",
  });
  const res = await fetch(router.url + "/v1/keys", {
    method: "POST",
    headers: {
      authorization: `Bearer ${acct.management_key}`,
      "content-type": "application/json",
    },
    body: JSON.stringify({ name: "bench", ...keySpec }),
  });
  const key = await res.json();
  if (res.status !== 201) throw new Error(`POST /v1/keys: ${res.status} ${JSON.stringify(key)}`);
  return key.key;
}

/** A chat completion request body of the benchmarks (64 output tokens at most). */
export function chatBody(model: string, mode: "json" | "sse"): string {
  return JSON.stringify({
    model,
    messages: [{ role: "user", content: "Say hello in about twenty words." }],
    max_tokens: 64,
    ...(mode === "sse" ? { stream: true, stream_options: { include_usage: true } } : {}),
  });
}

/** The percentiles `pcts_us` lists, in order. */
const PCT_POINTS = [...Array.from({ length: 99 }, (_, i) => (i + 1) / 100), 0.999];

/** The fraction of one load's requests at or below `us`, read off its percentile table. */
function cdf(r: LoadResult, us: number): number {
  const t = r.pcts_us!;
  if (us < t[0]) return 0;
  for (let i = t.length - 1; i >= 0; i--) if (us >= t[i]) return PCT_POINTS[i];
  return 0;
}

/**
 * Loads that ran side by side (one per router process, the same span) as one result: counts summed,
 * the duration the longest, p50 and p99 from the pooled distribution of their percentile tables
 * (each weighted by its requests), or, without tables, the weighted p50 and the largest p99.
 */
export function together(parts: LoadResult[]): LoadResult {
  const sum = (f: (r: LoadResult) => number) => parts.reduce((n, r) => n + f(r), 0);
  const n = sum((r) => r.requests) || 1;
  let p50 = sum((r) => r.p50_us * r.requests) / n;
  let p99 = Math.max(...parts.map((r) => r.p99_us));
  if (parts.every((r) => r.pcts_us?.length === PCT_POINTS.length)) {
    const candidates = [...new Set(parts.flatMap((r) => r.pcts_us!))].sort((a, b) => a - b);
    const pooled = (us: number) => parts.reduce((s, r) => s + cdf(r, us) * r.requests, 0) / n;
    p50 = candidates.find((us) => pooled(us) >= 0.5) ?? p50;
    p99 = candidates.find((us) => pooled(us) >= 0.99) ?? p99;
  }
  return {
    requests: sum((r) => r.requests),
    duration_us: Math.max(...parts.map((r) => r.duration_us)),
    p50_us: p50,
    p99_us: p99,
    max_us: Math.max(...parts.map((r) => r.max_us)),
    errors: sumErrors(parts),
  };
}
