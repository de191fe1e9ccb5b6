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
