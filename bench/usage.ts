/**
 * Usage analytics and audit export at scale: seeds 1,000,000 audit rows over 90 days across 100
 * keys and 20 models (the rows, index entries, ledger rows and rollup counters the recorder and
 * the rollup compactor leave once compacted, built with their own functions) into a temp-file KV
 * for an account signed up through lib/auth, then times the usage summary and every breakdown
 * over the 90 days, a bare KV list of the audit rows, the full CSV export (rows/s, peak RSS
 * growth), and the dashboard pages (Overview, Usage, Keys, Audit, Billing) of the account's owner
 * through the whole app.
 *
 *   deno task bench:usage    # ROWS=200000 for a quicker run; KEEP=1 keeps the KV file and
 *                            # REUSE=<file> (with the same ROWS) measures it again without seeding;
 *                            # BENCH_DIR=<dir> for the KV file's folder (default /dev/shm);
 *                            # PAGE_RUNS=<n> warm requests per page (default 21)
 */
import { auditBytesOf } from "../lib/audit/recorder.ts";
import { exportAudit } from "../lib/audit/query.ts";
import { auditIdKey, auditKey, ledgerKey } from "../lib/kv/schema.ts";
import { newId } from "../lib/ids.ts";
import { keyBytes } from "../lib/kv/util.ts";
import { addRollupTotals, addTotals, eventTotals, type Totals } from "../lib/usage/rollups.ts";
import { queryUsage as queryRows, type UsageQuery } from "../lib/usage/query.ts";
import { usageJson } from "../lib/http/presenters.ts";
import { getUserByEmail, listAccountsByUser } from "../lib/auth/users.ts";
import { signUp } from "../lib/onboarding.ts";
import { createKey, listKeysByAccount } from "../lib/auth/keys.ts";
import { createSession } from "../lib/auth/sessions.ts";
import { loadConfig } from "../lib/config.ts";
import { warmUsageDigests } from "../lib/usage/warm.ts";
import { createApp } from "../lib/app.ts";
import { silentLogger } from "../lib/log.ts";
import type { LedgerEntry, UsageEvent } from "../lib/billing/types.ts";

/** The usage query as GET /v1/usage answers it. */
const queryUsage = async (kv: Deno.Kv, q: UsageQuery) => usageJson(await queryRows(kv, q));

const ROWS = Number(Deno.env.get("ROWS") ?? 1_000_000);
const DAYS = 90, KEYS = 100, MODELS = 20;
const EMAIL = "owner@bench.example";
const DAY = 86_400_000, HOUR = 3_600_000;
const END = Date.UTC(2026, 10, 26); // the period ends at a UTC midnight
const START = END - DAYS * DAY;

// REUSE=<file> measures a KV file kept by an earlier run (KEEP=1) instead of seeding again.
const reuse = Deno.env.get("REUSE");
// A RAM-backed temp dir when there is one: the seed's fsyncs would otherwise time the disk.
const shm = await Deno.stat("/dev/shm").then((s) => s.isDirectory, () => false);
const dir = reuse ? null : await Deno.makeTempDir({
  prefix: "usage-bench-",
  dir: Deno.env.get("BENCH_DIR") ?? (shm ? "/dev/shm" : undefined),
});
const path = reuse ?? `${dir}/bench.kv`;
const kv = await Deno.openKv(path);

// A small deterministic generator, so every run seeds the same data.
let state = 0x2545f491;
const rand = () => {
  state ^= state << 13;
  state ^= state >>> 17;
  state ^= state << 5;
  return (state >>> 0) / 4294967296;
};

// The account is a real one, signed up through the lib (user, owner membership, management key),
// with 100 real inference keys, so the dashboard pages can be timed against it. A kept file finds
// it again by its owner's email.
let ACCT: string;
let userId: string;
const keys: string[] = [];
const existing = await getUserByEmail(kv, EMAIL);
if (existing) {
  userId = existing.id;
  ACCT = (await listAccountsByUser(kv, userId))[0].account_id;
  for (const { key } of await listKeysByAccount(kv, ACCT, Date.now())) {
    if (key.scope === "inference") keys.push(key.id);
  }
} else {
  const made = await signUp(kv, {
    email: EMAIL,
    name: "Bench Owner",
    password: "bench-password-1",
    accountName: "Bench Co",
  }, Date.now());
  userId = made!.user.id;
  ACCT = made!.account.id;
  for (let i = 0; i < KEYS; i++) {
    const name = `Team key_${String(i).padStart(3, "0")}, "prod"`;
    keys.push((await createKey(kv, ACCT, { name, scope: "inference" }, Date.now())).key.id);
  }
}
const models = Array.from(
  { length: MODELS },
  (_, i) => [["openai", "anthropic", "google", "mistral"][i % 4], `model-${i}`],
);
const agents = ["openai-python/1.99", 'Mozilla/5.0 (X11; "bench", x)', "curl/8.5", "Zoë-client/2"];

