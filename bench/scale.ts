/**
 * `deno task bench:scale`: does the router grow with its processes? 1, 2 and 3 router processes
 * (`main.ts`) on one KV file each group, the same total load split evenly between a group's
 * processes (one port and one wrk each, `c` connections in all), all traffic on one account (hot)
 * or spread over 100 accounts, non-streaming (json) and streaming (sse). The groups are loaded in
 * turn, round after round (`--rounds`), so that the machine's drift falls on every group alike.
 * Prints req/s, p50/p99, CPU µs per request (all of a group's processes), KV commits and conflict
 * retries per request, and commits on the accounts' shared balance records per second (each
 * process's `GET /v1/admin/stats`), then the issue's targets.
 *
 * Then the remote-KV simulation: 1 and 2 processes whose every KV call waits 0, 5 or 20 ms
 * (KV_SIMULATED_LATENCY_MS), one request at a time: the added time to first byte of a stream and
 * the added latency of a json request, over the same group shape without the delay.
 *
 * Flags: --quick, --seconds=N (per group and load), --rounds=N, --c=N (connections, default 64),
 * --only=json|sse, --shape=hot|spread, --no-latency, --latency-only, --env=NAME=VALUE (given to
 * every router, e.g. --env=BALANCE_LEASES=off), --independent (a control, hot shape only: each
 * process on a KV file and account of its own, sharing nothing: the most N processes can serve on
 * this machine), --rpm=N (every key with rate_limit_rpm N: such keys always take the shared
 * path), --compare (also 1 and 2 processes with BALANCE_LEASES=off, in the same rounds: the same
 * run with and without leases), --controls (also, in the same rounds, 2 processes sharing nothing
 * and 2 processes on one KV file with an account each: what the machine and what the shared file
 * allow, against which the hot account's 2 processes are read). Results also go to
 * bench/results/scale.json.
 */
import type { LoadResult, LoadSpec } from "./loadgen.ts";
import {
  account,
  admin,
  ADMIN_TOKEN,
  BENCH,
  chatBody,
  cpuMicros,
  freePort,
  haveWrk,
  merged,
  type Proc,
  procs,
  runBench,
  runDenoLoad,
  runWrk,
  sleep,
  start,
  successRate,
  together,
  UPSTREAM_KEY,
} from "./procs.ts";

const args = new Set(Deno.args);
const flag = (name: string) =>
  Deno.args.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3);
const quick = args.has("--quick");
const seconds = Number(flag("seconds") ?? (quick ? 6 : 12));
const rounds = Math.max(1, Number(flag("rounds") ?? (quick ? 3 : 4)));
const sliceSeconds = Math.max(1, Math.round(seconds / rounds));
const connections = Number(flag("c") ?? 64);
const modes = (flag("only") ? [flag("only")] : ["json", "sse"]) as ("json" | "sse")[];
const shapes =
  (args.has("--independent") ? ["hot"] : flag("shape") ? [flag("shape")] : ["hot", "spread"]) as (
    | "hot"
    | "spread"
  )[];
const PROCESSES = [1, 2, 3];
const SPREAD_ACCOUNTS = 100;
const LATENCIES = [0, 5, 20];
const LATENCY_PROCESSES = [1, 2];
const latencyRequests = quick ? 60 : 150;
const independent = args.has("--independent");
const rpm = flag("rpm");
const keySpec = rpm ? { rate_limit_rpm: Number(rpm) } : {};
const extraEnv: Record<string, string> = Object.fromEntries(
  Deno.args.filter((a) => a.startsWith("--env=")).map((a) => {
    const [k, ...v] = a.slice(6).split("=");
    return [k, v.join("=")];
  }),
);

let tmp = "";

/**
 * How a group's processes share: one KV file and one account (the hot account under test), a KV
 * file and an account each (a control: nothing shared), or one KV file with an account each (a
 * control: only the file shared).
 */
