/**
 * `deno task bench`: the gateway benchmark (`bench/gateway.ts`, README.md), then usage analytics
 * and the audit export at scale (`bench/usage.ts`, USAGE.md), each in its own process.
 *
 * Flags go to the gateway benchmark; besides them: `--only=usage` runs the usage benchmark alone,
 * `--only=json|sse` or `--no-usage` the gateway alone. `--quick` also seeds 200,000 rows instead
 * of 1,000,000 for the usage benchmark (unless ROWS is set). Exits non-zero when either failed.
 */
const only = Deno.args.find((a) => a.startsWith("--only="))?.slice("--only=".length);
const quick = Deno.args.includes("--quick") || Deno.env.get("BENCH_QUICK") === "1";
const gatewayArgs = Deno.args.filter((a) => a !== "--no-usage");

const run = async (script: string, args: string[], env: Record<string, string> = {}) => {
  const { code } = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", new URL(script, import.meta.url).pathname, ...args],
    env,
    stdin: "null",
    stdout: "inherit",
    stderr: "inherit",
  }).output();
  return code;
};

let failed = false;
if (only !== "usage") failed = (await run("./gateway.ts", gatewayArgs)) !== 0;
if (only === undefined || only === "usage") {
  if (Deno.args.includes("--no-usage")) Deno.exit(failed ? 1 : 0);
  console.log("\n== Usage analytics and the audit export (bench/usage.ts) ==\n");
  const rows = Deno.env.get("ROWS") ?? (quick ? "200000" : "1000000");
  failed = (await run("./usage.ts", [], { ROWS: rows })) !== 0 || failed;
}
Deno.exit(failed ? 1 : 0);
