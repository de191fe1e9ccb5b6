/**
 * A customer's webhook receiver on 127.0.0.1 (plain, or TLS with a certificate for `hooks.test`):
 * it records every delivery and verifies each with the `standardwebhooks` library once it knows
 * the endpoint's secret, answering the statuses it is told to, in turn.
 */
import { Webhook } from "standardwebhooks";

/** A webhook body: `{type, timestamp, data}`. */
export interface WebhookBody {
  type: string;
  timestamp: string;
  data: Record<string, unknown>;
}

export interface Received {
  headers: Record<string, string>;
  body: string;
  /** What `Webhook.verify` returned (the parsed body), or its error's message. */
  verified: { ok: true; event: WebhookBody } | { ok: false; error: string };
}

export interface Receiver {
  url: string;
  port: number;
  received: Received[];
  /** The endpoint's secret, to verify with. */
  secret: string;
  /** Statuses answered in turn; once used up, `fallback`. */
  statuses: number[];
  fallback: number;
  /** Resolves when `n` deliveries have arrived. */
  waitFor(n: number, ms?: number): Promise<Received[]>;
  close(): Promise<void>;
}

const FIXTURES = new URL("./tls/", import.meta.url);
/** The test CA that signed the receiver's `hooks.test` certificate (trusted through caCerts). */
export const TEST_CA = await Deno.readTextFile(new URL("ca.pem", FIXTURES));

export function startReceiver(opts: { tls?: boolean; path?: string } = {}): Receiver {
  const ac = new AbortController();
  const waiters: { n: number; resolve: () => void }[] = [];
  const r: Receiver = {
    url: "",
    port: 0,
    received: [],
    secret: "",
    statuses: [],
    fallback: 204,
    async waitFor(n, ms = 10_000) {
      if (r.received.length < n) {
        let timer: ReturnType<typeof setTimeout> | undefined;
        await Promise.race([
          new Promise<void>((resolve) => waiters.push({ n, resolve })),
          new Promise<void>((_, reject) => {
            timer = setTimeout(
              () => reject(new Error(`${r.received.length} of ${n} deliveries arrived`)),
              ms,
            );
          }),
        ]).finally(() => clearTimeout(timer));
      }
      return r.received;
    },
    close: async () => {
      ac.abort();
      await server.finished;
    },
  };
  const tls = opts.tls
    ? {
      cert: Deno.readTextFileSync(new URL("hooks.test.pem", FIXTURES)),
      key: Deno.readTextFileSync(new URL("hooks.test.key", FIXTURES)),
    }
    : {};
  const server = Deno.serve(
    { port: 0, hostname: "127.0.0.1", signal: ac.signal, onListen() {}, ...tls },
    async (req) => {
      const body = await req.text();
      const headers = Object.fromEntries(req.headers);
      let verified: Received["verified"];
      try {
        verified = { ok: true, event: new Webhook(r.secret).verify(body, headers) as WebhookBody };
      } catch (e) {
        verified = { ok: false, error: e instanceof Error ? e.message : String(e) };
      }
      r.received.push({ headers, body, verified });
      for (const w of waiters.filter((w) => r.received.length >= w.n)) w.resolve();
      return new Response(null, { status: r.statuses.shift() ?? r.fallback });
    },
  );
  r.port = server.addr.port;
  r.url = `${opts.tls ? "https://hooks.test" : "http://127.0.0.1"}:${r.port}${
    opts.path ?? "/hook"
  }`;
  return r;
}
