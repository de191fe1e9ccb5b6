import type { Context } from "hono";
import { MAX_USER_AGENT_CHARS } from "../billing/types.ts";
import { clip } from "../kv/util.ts";
import type { ClientFacts } from "../proxy/audit.ts";

/**
 * The client's address, when the request came over a socket (not under `app.request`): the
 * socket's peer, or the forwarded client when that peer is a trusted proxy (`trustingProxies`).
 */
export function clientIp(c: Context): string {
  const info = c.env as Deno.ServeHandlerInfo | undefined;
  return (info?.remoteAddr as Deno.NetAddr | undefined)?.hostname ?? "";
}

/**
 * What an audit row says of the client. Deno refuses to read a request's address or headers once
 * it has closed, and a stream whose client went away is settled after that: read them at once.
 */
export function clientFacts(c: Context): ClientFacts {
  return {
    ip: clientIp(c),
    userAgent: clip(c.req.header("user-agent") ?? "", MAX_USER_AGENT_CHARS),
  };
}
