/**
 * Where a router request's time goes: runs the router in process (file KV, the bench upstream)
 * with timers around Deno KV calls, puts wrk load on it, and prints per-request counts and
 * latencies of KV reads and commits, and CPU per request by thread (main, SQLite, GC).
 * Usage: deno run -A bench/probe.ts [accounts=100] [concurrency=32] [seconds=6]
 * Env: PROBE_KV=:memory: (default a temp file), PROBE_DELIVERY=queue|drainer, PROBE_STREAM=1,
 * PROBE_FREE_COMMITS=1: once the accounts are set up, every atomic commit succeeds at once without
 * reaching KV (an experiment, not a router: nothing is stored, so it bounds what the router would
 * cost if its KV commits cost nothing; the actor works from the state it remembers).
 * PROBE_SERVE=deno: served by `Deno.serve` rather than as main.ts serves (`serveWithLimits`).
 */
import { loadConfig } from "../lib/config.ts";
import { createApp } from "../lib/app.ts";
import { silentLogger } from "../lib/log.ts";
import { serveWithLimits } from "../lib/http/serve.ts";
import { trustedProxies } from "../lib/net.ts";
import { printThreadCpu, threadCpuMs } from "./threads.ts";

const accounts = Number(Deno.args[0] ?? 100);
const concurrency = Number(Deno.args[1] ?? 32);
const seconds = Number(Deno.args[2] ?? 6);
const ADMIN = "probe-admin-token-0123456789";
const tmp = await Deno.makeTempDir();

const up = new Deno.Command("node", {
  args: [new URL("./upstream.mjs", import.meta.url).pathname, "0"],
  stdout: "piped",
}).spawn();
const upReader = up.stdout.getReader();
const first = new TextDecoder().decode((await upReader.read()).value);
const upPort = Number(/listening (\d+)/.exec(first)![1]);

type Stat = { n: number; ms: number[] };
const stats = new Map<string, Stat>();
const time = async <T>(name: string, p: () => Promise<T>) => {
  const t0 = performance.now();
  try {
    return await p();
  } finally {
    const s = stats.get(name) ?? { n: 0, ms: [] };
    s.n++;
    s.ms.push(performance.now() - t0);
    stats.set(name, s);
  }
};
const proto = Deno.AtomicOperation.prototype;
const commit = proto.commit;
let freeCommits = false;
let stamp = 1n;
proto.commit = function () {
  if (freeCommits) {
    const versionstamp = (stamp++).toString(16).padStart(20, "0");
    return Promise.resolve({ ok: true as const, versionstamp });
  }
  return time("atomic.commit", () => commit.call(this));
};
// Checks and mutations per key prefix: what each request costs the atomics.
const ops = new Map<string, number>();
const count = (what: string, key: Deno.KvKey) => {
  const k = `${what} ${String(key[0])}`;
  ops.set(k, (ops.get(k) ?? 0) + 1);
};
for (const m of ["check", "set", "delete", "sum"] as const) {
  const orig = proto[m] as (...a: unknown[]) => Deno.AtomicOperation;
  // deno-lint-ignore no-explicit-any
  (proto as any)[m] = function (this: Deno.AtomicOperation, ...a: unknown[]) {
    for (const x of m === "check" ? a : [a[0]]) {
      count(m, m === "check" ? (x as Deno.AtomicCheck).key : x as Deno.KvKey);
    }
    return orig.apply(this, a);
  };
}
const kvp = Deno.Kv.prototype;
const getMany = kvp.getMany;
kvp.getMany = function (this: Deno.Kv, ...a: Parameters<typeof getMany>) {
  return time("kv.getMany", () => getMany.apply(this, a));
} as typeof getMany;
const get = kvp.get;
kvp.get = function (this: Deno.Kv, ...a: Parameters<typeof get>) {
  return time("kv.get", () => get.apply(this, a));
} as typeof get;