type Layout = "shared" | "independent" | "split";
/** The layout of the groups under test (the controls aside). */
const BASE_LAYOUT: Layout = independent ? "independent" : "shared";

interface Group {
  name: string;
  /** False for a group run with BALANCE_LEASES=off (--compare). */
  leases: boolean;
  layout: Layout;
  procs: Proc[];
  kvPath: string;
  keys: { hot: string[]; spread: string[] };
}

/** `n` router processes on one KV file, each on its own port. */
async function startGroup(
  name: string,
  n: number,
  upstream: Proc,
  env: Record<string, string> = {},
  layout: Layout = BASE_LAYOUT,
): Promise<Group> {
  const kvPath = `${tmp}/${name}.kv`;
  const ps: Proc[] = [];
  for (let i = 0; i < n; i++) {
    const port = freePort();
    ps.push(
      await start(`${name}-${i}`, Deno.execPath(), ["run", "-A", "main.ts"], {
        port,
        // Ready once migrations ran and background work started (`/healthz` answers before).
        readyPath: "/readyz",
        env: {
          PORT: String(port),
          LISTEN_HOST: "127.0.0.1",
          KV_PATH: layout === "independent" ? `${kvPath}.${i}` : kvPath,
          ADMIN_TOKEN,
          OPENAI_API_KEY: UPSTREAM_KEY,
          OPENAI_BASE_URL: `${upstream.url}/v1`,
          // A group waits through the other groups' slices: its leases are kept meanwhile, as
          // under a sustained load, so that the rounds measure steady serving, not first requests.
          LEASE_IDLE_MS: "60000",
          ...extraEnv,
          ...env,
        },
      }),
    );
  }
  return {
    name,
    leases: (env.BALANCE_LEASES ?? extraEnv.BALANCE_LEASES) !== "off",
    layout,
    procs: ps,
    kvPath,
    keys: { hot: [], spread: [] },
  };
}

async function addAccounts(g: Group, spread: boolean) {
  if (g.layout !== "shared") {
    // One account per process, in the process's own KV file or all in the group's one.
    g.keys.hot = await Promise.all(g.procs.map((p, i) => account(p, i, "1000", keySpec)));
    return;
  }
  g.keys.hot = [await account(g.procs[0], 0, "1000", keySpec)];
  if (!spread) return;
  for (let i = 0; i < SPREAD_ACCOUNTS; i += 10) {
    g.keys.spread.push(
      ...await Promise.all(
        Array.from(
          { length: Math.min(10, SPREAD_ACCOUNTS - i) },
          (_, j) => account(g.procs[0], 1 + i + j, "1000", keySpec),
        ),
      ),
    );
  }
}

interface Counters {
  cpuUs: number;
  kvCommits: number;
  kvConflicts: number;
  kvLocked: number;
  actorCommits: number;
  actorConflicts: number;
  balanceCommits: number;
  leaseReserves: number;
  sharedReserves: number;
  takes: number;
  topups: number;
  shrinks: number;
  returns: number;
  recalls: number;
}

/** The group's counters summed over its processes. */
async function counters(g: Group): Promise<Counters> {
  const out: Counters = {
    cpuUs: 0,
    kvCommits: 0,
    kvConflicts: 0,
    kvLocked: 0,
    actorCommits: 0,
    actorConflicts: 0,
    balanceCommits: 0,
    leaseReserves: 0,
    sharedReserves: 0,
    takes: 0,
    topups: 0,
    shrinks: 0,
    returns: 0,
    recalls: 0,
  };
  for (const p of g.procs) {
    const [cpu, s] = await Promise.all([cpuMicros(p.pid), admin(p, "GET", "/v1/admin/stats")]);
    const a = s.actors;
    out.cpuUs += cpu ?? 0;
    out.kvCommits += s.kv.commits;
    out.kvConflicts += s.kv.conflicts;
    out.kvLocked += s.kv.locked;
    out.actorCommits += a.commits;
    out.actorConflicts += a.conflicts;
    out.balanceCommits += a.balance_commits;
    out.leaseReserves += a.lease_reserves ?? 0;
    out.sharedReserves += a.shared_reserves ?? 0;
    out.takes += a.takes ?? 0;
    out.topups += a.topups ?? 0;
    out.shrinks += a.shrinks ?? 0;
    out.returns += a.returns ?? 0;
    out.recalls += a.recalls ?? 0;
  }
  return out;
}

