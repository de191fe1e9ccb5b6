/**
 * `deno task bench`: the same load, in one run on loopback, against (a) a fake OpenAI upstream
 * directly, (b) a bare pass-through Hono proxy on Deno, (c) the router with full billing, one hot
 * account and 100 accounts, and (d) the Portkey gateway from npm; non-streaming and streaming, at
 * concurrency 32 and 128. Prints requests/s, p50/p99 latency, CPU per request of the gateway
 * process, the ratios to the baselines of the same run, how long the ledger takes to catch up
 * after each load on the router, and whether the books balance at the end. Then, at concurrency 1,
 * direct, bare proxy and router hot once more: the router's added p50/p99 latency, unloaded.
 *
 * Each load is cut into rounds (`--rounds`, 4 by default): every target in turn for a slice of
 * the run, round after round, so that the machine's drift over a run (on a shared machine the same
 * target's throughput moves by up to 2.5× within minutes) falls on every target alike. After each
 * of a router's slices its ledger catches up before the next target's: that recording's CPU is
 * charged to the slice, its time is not. A target's figures are over all its slices: requests/s
 * from the sums, p50 the median of the slices' p50s, p99 the largest of their p99s, the ledger's
 * catch-up the slowest; the report also shows each router's ratio to the bare proxy round by round.
 *
 * Flags: --quick (short runs), --seconds=N, --rounds=N, --no-portkey, --only=json|sse,
 * --loadgen=wrk|deno. Results are also written to bench/results/latest.json.
 */
import type { LoadResult, LoadSpec } from "./loadgen.ts";
import { type Row, summarize } from "./report.ts";
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
  runBench,
  runDenoLoad,
  runWrk,
  sleep,
  start,
  successRate,
  UPSTREAM_KEY,
} from "./procs.ts";

let tmp = "";

const PORTKEY_VERSION = "1.15.2";
const PORTKEY_DIR = `${BENCH}.portkey`;
const SPREAD_ACCOUNTS = 100;
const CONCURRENCY = [32, 128];
/** Targets also measured unloaded, at concurrency 1: the router's own added latency. */
const UNLOADED = ["direct", "bare proxy", "router hot"];

const args = new Set(Deno.args);
const flag = (name: string) =>
  Deno.args.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3);
const quick = args.has("--quick") || Deno.env.get("BENCH_QUICK") === "1";
const seconds = Number(flag("seconds") ?? Deno.env.get("BENCH_SECONDS") ?? (quick ? 3 : 8));
const warmupSeconds = quick ? 1 : 2;
const rounds = Math.max(
  1,
  Number(flag("rounds") ?? Deno.env.get("BENCH_ROUNDS") ?? (quick ? 3 : 4)),
);
/** Whole seconds per slice (wrk's unit): the run shared out among the rounds. */
const sliceSeconds = Math.max(1, Math.round(seconds / rounds));
const modes = (flag("only") ? [flag("only")] : ["json", "sse"]) as ("json" | "sse")[];

// ---------------------------------------------------------------------------------------------
// Targets

/** One load of chat completions on a target. */
function loadSpec(
  t: Target,
  mode: "json" | "sse",
  concurrency: number,
  durationMs: number,
): LoadSpec {
  return {
    url: `${t.url}/v1/chat/completions`,
    body: chatBody(t.model, mode),
    tokens: t.tokens,
    headers: t.headers,
    concurrency,
    durationMs,
  };
}

/** A load's figures as a report row (without CPU, which only some loads measure). */
function rowOf(
  t: Target,
  mode: "json" | "sse",
  concurrency: number,
  slices: LoadResult[],
): Row {
  const r = merged(slices);
  return {
    target: t.name,
    mode,
    concurrency,
    // Only successful replies count: a gateway answering errors fast is not fast.
    rps: successRate(r),
    rounds_rps: slices.map(successRate),
    p50_ms: r.p50_us / 1000,
    p99_ms: r.p99_us / 1000,
    errors: r.errors.connect + r.errors.read + r.errors.write + r.errors.status +
      r.errors.timeout,
    requests: r.requests,
    cpu_us_per_request: null,
  };
}

interface Target {
  name: string;
  /** The process whose CPU is charged to the gateway (none for direct). */
  proc: Proc | null;
  url: string;
  model: string;
  tokens: string[];
  headers: Record<string, string>;
  /** Present on router targets: how to check the books. */
  router?: Proc;
}

