/** A real HTTP server on a free loopback port, for the fakes and the router under test. */
export function serveLoopback(handler: Deno.ServeHandler): {
  origin: string;
  close(): Promise<void>;
} {
  const ac = new AbortController();
  const server = Deno.serve(
    { port: 0, hostname: "127.0.0.1", signal: ac.signal, onListen() {} },
    handler,
  );
  return {
    origin: `http://127.0.0.1:${server.addr.port}`,
    close: async () => {
      ac.abort();
      await server.finished;
    },
  };
}

/**
 * A body that sends `parts` (each awaited), then ends; `stats` counts the bytes its reader took
 * and whether it went away before the end.
 */
export function countedStream(parts: Iterator<Uint8Array | Promise<Uint8Array>>) {
  const stats = { sent: 0, cancelled: false };
  const body = new ReadableStream<Uint8Array>({
    async pull(ctrl) {
      const next = parts.next();
      if (next.done) return ctrl.close();
      const bytes = await next.value;
      stats.sent += bytes.length;
      ctrl.enqueue(bytes);
    },
    cancel() {
      stats.cancelled = true;
    },
  });
  return { body, stats };
}