/** a + sign × b, field by field. */
const add = (a: Counters, b: Counters, sign = 1): Counters =>
  Object.fromEntries(
    Object.entries(a).map(([k, v]) => [k, v + sign * b[k as keyof Counters]]),
  ) as unknown as Counters;

const kvs = new Map<string, Deno.Kv>();

/** Waits until the group's outbox is empty: the ledger caught up with the load. */
async function catchUp(g: Group) {
  const paths = g.layout === "independent" ? g.procs.map((_, i) => `${g.kvPath}.${i}`) : [g.kvPath];
  for (const path of paths) {
    let kv = kvs.get(path);
    if (!kv) kvs.set(path, kv = await Deno.openKv(path));
    const end = Date.now() + 60_000;
    for (;;) {
      const [left] = await Array.fromAsync(kv.list({ prefix: ["outbox"] }, { limit: 1 }));
      if (!left) break;
      if (Date.now() > end) throw new Error(`${g.name}: the ledger did not catch up in 60 s`);
      await sleep(20);
    }
  }
}

export interface ScaleRow {
  mode: "json" | "sse";
  shape: "hot" | "spread";
  processes: number;
  leases: boolean;
  layout: Layout;
  rps: number;
  rounds_rps: number[];
  p50_ms: number;
  p99_ms: number;
  cpu_us_per_request: number;
  kv_commits_per_request: number;
  /** Commits that failed a check, and that met another process's write lock on the KV file. */
  conflicts_per_request: number;
  locked_per_request: number;
  /** Reserves granted from a lease with no commit, and that took the shared path. */
  lease_reserves: number;
  shared_reserves: number;
  /** Leases taken, topped up, shrunk, returned; recalls written. */
  lease_events: string;
  actor_commits_per_request: number;
  balance_commits_per_s: number;
  errors: number;
}

/** One slice: the group's processes loaded at once, `connections` split evenly between them. */
async function slice(
  g: Group,
  mode: "json" | "sse",
  keys: string[],
  ms: number,
  load: (s: LoadSpec) => Promise<LoadResult>,
) {
  const n = g.procs.length;
  const specs = g.procs.map((p, i): LoadSpec => ({
    url: `${p.url}/v1/chat/completions`,
    body: chatBody("openai/gpt-4o-mini", mode),
    // Each process sees every account of the shape (its own, in a control).
    tokens: g.layout === "shared" ? keys : [keys[i]],
    headers: {},
    concurrency: Math.floor(connections / n) + (i < connections % n ? 1 : 0),
    durationMs: ms,
  }));
  return together(await Promise.all(specs.map(load)));
}

