/**
 * The build (`deno task build`): writes the generated registries (tools/registries.ts), then
 * bundles the islands into static/build. With `--if-missing` (`deno task start`) the bundle is
 * built only when none exists or the islands changed; with `--check` (`deno task check`) nothing
 * is written and stale registries fail.
 */
import { ISLANDS_MODULE, writeRegistries } from "./registries.ts";

const root = new URL("../", import.meta.url);
const out = new URL("static/build/", root);
const rootPath = root.pathname.replace(/\/$/, "");

if (Deno.args.includes("--check")) {
  const stale = await writeRegistries(rootPath, true);
  for (const path of stale) console.error(`${path} is stale: run deno task build`);
  Deno.exit(stale.length ? 1 : 0);
}

const changed = await writeRegistries(rootPath);
for (const path of changed) console.log(`wrote ${path}`);
if (Deno.args.includes("--if-missing") && !changed.includes(ISLANDS_MODULE)) {
  const built = await Deno.stat(new URL("client.js", out)).then(() => true, () => false);
  if (built) Deno.exit(0);
}
// Old content-hashed chunks would pile up: start clean.
await Deno.remove(out, { recursive: true }).catch(() => {});
const cmd = new Deno.Command(Deno.execPath(), {
  args: [
    "bundle",
    "--platform",
    "browser",
    "--code-splitting",
    "--minify",
    "--outdir",
    "static/build",
    "lib/render/client.ts",
  ],
  cwd: root,
  stdout: "inherit",
  stderr: "inherit",
});
const { code } = await cmd.output();
Deno.exit(code);
