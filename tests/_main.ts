/** main.ts as a process of its own, for the tests that need a real process (start-up, crashes). */
import assert from "node:assert/strict";

const ROOT = new URL("../", import.meta.url).pathname;

/**
 * `deno run -A main.ts` with `env` and nothing else of this process's environment but what Deno
 * needs to find its cache (PATH, HOME, DENO_DIR); a variable set to undefined is left out. `opts`
 * may run it from another copy of the project, with flags before `main.ts`.
 */
export function mainTs(
  env: Record<string, string | undefined>,
  opts: { cwd?: string; flags?: string[] } = {},
): Deno.Command {
  const all: Record<string, string | undefined> = {
    PORT: "0",
    NO_COLOR: "1",
    RUST_BACKTRACE: "0",
    PATH: Deno.env.get("PATH") ?? "",
    HOME: Deno.env.get("HOME") ?? "",
    ...(Deno.env.get("DENO_DIR") ? { DENO_DIR: Deno.env.get("DENO_DIR")! } : {}),
    ...env,
  };
  return new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", ...opts.flags ?? [], "main.ts"],
    cwd: opts.cwd ?? ROOT,
    env: Object.fromEntries(
      Object.entries(all).filter((e): e is [string, string] => e[1] !== undefined),
    ),
    clearEnv: true,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  });
}

/**
 * A router process on `env`; resolves once it listens and `/readyz` answers 200 (unless `ready` is
 * false), with its URL, output and a way to stop it.
 */
export async function spawnRouter(
  env: Record<string, string | undefined>,
  opts: { ready?: boolean; cwd?: string; flags?: string[] } = {},
) {
  const child = mainTs(env, opts).spawn();
  let output = "";
  const drain = async (s: ReadableStream<Uint8Array>) => {
    const dec = new TextDecoder();
    for await (const chunk of s) output += dec.decode(chunk, { stream: true });
  };
  const drained = Promise.all([drain(child.stdout), drain(child.stderr)]);
  const end = Date.now() + 20_000;
  let exited = false;
  child.status.then(() => exited = true);
  let url: string | null = null;
  try {
    while (!url) {
      url = /"msg":"listening","url":"(http:\/\/[^"]+)"/.exec(output)?.[1] ?? null;
      assert.ok(Date.now() < end && !exited, `the router did not listen: ${output}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    while (opts.ready !== false) {
      const res = await fetch(`${url}/readyz`);
      await res.body?.cancel();
      if (res.status === 200) break;
      assert.ok(Date.now() < end && !exited, `the router did not become ready: ${output}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  } catch (e) {
    try {
      child.kill("SIGKILL");
    } catch {
      // It exited already: its output (below) says why.
    }
    await child.status;
    await drained;
    throw e instanceof assert.AssertionError
      ? e
      : new Error(`${e}; the router's output: ${output}`);
  }
  return {
    url,
    child,
    output: () => output,
    /** Signals the process (unless it has exited) and waits for its end and its output. */
    async stop(signal: Deno.Signal = "SIGTERM") {
      try {
        child.kill(signal);
      } catch {
        // it exited already
      }
      const status = await child.status;
      await drained;
      return status;
    },
  };
}