async function throughput(
  allGroups: Group[],
  load: (s: LoadSpec) => Promise<LoadResult>,
): Promise<ScaleRow[]> {
  const rows: ScaleRow[] = [];
  for (const mode of modes) {
    for (const shape of shapes) {
      // The controls serve the hot shape only (an account per process).
      const groups = allGroups.filter((g) => shape === "hot" || g.layout === "shared");
      for (const g of groups) {
        await slice(g, mode, g.keys[shape], 1000, load);
        await catchUp(g);
      }
      const results = new Map(groups.map((g) => [g, [] as LoadResult[]]));
      const spent = new Map<Group, Counters>();
      const elapsed = new Map(groups.map((g) => [g, 0]));
      for (let round = 0; round < rounds; round++) {
        // Each round starts with another group: no group always follows the same one.
        for (let k = 0; k < groups.length; k++) {
          const g = groups[(round + k) % groups.length];
          const before = await counters(g);
          const t0 = performance.now();
          const r = await slice(g, mode, g.keys[shape], sliceSeconds * 1000, load);
          const loadMs = performance.now() - t0;
          // The recording a slice leaves behind is charged to it in CPU and commits, not in time.
          await catchUp(g);
          const after = await counters(g);
          const c = add(after, before, -1);
          spent.set(g, spent.has(g) ? add(spent.get(g)!, c) : c);
          elapsed.set(g, elapsed.get(g)! + loadMs);
          results.get(g)!.push(r);
        }
      }
      for (const g of groups) {
        const all = merged(results.get(g)!);
        const c = spent.get(g)!;
        const n = all.requests || 1;
        const row: ScaleRow = {
          mode,
          shape,
          processes: g.procs.length,
          leases: g.leases,
          layout: g.layout,
          rps: successRate(all),
          rounds_rps: results.get(g)!.map(successRate),
          p50_ms: all.p50_us / 1000,
          p99_ms: all.p99_us / 1000,
          cpu_us_per_request: c.cpuUs / n,
          kv_commits_per_request: c.kvCommits / n,
          conflicts_per_request: c.kvConflicts / n,
          locked_per_request: c.kvLocked / n,
          lease_reserves: c.leaseReserves,
          shared_reserves: c.sharedReserves,
          lease_events: `${c.takes}/${c.topups}/${c.shrinks}/${c.returns}/${c.recalls}`,
          actor_commits_per_request: c.actorCommits / n,
          balance_commits_per_s: c.balanceCommits / (elapsed.get(g)! / 1000),
          errors: all.errors.connect + all.errors.read + all.errors.write + all.errors.status +
            all.errors.timeout,
        };
        rows.push(row);
        console.log(formatRow(row));
      }
    }
  }
  return rows;
}

const f = (x: number, d = 2) => x.toFixed(d);

function formatRow(r: ScaleRow): string {
  return `${r.mode.padEnd(4)} ${r.shape.padEnd(6)} ${r.processes}p${r.leases ? "" : " off"}` +
    `${r.layout === "shared" ? "" : ` ${r.layout}`} ` +
    `${f(r.rps, 0).padStart(6)} req/s  p50 ${f(r.p50_ms)} ms  p99 ${f(r.p99_ms)} ms  ` +
    `${f(r.cpu_us_per_request, 0)} µs CPU/req  ${f(r.kv_commits_per_request, 3)} commits/req  ` +
    `${f(r.conflicts_per_request, 4)} conflicts/req  ${f(r.locked_per_request, 4)} locked/req  ` +
    `${
      f(r.balance_commits_per_s, 1)
    } balance commits/s  reserves lease/shared ${r.lease_reserves}/` +
    `${r.shared_reserves}  take/topup/shrink/return/recall ${r.lease_events}` +
    `${r.errors ? `  ${r.errors} errors` : ""}`;
}

function table(rows: ScaleRow[]): string {
  const lines = [
    "| mode | shape | processes | layout | leases | req/s | ÷ 1 process | p50 ms | p99 ms | CPU µs/req | KV commits/req | conflicts/req | locked/req | balance commits/s |",
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
  ];
  for (const r of rows) {
    // Against one process of the same run with leases (the router as configured).
    const one = rows.find((o) =>
      o.mode === r.mode && o.shape === r.shape && o.processes === 1 && o.leases &&
      o.layout === BASE_LAYOUT
    );
    lines.push(
      `| ${r.mode} | ${r.shape} | ${r.processes} | ${r.layout} | ${r.leases ? "on" : "off"} | ${
        f(r.rps, 0)
      } | ${one ? f(r.rps / one.rps, 3) : "-"} | ${f(r.p50_ms)} | ${f(r.p99_ms)} | ${
        f(r.cpu_us_per_request, 0)
      } | ${f(r.kv_commits_per_request, 3)} | ${f(r.conflicts_per_request, 4)} | ${
        f(r.locked_per_request, 4)
      } | ${f(r.balance_commits_per_s, 1)} |${r.errors ? ` ${r.errors} errors` : ""}`,
    );
  }
  return lines.join("\n");
}