async function startRouter(name: string, upstream: Proc): Promise<Proc> {
  const port = freePort();
  const flags = (Deno.env.get("BENCH_ROUTER_FLAGS") ?? "").split(" ").filter(Boolean);
  return await start(name, Deno.execPath(), ["run", "-A", ...flags, "main.ts"], {
    port,
    readyPath: "/readyz",
    env: {
      PORT: String(port),
      LISTEN_HOST: "127.0.0.1",
      KV_PATH: `${tmp}/${name}.kv`,
      ADMIN_TOKEN,
      OPENAI_API_KEY: UPSTREAM_KEY,
      OPENAI_BASE_URL: `${upstream.url}/v1`,
    },
  });
}

/** The routers' KV files, opened here too: the outbox is watched in them directly. */
const routerKvs = new Map<string, Deno.Kv>();

/**
 * How long after the load the ledger caught up: the router's outbox (usage events not yet turned
 * into ledger, audit and rollup rows) is watched in its KV file every 10 ms until empty; then the
 * books check (`GET /v1/admin/verify`) must find nothing pending and the books balanced. The books
 * check itself sums every ledger row, so it takes longer as a run goes on: polling it instead would
 * measure its own duration more than the ledger's.
 */
async function catchUp(router: Proc, loadEnded: number, onEmpty?: () => Promise<void>) {
  let kv = routerKvs.get(router.name);
  if (!kv) routerKvs.set(router.name, kv = await Deno.openKv(`${tmp}/${router.name}.kv`));
  let previous = loadEnded;
  for (;;) {
    const looked = performance.now();
    const [left] = await Array.fromAsync(kv.list({ prefix: ["outbox"] }, { limit: 1 }));
    if (!left) {
      await onEmpty?.();
      // Requests cut off by the end of the load may still settle: the books check must agree.
      const v = await admin(router, "GET", "/v1/admin/verify");
      const answered = performance.now();
      if (v.pending_events === 0 && v.ok) {
        return {
          caught_up_ms: Math.max(0, Math.round(looked - loadEnded)),
          resolution_ms: Math.round(looked - previous),
          verify_ms: Math.round(answered - looked),
        };
      }
    }
    if (looked - loadEnded > 60_000) {
      throw new Error(`${router.name}: the ledger did not catch up in 60 s`);
    }
    previous = looked;
    await sleep(10);
  }
}

// ---------------------------------------------------------------------------------------------

async function ensurePortkey(): Promise<string | null> {
  const entry = `${PORTKEY_DIR}/node_modules/@portkey-ai/gateway/build/start-server.js`;
  const installed = await Deno.readTextFile(
    `${PORTKEY_DIR}/node_modules/@portkey-ai/gateway/package.json`,
  ).then((t) => JSON.parse(t).version, () => null);
  if (installed === PORTKEY_VERSION) return entry;
  console.log(`installing @portkey-ai/gateway@${PORTKEY_VERSION} into bench/.portkey …`);
  await Deno.mkdir(PORTKEY_DIR, { recursive: true });
  const r = await new Deno.Command("npm", {
    args: [
      "install",
      "--prefix",
      PORTKEY_DIR,
      "--no-audit",
      "--no-fund",
      "--loglevel=error",
      `@portkey-ai/gateway@${PORTKEY_VERSION}`,
    ],
    stdout: "inherit",
    stderr: "inherit",
  }).output().catch(() => null);
  return r?.code === 0 ? entry : null;
}

