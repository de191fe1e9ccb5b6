import type { Context } from "hono";
import { hashSecret } from "../crypto.ts";

/** The static folder (CSS, icons, built bundles), beside lib/. */
export const STATIC_DIR = new URL("../../static/", import.meta.url);

const TYPES: Record<string, string> = {
  css: "text/css; charset=utf-8",
  js: "text/javascript; charset=utf-8",
  map: "application/json; charset=utf-8",
  svg: "image/svg+xml",
  png: "image/png",
  ico: "image/x-icon",
  json: "application/json; charset=utf-8",
};

const versions = new Map<string, string>();

/**
 * The URL of a static file with its content hash as version, so it can be cached for a year and
 * still change on the next build. Empty when the file is missing (bundle not built).
 */
export async function assetUrl(path: string): Promise<string> {
  let v = versions.get(path);
  if (v === undefined) {
    try {
      const bytes = await Deno.readFile(new URL(path, STATIC_DIR));
      v = (await hashSecret(new TextDecoder().decode(bytes))).slice(0, 12);
    } catch {
      return "";
    }
    versions.set(path, v);
  }
  return `/static/${path}?v=${v}`;
}

/**
 * Serves `/static/*`: built bundles and versioned URLs get a year's immutable caching, the rest
 * an hour. Paths are confined to the static folder.
 */
export async function serveStatic(c: Context): Promise<Response> {
  const rel = decodeURIComponent(c.req.path.replace(/^\/static\//, ""));
  if (!/^[A-Za-z0-9_.\-/]+$/.test(rel) || rel.split("/").some((p) => p === ".." || p === "")) {
    return c.text("Not found", 404);
  }
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(new URL(rel, STATIC_DIR));
  } catch {
    return c.text("Not found", 404);
  }
  const ext = rel.slice(rel.lastIndexOf(".") + 1);
  const immutable = rel.startsWith("build/") || c.req.query("v") !== undefined;
  return new Response(bytes as BodyInit, {
    headers: {
      "content-type": TYPES[ext] ?? "application/octet-stream",
      "cache-control": immutable ? "public, max-age=31536000, immutable" : "public, max-age=3600",
      "x-content-type-options": "nosniff",
    },
  });
}