/** The issue's targets for the hot account, met or not. */
function targets(rows: ScaleRow[]): string {
  const lines = ["Targets (hot account, same run):"];
  const verdict = (ok: boolean) => ok ? "met" : "NOT met";
  for (const mode of modes) {
    const hot = (n: number, layout: Layout = BASE_LAYOUT) =>
      rows.find((r) =>
        r.mode === mode && r.shape === "hot" && r.processes === n && r.leases &&
        r.layout === layout
      );
    const [one, two, three] = [hot(1), hot(2), hot(3)];
    if (!one || !two) continue;
    const ratio = two.rps / one.rps;
    const rounds = one.rounds_rps.map((x, i) => f((two.rounds_rps[i] ?? 0) / x, 3)).join(", ");
    lines.push(
      `  ${mode}: 2 processes ÷ 1 = ${f(ratio, 3)} (≥ 1.0): ${
        verdict(ratio >= 1)
      }; by round ${rounds}`,
    );
    for (const layout of ["independent", "split"] as const) {
      const control = independent ? undefined : hot(2, layout);
      if (!control) continue;
      const of = two.rps / control.rps;
      const byRound = two.rounds_rps.map((x, i) => f(x / (control.rounds_rps[i] || 1), 3));
      lines.push(
        `  ${mode}: 2 processes on the hot account ÷ 2 ${
          layout === "independent" ? "sharing nothing" : "on one KV file, an account each"
        } = ${f(of, 3)}${
          layout === "independent" ? ` (re-based target ≥ 0.9): ${verdict(of >= 0.9)}` : ""
        }; by round ${byRound.join(", ")}`,
      );
    }
    const worst = Math.max(
      ...[one, two, three].filter((r) => r).map((r) => r!.conflicts_per_request),
    );
    lines.push(
      `  ${mode}: conflict retries per request, worst of 1-3 processes = ${f(worst, 4)} (< 0.01): ${
        verdict(worst < 0.01)
      }`,
    );
    const p99 = two.p99_ms / one.p99_ms;
    lines.push(
      `  ${mode}: p99 2 processes ÷ 1 = ${f(p99, 2)} (≤ 1.5): ${verdict(p99 <= 1.5)}`,
    );
    const bal = [one, two, three].filter((r) => r).map((r) => f(r!.balance_commits_per_s, 1));
    lines.push(
      `  ${mode}: balance commits/s with 1, 2, 3 processes = ${bal.join(", ")} ` +
        `(req/s ${[one, two, three].filter((r) => r).map((r) => f(r!.rps, 0)).join(", ")}): flat ` +
        `is ${
          verdict(
            Math.max(...[two, three].filter((r) => r).map((r) => r!.balance_commits_per_s)) <=
              1.5 * Math.max(one.balance_commits_per_s, 2),
          )
        }`,
    );
  }
  return lines.join("\n");
}

interface LatencyRow {
  mode: "json" | "sse";
  latency_ms: number;
  processes: number;
  /** Time to the first byte of the body (streams) or to the whole reply (json), p50/p90. */
  p50_ms: number;
  p90_ms: number;
  requests: number;
  errors: number;
}

/** One request; the time to its first body byte (sse) or to its whole body (json), in ms. */
async function timed(url: string, key: string, mode: "json" | "sse"): Promise<number | null> {
  const t0 = performance.now();
  const res = await fetch(`${url}/v1/chat/completions`, {
    method: "POST",
    headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
    body: chatBody("openai/gpt-4o-mini", mode),
  });
  const reader = res.body!.getReader();
  const first = await reader.read();
  const ttfb = performance.now() - t0;
  let done = first.done;
  while (!done) done = (await reader.read()).done;
  const total = performance.now() - t0;
  if (res.status !== 200) return null;
  return mode === "sse" ? ttfb : total;
}