/**
 * Keeps a few commits in flight; each atomic stays under 1000 mutations, 80 KiB of keys and
 * 800 KiB in all.
 */
class Writer {
  #atomic = kv.atomic();
  #n = 0;
  #keyBytes = 0;
  #inflight: Promise<unknown>[] = [];
  mutations = 0;
  commits = 0;
  async add(f: (a: Deno.AtomicOperation) => void, mutations: number, keyBytes: number) {
    if (this.#n + mutations > 990 || this.#keyBytes + keyBytes > 80_000) await this.flush(false);
    f(this.#atomic);
    this.#n += mutations;
    this.#keyBytes += keyBytes;
    this.mutations += mutations;
  }
  async flush(wait = true) {
    if (this.#n > 0) {
      const a = this.#atomic;
      this.commits++;
      this.#inflight.push(
        a.commit().then((r) => {
          if (!r.ok) throw new Error("seed commit failed");
        }),
      );
      this.#atomic = kv.atomic();
      this.#n = 0;
      this.#keyBytes = 0;
    }
    if (wait || this.#inflight.length >= 4) {
      await Promise.all(this.#inflight);
      this.#inflight = [];
    }
  }
}

async function seed() {
  const w = new Writer();
  // Events in time order; an hour's rollups are complete once the next hour starts, so the
  // counters are written per hour (hour grain) and per day (day grain) and memory stays flat.
  const perHour = ROWS / (DAYS * 24);
  let made = 0;
  // Every rollup dimension is a function of (key, provider, model, bucket): the counters of the
  // events sharing those are summed first, then spread over the dimensions by the recorder's own
  // `addRollupTotals`.
  type Combo = { key: string; provider: string; model: string; totals: Totals };
  const merge = (into: Map<string, Combo>, c: Combo) => {
    const id = `${c.key}\u0000${c.model}`;
    const prev = into.get(id);
    if (prev) addTotals(prev.totals, c.totals);
    else into.set(id, { ...c, totals: { ...c.totals } });
  };
  const write = async (combos: Map<string, Combo>, ms: number, grain: "d" | "h") => {
    const sums = new Map<string, [Deno.KvKey, bigint]>();
    for (const c of combos.values()) {
      addRollupTotals(sums, ACCT, ms, c.key, c.provider, c.model, c.totals, [grain]);
    }
    for (const [k, v] of sums.values()) {
      await w.add((a) => a.set(k, new Deno.KvU64(v)), 1, keyBytes(k));
    }
  };
  let dayCombos = new Map<string, Combo>();
  let balance = 10n ** 15n;
  for (let h = 0; h < DAYS * 24; h++) {
    const hourCombos = new Map<string, Combo>();
    const n = Math.round((h + 1) * perHour) - made;
    for (let i = 0; i < n; i++) {
      const ts = START + h * HOUR + Math.floor(rand() * HOUR);
      const [provider, model] = models[Math.floor(rand() * rand() * MODELS)];
      const k = Math.floor(rand() * KEYS);
      const key = keys[k];
      const prompt = 50 + Math.floor(rand() * 4000), completion = 1 + Math.floor(rand() * 800);
      const market = BigInt(prompt) * 150n + BigInt(completion) * 600n;
      const cost = market - market / 5n;
      balance -= cost;
      const e: UsageEvent = {
        id: newId("evt", ts),
        account_id: ACCT,
        ts,
        request_id: newId("req", ts),
        key_id: key,
        key_name: `Team key_${String(k).padStart(3, "0")}, "prod"`,
        provider,
        model,
        prompt_tokens: prompt,
        completion_tokens: completion,
        cached_tokens: rand() < 0.2 ? Math.floor(prompt / 2) : 0,
        cache_write_tokens: 0,
        reasoning_tokens: rand() < 0.1 ? Math.floor(completion / 3) : 0,
        cost,
        market_cost: market,
        latency_ms: 100 + Math.floor(rand() * 2000),
        status: 200,
        streaming: rand() < 0.5,
        client_ip: "203.0.113.7",
        user_agent: agents[i % agents.length],
        billed: true,
        balance_after: balance,
        error_code: null,
      };
      const entry: LedgerEntry = {
        id: e.id.replace(/^evt_/, "txn_"),
        type: "usage_debit",
        amount: -cost,
        balance_after: balance,
        created_at: new Date(ts).toISOString(),
        description: `${provider}/${model}, ${prompt + completion} tokens`,
        reference: e.request_id,
      };
      const ak = auditKey(ACCT, ts, e.request_id), ik = auditIdKey(ACCT, e.request_id);
      const lk = ledgerKey(ACCT, ts, entry.id);
      await w.add(
        (a) => a.set(ak, auditBytesOf(e)).set(ik, ts).set(lk, entry),
        3,
        keyBytes(ak) + keyBytes(ik) + keyBytes(lk),
      );
      merge(hourCombos, { key, provider, model, totals: eventTotals(e) });
    }
    made += n;
    await write(hourCombos, START + h * HOUR, "h");
    for (const c of hourCombos.values()) merge(dayCombos, c);
    if ((h + 1) % 24 === 0) {
      await write(dayCombos, START + h * HOUR, "d");
      dayCombos = new Map();
      await w.flush();
    }
  }
  await w.flush();
  console.log(`seed: ${w.mutations} mutations in ${w.commits} commits`);
  return made;
}

const t0 = performance.now();
const seeded = reuse ? ROWS : await seed();
const seedS = (performance.now() - t0) / 1000;
console.log(`seeded ${seeded} rows in ${seedS.toFixed(1)} s`);

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const now = END + HOUR;
const full = { accountId: ACCT, fromMs: START, toMs: END, now };
const ragged = { accountId: ACCT, fromMs: START + 10 * HOUR, toMs: END - 10 * HOUR, now };
const queries: [string, UsageQuery][] = [
  ["summary + rows by day", { ...full, groupBy: "date" }],
  ["by week", { ...full, groupBy: "date", interval: "week" }],
  ["by key", { ...full, groupBy: "key" }],
  ["by provider", { ...full, groupBy: "provider" }],
  ["by model", { ...full, groupBy: "model" }],
  ["one key by day", { ...full, keyId: keys[7], groupBy: "date" }],
  ["one key by model", { ...full, keyId: keys[7], groupBy: "model" }],
  ["by model, 10:00 to 14:00 ends", { ...ragged, groupBy: "model" }],
  ["by key, 10:00 to 14:00 ends", { ...ragged, groupBy: "key" }],
];
const results: { query: string; first_ms: number; median_ms: number; requests: number }[] = [];
for (const [name, q] of queries) {
  let s = performance.now();
  const r = await queryUsage(kv, q);
  const first = performance.now() - s;
  const times: number[] = [];
  for (let i = 0; i < 7; i++) {
    s = performance.now();
    await queryUsage(kv, q);
    times.push(performance.now() - s);
  }
  results.push({
    query: name,
    first_ms: Math.round(first * 10) / 10,
    median_ms: Math.round(median(times) * 10) / 10,
    requests: r.summary.requests,
  });
}
console.table(results);

// The machine is shared: the 1-minute load average (this process included) goes with the rates.
const load = () => Deno.loadavg()[0].toFixed(2);
console.log(`load average before the bare list: ${load()}`);
// The baseline: the same rows listed bare (newest first, 1,000 a batch), nothing formatted.
let s = performance.now();
let listed = 0;
const bare = kv.list({ prefix: ["audit", ACCT] }, { reverse: true, batchSize: 1000 });
for await (const _ of bare) listed++;
const bareS = (performance.now() - s) / 1000;
console.log(
  `bare KV list: ${listed} rows in ${bareS.toFixed(1)} s = ${Math.round(listed / bareS)} rows/s`,
);

// The full CSV export, consumed as a client would, with RSS sampled while it streams.
const rssBefore = Deno.memoryUsage().rss;
let peak = rssBefore;
const sampler = setInterval(() => peak = Math.max(peak, Deno.memoryUsage().rss), 20);
s = performance.now();
let bytes = 0, lines = 0;
const stream = exportAudit(kv, ACCT, { fromMs: 0, toMs: Number.MAX_SAFE_INTEGER }, "csv");
for await (const chunk of stream) {
  bytes += chunk.length;
  for (let i = chunk.indexOf(10); i !== -1; i = chunk.indexOf(10, i + 1)) lines++;
}
const exportS = (performance.now() - s) / 1000;
clearInterval(sampler);
peak = Math.max(peak, Deno.memoryUsage().rss);
const exported = lines - 1;
console.log(
  `export: ${exported} rows, ${(bytes / 1e6).toFixed(0)} MB in ${exportS.toFixed(1)} s = ` +
    `${Math.round(exported / exportS)} rows/s; peak RSS growth ${
      ((peak - rssBefore) / 1e6).toFixed(1)
    } MB; ${(exported / exportS / (listed / bareS) * 100).toFixed(0)} % of the bare list's rate`,
);
console.log(`load average after the export: ${load()}`);
if (exported !== seeded) throw new Error(`exported ${exported} of ${seeded} rows`);

// The dashboard pages of the account, as its owner sees them: the whole app (session lookup,
// data, rendering) through `app.request`. The first request of each page is the cold one.
const env = { ADMIN_TOKEN: "bench-admin-token-0123456789abcdef", KV_PATH: path };
const router = createApp({ kv, config: loadConfig(env), env, log: silentLogger, now: () => now });
const { token } = await createSession(kv, { kind: "user", user_id: userId, account_id: ACCT }, now);
const pages: [string, string][] = [
  ["Overview", "/dashboard"],
  ["Usage (30 days, default)", "/dashboard/usage"],
  ["Usage (90 days)", "/dashboard/usage?period=90d"],
  ["Usage (90 days, by key)", "/dashboard/usage?period=90d&group_by=key"],
  ["Keys", "/dashboard/keys"],
  ["Audit", "/dashboard/audit"],
  ["Settings > Billing", "/dashboard/settings/billing"],
];
const RUNS = Number(Deno.env.get("PAGE_RUNS") ?? 21);
const p95 = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.ceil(xs.length * 0.95) - 1];
async function dropDigests(): Promise<number> {
  let dropped = 0;
  for await (const e of kv.list({ prefix: ["rollup_digest", ACCT] })) {
    await kv.delete(e.key);
    dropped++;
  }
  return dropped;
}
/** Times every page: its first request, then RUNS more for the median and p95. */
async function timePages(): Promise<Record<string, unknown>[]> {
  const out: Record<string, unknown>[] = [];
  for (const [name, url] of pages) {
    const times: number[] = [];
    let html = 0;
    for (let i = 0; i <= RUNS; i++) {
      const t = performance.now();
      const res = await router.app.request(`http://127.0.0.1${url}`, {
        headers: { cookie: `__Host-session=${token}` },
      });
      const body = await res.text();
      times.push(performance.now() - t);
      if (res.status !== 200) throw new Error(`${url}: ${res.status} ${body.slice(0, 200)}`);
      html = body.length;
    }
    const [first, ...rest] = times;
    const r1 = (x: number) => Math.round(x * 10) / 10;
    out.push({
      page: name,
      first_ms: r1(first),
      median_ms: r1(median(rest)),
      p95_ms: r1(p95(rest)),
      html_kb: Math.round(html / 1024),
    });
  }
  return out;
}
// Cold: the digests the queries above built are dropped, so each page's first request is an
// account's first view of that page with nothing digested (pages run in this order, and a later
// page finds the digests an earlier one wrote, as it would in use).
console.log(`dropped ${await dropDigests()} digests before the pages (cold)`);
const pageResults = await timePages();
console.table(pageResults);
// In use: the nightly cron (`warmUsageDigests`) has digested the closed days before the first view.
await dropDigests();
const warmT = performance.now();
await warmUsageDigests(kv, now);
console.log(
  `nightly warm-up of the account's digests: ${(performance.now() - warmT).toFixed(0)} ms`,
);
const warmedPages = await timePages();
console.table(warmedPages);
await router.close();

kv.close();
if (Deno.env.get("KEEP") || reuse) console.log(`KV kept at ${path}`);
else await Deno.remove(dir!, { recursive: true });