async function main() {
  tmp = await Deno.makeTempDir({ prefix: "router-bench-" });
  const useWrk = flag("loadgen") !== "deno" && Deno.env.get("BENCH_LOADGEN") !== "deno" &&
    await haveWrk();
  const load = useWrk ? (spec: LoadSpec) => runWrk(spec, tmp) : runDenoLoad;
  const loadavg = () => Deno.loadavg().map((n) => n.toFixed(1)).join(" ");
  console.log(`load average before the run: ${loadavg()}`);
  console.log(
    `load generator: ${useWrk ? "wrk (1 thread)" : "deno (bench/loadgen.ts)"}; ` +
      `${seconds} s per run after a ${warmupSeconds} s warm-up, in ${rounds} rounds of ` +
      `${sliceSeconds} s per target; ${Deno.osRelease()}, ` +
      `${navigator.hardwareConcurrency} cores, deno ${Deno.version.deno}`,
  );

  const upPort = freePort();
  const upstream = await start("upstream", "node", [`${BENCH}upstream.mjs`, String(upPort)], {
    port: upPort,
    readyPath: "/v1/models",
  });
  const proxyPort = freePort();
  const proxy = await start("bare-proxy", Deno.execPath(), [
    "run",
    "-A",
    `${BENCH}proxy.ts`,
    String(proxyPort),
  ], { port: proxyPort, env: { UPSTREAM: upstream.url } });

  const hot = await startRouter("router-hot", upstream);
  const spread = await startRouter("router-spread", upstream);
  const hotKeys = [await account(hot, 0)];
  const spreadKeys: string[] = [];
  for (let i = 0; i < SPREAD_ACCOUNTS; i += 10) {
    spreadKeys.push(
      ...await Promise.all(
        Array.from({ length: Math.min(10, SPREAD_ACCOUNTS - i) }, (_, j) => account(spread, i + j)),
      ),
    );
  }

  const upstreamAuth = { authorization: `Bearer ${UPSTREAM_KEY}` };
  const targets: Target[] = [
    {
      name: "direct",
      proc: null,
      url: upstream.url,
      model: "gpt-4o-mini",
      tokens: [],
      headers: upstreamAuth,
    },
    {
      name: "bare proxy",
      proc: proxy,
      url: proxy.url,
      model: "gpt-4o-mini",
      tokens: [],
      headers: upstreamAuth,
    },
    {
      name: "router hot",
      proc: hot,
      url: hot.url,
      model: "openai/gpt-4o-mini",
      tokens: hotKeys,
      headers: {},
      router: hot,
    },
    {
      name: "router spread",
      proc: spread,
      url: spread.url,
      model: "openai/gpt-4o-mini",
      tokens: spreadKeys,
      headers: {},
      router: spread,
    },
  ];

  if (!args.has("--no-portkey")) {
    const entry = await ensurePortkey();
    if (entry) {
      const port = freePort();
      const portkey = await start("portkey", "node", [entry, `--port=${port}`, "--headless"], {
        port,
        env: { NODE_ENV: "production", PATH: Deno.env.get("PATH") ?? "" },
      });
      targets.push({
        name: "portkey",
        proc: portkey,
        url: portkey.url,
        model: "gpt-4o-mini",
        tokens: [],
        headers: {
          ...upstreamAuth,
          "x-portkey-provider": "openai",
          "x-portkey-custom-host": `${upstream.url}/v1`,
        },
      });
    } else console.log("portkey could not be installed: skipped");
  }

  const rows: Row[] = [];
  const unloaded: Row[] = [];
  for (const mode of modes) {
    for (const t of targets) {
      await load(loadSpec(t, mode, CONCURRENCY[0], warmupSeconds * 1000));
      if (t.router) await catchUp(t.router, performance.now());
    }
    for (const c of CONCURRENCY) {
      // All targets under one load, in turn, round after round, so that ratios compare like with
      // like: each router waits for its ledger to catch up before the next target's slice.
      const slices = new Map(targets.map((t) => [t, [] as LoadResult[]]));
      const cpu = new Map(targets.map((t) => [t, 0]));
      const ledgers = new Map<Target, NonNullable<Row["ledger"]>[]>();
      for (let round = 0; round < rounds; round++) {
        for (const t of targets) {
          const cpu0 = t.proc ? await cpuMicros(t.proc.pid) : null;
          const r = await load(loadSpec(t, mode, c, sliceSeconds * 1000));
          let cpu1 = t.proc ? await cpuMicros(t.proc.pid) : null;
          if (t.router) {
            // The recording a slice leaves behind is charged to it in CPU (up to the books check,
            // which is the benchmark's), not in time: the slice's clock stops with its load. (In
            // time it would charge each slice the end of a load, when the gathered events and
            // the requests cut off are recorded: up to a second at c=128 here.)
            const pid = t.router.pid;
            const caught = await catchUp(t.router, performance.now(), async () => {
              cpu1 = await cpuMicros(pid);
            });
            ledgers.set(t, [...ledgers.get(t) ?? [], caught]);
          }
          slices.get(t)!.push(r);
          if (cpu0 !== null && cpu1 !== null) cpu.set(t, cpu.get(t)! + cpu1 - cpu0);
        }
      }
      for (const t of targets) {
        const row = rowOf(t, mode, c, slices.get(t)!);
        row.cpu_us_per_request = t.proc && row.requests > 0 ? cpu.get(t)! / row.requests : null;
        const caught = ledgers.get(t);
        if (caught) row.ledger = caught.reduce((a, b) => b.caught_up_ms > a.caught_up_ms ? b : a);
        rows.push(row);
        console.log(formatRow(row));
        if (row.errors > 0) {
          console.log(`  errors: ${JSON.stringify(merged(slices.get(t)!).errors)}`);
        }
      }
    }
    // Unloaded: one request at a time, so latency is the path's own, not queueing (at a fixed
    // saturating concurrency p50 is just concurrency ÷ throughput). Also in rounds.
    const alone = targets.filter((t) => UNLOADED.includes(t.name));
    const aloneSlices = new Map(alone.map((t) => [t, [] as LoadResult[]]));
    for (let round = 0; round < rounds; round++) {
      for (const t of alone) {
        aloneSlices.get(t)!.push(await load(loadSpec(t, mode, 1, sliceSeconds * 1000)));
        if (t.router) await catchUp(t.router, performance.now());
      }
    }
    for (const t of alone) {
      const row = rowOf(t, mode, 1, aloneSlices.get(t)!);
      unloaded.push(row);
      console.log(formatRow(row));
    }
  }

  const books: Record<string, unknown> = {};
  for (const r of [hot, spread]) {
    const v = await admin(r, "GET", "/v1/admin/verify");
    books[r.name] = v;
  }
  const report = summarize(rows, books);
  console.log("\n" + report.text);
  console.log("\n" + unloadedText(unloaded));
  console.log(`load average after the run: ${loadavg()}`);
  await Deno.mkdir(`${BENCH}results`, { recursive: true });
  await Deno.writeTextFile(
    `${BENCH}results/latest.json`,
    JSON.stringify(
      {
        at: new Date().toISOString(),
        seconds,
        rounds,
        loadavg: loadavg(),
        rows,
        unloaded,
        books,
      },
      null,
      2,
    ) + "\n",
  );
  return report.booksOk;
}

