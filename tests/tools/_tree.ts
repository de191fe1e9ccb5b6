/** The repository's root folder. */
export const root = new URL("../../", import.meta.url).pathname.replace(/\/$/, "");

/** A small tree laid out as the repository is, in a temporary folder: path → file text. */
export async function tree(files: Record<string, string>): Promise<string> {
  const dir = await Deno.makeTempDir();
  for (const [path, text] of Object.entries(files)) {
    await Deno.mkdir(`${dir}/${path.split("/").slice(0, -1).join("/")}`, { recursive: true });
    await Deno.writeTextFile(`${dir}/${path}`, text);
  }
  return dir;
}
