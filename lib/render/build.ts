/**
 * Builds the island bundles into static/build (`deno task build`); with `--if-missing` only when
 * no bundle exists yet (`deno task start`).
 */
const root = new URL("../../", import.meta.url);
const out = new URL("static/build/", root);

if (Deno.args.includes("--if-missing")) {
  try {
    await Deno.stat(new URL("client.js", out));
    Deno.exit(0);
  } catch {
    // not built yet
  }
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