/** The c=1 table and the router's added latency over the bare proxy, per mode. */
function unloadedText(rows: Row[]): string {
  const lines = [
    "Unloaded (c=1, one request at a time):",
    "| mode | target | req/s | p50 ms | p99 ms | added p50 ms | added p99 ms |",
    "| --- | --- | --- | --- | --- | --- | --- |",
  ];
  for (const r of rows) {
    const bare = rows.find((b) => b.mode === r.mode && b.target === "bare proxy");
    const added = (a: number, b: number | undefined) =>
      r.target.startsWith("router") && b !== undefined ? (a - b).toFixed(2) : "-";
    lines.push(
      `| ${r.mode} | ${r.target} | ${r.rps.toFixed(0)} | ${r.p50_ms.toFixed(2)} | ${
        r.p99_ms.toFixed(2)
      } | ${added(r.p50_ms, bare?.p50_ms)} | ${added(r.p99_ms, bare?.p99_ms)} |${
        r.errors ? ` ${r.errors} errors` : ""
      }`,
    );
  }
  return lines.join("\n");
}

function formatRow(r: Row): string {
  const ledger = r.ledger ? `  ledger caught up ${r.ledger.caught_up_ms} ms` : "";
  const cpu = r.cpu_us_per_request === null
    ? ""
    : `  ${r.cpu_us_per_request.toFixed(0)} µs CPU/req`;
  return `${r.mode.padEnd(4)} c=${String(r.concurrency).padEnd(3)} ${r.target.padEnd(13)} ` +
    `${r.rps.toFixed(0).padStart(6)} req/s  p50 ${r.p50_ms.toFixed(2)} ms  p99 ${
      r.p99_ms.toFixed(2)
    } ms${cpu}${ledger}${r.errors ? `  ${r.errors} errors` : ""}`;
}

await runBench(main, async () => {
  for (const kv of routerKvs.values()) kv.close();
  routerKvs.clear();
  if (tmp) await Deno.remove(tmp, { recursive: true }).catch(() => {});
});