const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(s.length * p))];
};

/** Unloaded requests, one at a time, against groups whose KV calls are delayed. */
async function latency(upstream: Proc): Promise<LatencyRow[]> {
  const groups: { g: Group; ms: number }[] = [];
  for (const ms of LATENCIES) {
    for (const n of LATENCY_PROCESSES) {
      const g = await startGroup(`lat-${ms}ms-${n}p`, n, upstream, {
        KV_SIMULATED_LATENCY_MS: String(ms),
      });
      await addAccounts(g, false);
      groups.push({ g, ms });
    }
  }
  const rows: LatencyRow[] = [];
  for (const mode of modes) {
    const samples = new Map(groups.map((x) => [x, [] as number[]]));
    const errors = new Map(groups.map((x) => [x, 0]));
    // Warm-up: every process of every group serves the account a few times.
    for (const x of groups) {
      for (let i = 0; i < 4 * x.g.procs.length; i++) {
        await timed(x.g.procs[i % x.g.procs.length].url, x.g.keys.hot[0], mode);
      }
    }
    const per = Math.ceil(latencyRequests / rounds);
    for (let round = 0; round < rounds; round++) {
      for (const x of groups) {
        for (let i = 0; i < per; i++) {
          // Requests alternate between the group's processes.
          const t = await timed(x.g.procs[i % x.g.procs.length].url, x.g.keys.hot[0], mode);
          if (t === null) errors.set(x, errors.get(x)! + 1);
          else samples.get(x)!.push(t);
        }
      }
    }
    for (const x of groups) {
      const s = samples.get(x)!;
      const row: LatencyRow = {
        mode,
        latency_ms: x.ms,
        processes: x.g.procs.length,
        p50_ms: pct(s, 0.5),
        p90_ms: pct(s, 0.9),
        requests: s.length,
        errors: errors.get(x)!,
      };
      rows.push(row);
      console.log(
        `${mode} KV +${x.ms} ms ${row.processes}p: ${mode === "sse" ? "first byte" : "reply"} p50 ${
          f(row.p50_ms)
        } ms p90 ${f(row.p90_ms)} ms${row.errors ? `  ${row.errors} errors` : ""}`,
      );
    }
  }
  for (const { g } of groups) {
    const v = await admin(g.procs[0], "GET", "/v1/admin/verify");
    if (!v.ok) throw new Error(`${g.name}: the books do not balance: ${JSON.stringify(v)}`);
  }
  return rows;
}

function latencyTable(rows: LatencyRow[]): string {
  const lines = [
    "| mode | KV round trip | processes | p50 ms | p90 ms | added p50 ms | target |",
    "| --- | --- | --- | --- | --- | --- | --- |",
  ];
  for (const r of rows) {
    const base = rows.find((b) =>
      b.mode === r.mode && b.processes === r.processes && b.latency_ms === 0
    )!;
    const added = r.p50_ms - base.p50_ms;
    const bound = r.mode === "sse" ? 3 : r.latency_ms + 3;
    const target = r.latency_ms === 0
      ? "-"
      : `≤ ${bound} ms: ${added <= bound ? "met" : "NOT met"}`;
    lines.push(
      `| ${r.mode} (${
        r.mode === "sse" ? "first byte" : "reply"
      }) | ${r.latency_ms} ms | ${r.processes} | ${f(r.p50_ms)} | ${f(r.p90_ms)} | ${
        r.latency_ms === 0 ? "-" : f(added)
      } | ${target} |${r.errors ? ` ${r.errors} errors` : ""}`,
    );
  }
  return lines.join("\n");
}