const env = {
  ADMIN_TOKEN: ADMIN,
  OPENAI_API_KEY: "sk-probe",
  OPENAI_BASE_URL: `http://127.0.0.1:${upPort}/v1`,
  KV_PATH: Deno.env.get("PROBE_KV") ?? `${tmp}/router.kv`,
  ...(Deno.env.get("PROBE_DELIVERY") ? { OUTBOX_DELIVERY: Deno.env.get("PROBE_DELIVERY")! } : {}),
};
const config = loadConfig(env);
const kv = await Deno.openKv(config.kvPath);
const router = createApp({ kv, config, env, log: silentLogger });
const server = Deno.env.get("PROBE_SERVE") === "deno"
  ? Deno.serve({ port: 0, hostname: "127.0.0.1", onListen() {} }, router.app.fetch)
  : serveWithLimits(
    { port: 0, hostname: "127.0.0.1" },
    {
      headerTimeoutMs: config.headerTimeoutMs,
      idleTimeoutMs: config.idleTimeoutMs,
      maxConnectionsPerClient: config.maxConnectionsPerClient,
      uncapped: trustedProxies(config.trustedProxies),
    },
    router.app.fetch,
    silentLogger,
  );
const url = `http://127.0.0.1:${server.addr.port}`;
const call = async (auth: string, path: string, body: unknown) => {
  const r = await fetch(url + path, {
    method: "POST",
    headers: { authorization: `Bearer ${auth}`, "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  const j = await r.json();
  if (r.status >= 300) throw new Error(JSON.stringify(j));
  return j;
};
const keys: string[] = [];
for (let i = 0; i < accounts; i++) {
  const a = await call(ADMIN, "/v1/admin/accounts", { name: `P${i}` });
  await call(ADMIN, `/v1/admin/accounts/${a.id}/adjustments`, { amount: "1000", reason: "p" });
  keys.push((await call(a.management_key, "/v1/keys", { name: "k" })).key);
}
await Deno.writeTextFile(`${tmp}/tokens`, keys.join("\n") + "\n");
await Deno.writeTextFile(
  `${tmp}/body`,
  JSON.stringify({
    model: "openai/gpt-4o-mini",
    messages: [{ role: "user", content: "hi" }],
    max_tokens: 64,
    ...(Deno.env.get("PROBE_STREAM") ? { stream: true } : {}),
  }),
);
await router.flush();
freeCommits = Deno.env.get("PROBE_FREE_COMMITS") === "1";
stats.clear();
ops.clear();
const cpu = () => {
  const f = Deno.readTextFileSync("/proc/self/stat").split(") ")[1].split(" ");
  return (Number(f[11]) + Number(f[12])) * 10;
};
const t0 = threadCpuMs();
const c0 = cpu();
const out = await new Deno.Command("wrk", {
  args: [
    "-t1",
    `-c${concurrency}`,
    `-d${seconds}s`,
    "-s",
    new URL("./post.lua", import.meta.url).pathname,
    url + "/v1/chat/completions",
    "--",
    `${tmp}/body`,
    `${tmp}/tokens`,
  ],
  stdout: "piped",
}).output();
const c1 = cpu();
const res = JSON.parse(new TextDecoder().decode(out.stdout).split("\n").find((l) => l[0] === "{")!);
console.log(
  `accounts=${accounts} c=${concurrency}: ${(res.requests / seconds).toFixed(0)} req/s, p50 ${
    res.p50_us / 1000
  } ms, p99 ${res.p99_us / 1000} ms, errors ${JSON.stringify(res.errors)}, process CPU ${
    ((c1 - c0) * 1000 / res.requests).toFixed(0)
  } µs/req`,
);
printThreadCpu(t0, res.requests);
for (const [name, s] of stats) {
  s.ms.sort((a, b) => a - b);
  const p = (q: number) => s.ms[Math.floor((s.ms.length - 1) * q)].toFixed(2);
  console.log(
    `  ${name.padEnd(14)} ${(s.n / res.requests).toFixed(2)}/req  p50 ${p(0.5)} ms  p90 ${
      p(0.9)
    } ms  p99 ${p(0.99)} ms  max ${p(1)} ms`,
  );
}
await server.shutdown();
await router.flush();
// Counted through the flush, so the recording and folding of the load's events are included.
const perReq = [...ops].sort((a, b) => b[1] - a[1]).map(([k, n]) =>
  `${k} ${(n / res.requests).toFixed(2)}`
);
console.log(`  per request: ${perReq.join(", ")}`);
await router.close();
kv.close();
up.kill();
await up.status;
await Deno.remove(tmp, { recursive: true });
