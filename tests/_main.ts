/** main.ts as a process of its own, for the tests that need a real process (start-up, crashes). */
import assert from "node:assert/strict";

const ROOT = new URL("../", import.meta.url).pathname;

/**
 * `deno run -A main.ts` with `env` and nothing else of this process's environment but what Deno
 * needs to find its cache (PATH, HOME, DENO_DIR).
 */
export function mainTs(env: Record<string, string>): Deno.Command {
  return new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "main.ts"],
    cwd: ROOT,
    env: {
      PORT: "0",
      NO_COLOR: "1",
      RUST_BACKTRACE: "0",
      PATH: Deno.env.get("PATH") ?? "",
      HOME: Deno.env.get("HOME") ?? "",
      ...(Deno.env.get("DENO_DIR") ? { DENO_DIR: Deno.env.get("DENO_DIR")! } : {}),
      ...env,
    },
    clearEnv: true,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  });
}

/** A router process on `env`; resolves once it listens, with its URL, output and a way to stop it. */
export async function spawnRouter(env: Record<string, string>) {
  const child = mainTs(env).spawn();
  let output = "";
  const drain = async (s: ReadableStream<Uint8Array>) => {
    const dec = new TextDecoder();
    for await (const chunk of s) output += dec.decode(chunk, { stream: true });
  };
  const drained = Promise.all([drain(child.stdout), drain(child.stderr)]);
  const end = Date.now() + 20_000;
  let url: string | null = null;
  while (!url) {
    url = /"msg":"listening","url":"(http:\/\/[^"]+)"/.exec(output)?.[1] ?? null;
    assert.ok(Date.now() < end, `the router did not listen: ${output}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    url,
    child,
    output: () => output,
    async stop(signal: Deno.Signal = "SIGTERM") {
      child.kill(signal);
      await child.status;
      await drained;
    },
  };
}
