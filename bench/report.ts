/** Turns the benchmark's measurements into ratios against the baselines and the issue's targets. */

/** One measured load against one target. */
export interface Row {
  target: string;
  mode: "json" | "sse";
  concurrency: number;
  rps: number;
  /** Successful replies per second in each round's slice (see bench/gateway.ts). */
  rounds_rps?: number[];
  p50_ms: number;
  p99_ms: number;
  errors: number;
  requests: number;
  /** CPU time of the gateway process per request (none for direct). */
  cpu_us_per_request: number | null;
  /** Router targets: time from the end of the load until the books check saw no pending event. */
  ledger?: { caught_up_ms: number; resolution_ms: number; verify_ms: number };
}

/** The issue's targets. */
export const TARGETS = {
  routerOverBare: 0.4,
  p50OverheadMs: 2,
  ledgerCatchUpMs: 1000,
};

const f = (n: number, d = 2) => n.toFixed(d);

/** A router's ratio to the bare proxy round by round, when the load ran in rounds. */
function roundRatios(r: Row, bare: Row): string {
  const a = r.rounds_rps, b = bare.rounds_rps;
  if (!a || !b || a.length < 2 || a.length !== b.length) return "";
  return `; by round ${a.map((x, i) => f(x / b[i], 3)).join(", ")}`;
}

/**
 * The ratio table, the targets (met or not) and the books check of each router. `booksOk` is
 * false when any router's books do not balance or events are still pending.
 */
export function summarize(rows: Row[], books: Record<string, unknown>) {
  const lines: string[] = [];
  const find = (target: string, mode: string, c: number) =>
    rows.find((r) => r.target === target && r.mode === mode && r.concurrency === c);
  const combos = [...new Set(rows.map((r) => `${r.mode} ${r.concurrency}`))];

  lines.push(
    "| mode | c | target | req/s | ÷ direct | ÷ bare proxy | p50 ms | p99 ms | CPU µs/req | ledger caught up |",
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
  );
  for (const combo of combos) {
    const [mode, cs] = combo.split(" ");
    const c = Number(cs);
    const direct = find("direct", mode, c);
    const bare = find("bare proxy", mode, c);
    for (const r of rows.filter((r) => r.mode === mode && r.concurrency === c)) {
      lines.push(
        `| ${mode} | ${c} | ${r.target} | ${f(r.rps, 0)} | ${
          direct ? f(r.rps / direct.rps, 3) : "-"
        } | ${bare ? f(r.rps / bare.rps, 3) : "-"} | ${f(r.p50_ms)} | ${f(r.p99_ms)} | ${
          r.cpu_us_per_request === null ? "-" : f(r.cpu_us_per_request, 0)
        } | ${r.ledger ? `${r.ledger.caught_up_ms} ms` : "-"} |${
          r.errors ? ` ${r.errors} errors` : ""
        }`,
      );
    }
  }

  lines.push("", "Targets (issue 2):");
  let allMet = true;
  const verdict = (ok: boolean) => {
    if (!ok) allMet = false;
    return ok ? "met" : "NOT met";
  };
  for (const combo of combos) {
    const [mode, cs] = combo.split(" ");
    const c = Number(cs);
    const bare = find("bare proxy", mode, c);
    const direct = find("direct", mode, c);
    if (!bare) continue;
    for (const v of ["router hot", "router spread"]) {
      const r = find(v, mode, c);
      if (!r) continue;
      const ratio = r.rps / bare.rps;
      lines.push(
        `  ${mode} c=${c} ${v} ÷ bare proxy = ${f(ratio, 3)} (≥ ${TARGETS.routerOverBare}): ${
          verdict(ratio >= TARGETS.routerOverBare)
        }; ÷ direct = ${direct ? f(r.rps / direct.rps, 3) : "-"}${roundRatios(r, bare)}`,
      );
      if (c === 32) {
        const over = r.p50_ms - bare.p50_ms;
        lines.push(
          `  ${mode} c=${c} ${v} p50 overhead over bare proxy = ${
            f(over)
          } ms (≤ ${TARGETS.p50OverheadMs} ms): ${verdict(over <= TARGETS.p50OverheadMs)}`,
        );
      }
    }
    const pk = find("portkey", mode, c);
    if (pk && direct && pk.errors >= pk.requests / 2) {
      lines.push(
        `  ${mode} c=${c} portkey failed: ${pk.errors} of ${pk.requests} replies were errors`,
      );
    } else if (pk && direct) {
      lines.push(
        `  ${mode} c=${c} portkey ÷ direct = ${f(pk.rps / direct.rps, 3)}, ÷ bare proxy = ${
          f(pk.rps / bare.rps, 3)
        }`,
      );
    }
  }
  const ledgers = rows.filter((r) => r.ledger);
  if (ledgers.length) {
    const worst = ledgers.reduce((
      a,
      b,
    ) => (a.ledger!.caught_up_ms >= b.ledger!.caught_up_ms ? a : b));
    lines.push(
      `  ledger caught up after the load, worst case = ${worst.ledger!.caught_up_ms} ms ` +
        `(${worst.mode} c=${worst.concurrency} ${worst.target}; one books check took ` +
        `${worst.ledger!.verify_ms} ms) (≤ ${TARGETS.ledgerCatchUpMs} ms): ${
          verdict(worst.ledger!.caught_up_ms <= TARGETS.ledgerCatchUpMs)
        }`,
    );
  }

  lines.push("", "Books at the end (GET /v1/admin/verify):");
  let booksOk = true;
  for (const [name, raw] of Object.entries(books)) {
    const v = raw as {
      ok: boolean;
      accounts_checked: number;
      pending_events: number;
      differences: unknown[];
    };
    const ok = v.ok && v.pending_events === 0;
    if (!ok) booksOk = false;
    lines.push(
      `  ${name}: ${
        ok ? "balanced" : "NOT BALANCED"
      } (ok=${v.ok}, accounts=${v.accounts_checked}, ` +
        `pending_events=${v.pending_events}, differences=${v.differences.length})`,
    );
  }
  const errors = rows.reduce((n, r) => n + r.errors, 0);
  if (errors) lines.push(`  ${errors} requests failed during the loads (see above)`);
  lines.push(`\nAll targets met: ${allMet ? "yes" : "no"}`);
  return { text: lines.join("\n"), booksOk, allMet };
}