async function main(): Promise<boolean> {
  tmp = await Deno.makeTempDir({ prefix: "router-scale-" });
  const useWrk = flag("loadgen") !== "deno" && await haveWrk();
  const load = useWrk ? (s: LoadSpec) => runWrk(s, tmp) : runDenoLoad;
  const loadavg = () => Deno.loadavg().map((n) => n.toFixed(1)).join(" ");
  console.log(`load average before the run: ${loadavg()}`);
  console.log(
    `load generator: ${useWrk ? "wrk (one per router process)" : "deno"}; c=${connections} in ` +
      `all; ${seconds} s per group and load, in ${rounds} rounds of ${sliceSeconds} s; ` +
      `${navigator.hardwareConcurrency} cores, deno ${Deno.version.deno}` +
      (Object.keys(extraEnv).length ? `; router env ${JSON.stringify(extraEnv)}` : "") +
      (rpm ? `; keys with rate_limit_rpm ${rpm}` : "") +
      (independent ? "; independent processes (a KV file and account each)" : ""),
  );
  const upPort = freePort();
  const upstream = await start("upstream", "node", [`${BENCH}upstream.mjs`, String(upPort)], {
    port: upPort,
    readyPath: "/v1/models",
  });
  let rows: ScaleRow[] = [];
  let ok = true;
  if (!args.has("--latency-only")) {
    const groups: Group[] = [];
    for (const n of PROCESSES) {
      const g = await startGroup(`scale-${n}p`, n, upstream);
      await addAccounts(g, shapes.includes("spread"));
      groups.push(g);
    }
    if (args.has("--controls") && !independent) {
      for (const layout of ["independent", "split"] as const) {
        const g = await startGroup(`control-${layout}-2p`, 2, upstream, {}, layout);
        await addAccounts(g, false);
        groups.push(g);
      }
    }
    if (args.has("--compare")) {
      for (const n of [1, 2]) {
        const g = await startGroup(`scale-off-${n}p`, n, upstream, { BALANCE_LEASES: "off" });
        await addAccounts(g, shapes.includes("spread"));
        groups.push(g);
      }
    }
    rows = await throughput(groups, load);
    console.log("\n" + table(rows) + "\n\n" + targets(rows));
    console.log("\nBooks at the end (GET /v1/admin/verify):");
    for (const g of groups) {
      for (const p of g.layout === "independent" ? g.procs : [g.procs[0]]) {
        const v = await admin(p, "GET", "/v1/admin/verify");
        const balanced = v.ok && v.pending_events === 0;
        if (!balanced) ok = false;
        console.log(`  ${p.name}: ${balanced ? "balanced" : `NOT BALANCED ${JSON.stringify(v)}`}`);
      }
    }
    for (const kv of kvs.values()) kv.close();
    kvs.clear();
    // The remote-KV runs start processes of their own: these are done.
    for (const g of groups) {
      for (const p of g.procs) {
        p.child.kill("SIGTERM");
        await p.child.status;
        procs.splice(procs.indexOf(p), 1);
      }
    }
  }
  let lat: LatencyRow[] = [];
  if (!args.has("--no-latency")) {
    console.log("\nRemote KV simulated (KV_SIMULATED_LATENCY_MS), one request at a time:");
    lat = await latency(upstream);
    console.log("\n" + latencyTable(lat));
  }
  console.log(`\nload average after the run: ${loadavg()}`);
  await Deno.mkdir(`${BENCH}results`, { recursive: true });
  await Deno.writeTextFile(
    `${BENCH}results/scale.json`,
    JSON.stringify(
      { at: new Date().toISOString(), seconds, rounds, connections, env: extraEnv, rows, lat },
      null,
      2,
    ) + "\n",
  );
  return ok;
}

await runBench(main, async () => {
  for (const kv of kvs.values()) kv.close();
  if (tmp) await Deno.remove(tmp, { recursive: true }).catch(() => {});
});
