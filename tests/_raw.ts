/**
 * HTTP/1.1 by hand over a TCP connection to 127.0.0.1, for what `fetch` cannot send: headers
 * that never end, bodies shorter than their Content-Length, uploads cut in the middle.
 */

const enc = new TextEncoder();

/** A parsed answer: status, lower-cased headers, and the body as text. */
export interface RawResponse {
  status: number;
  headers: Map<string, string>;
  body: string;
}

/** Parses the first response in `text` (a Content-Length body, or all that follows the head). */
export function parseResponse(text: string): RawResponse | null {
  const end = text.indexOf("\r\n\r\n");
  if (end < 0) return null;
  const [line, ...lines] = text.slice(0, end).split("\r\n");
  const headers = new Map<string, string>();
  for (const l of lines) {
    const i = l.indexOf(":");
    const name = l.slice(0, i).trim().toLowerCase();
    // Repeated headers (hyper may add its own `connection: close`) are joined as fetch would.
    const v = l.slice(i + 1).trim();
    headers.set(name, headers.has(name) ? `${headers.get(name)}, ${v}` : v);
  }
  const length = headers.get("content-length");
  const rest = text.slice(end + 4);
  return {
    status: Number(line.split(" ")[1]),
    headers,
    body: length === undefined ? rest : rest.slice(0, Number(length)),
  };
}

export class RawConn {
  #closed = false;
  private constructor(readonly conn: Deno.TcpConn) {}

  /** A connection to the server at `url` (http://127.0.0.1:port). */
  static async open(url: string): Promise<RawConn> {
    const { hostname, port } = new URL(url);
    return new RawConn(await Deno.connect({ hostname, port: Number(port) }));
  }

  /** Writes all of `data`; false once the server has closed or reset the connection. */
  async send(data: string | Uint8Array): Promise<boolean> {
    const bytes = typeof data === "string" ? enc.encode(data) : data;
    try {
      for (let off = 0; off < bytes.length;) off += await this.conn.write(bytes.subarray(off));
      return true;
    } catch {
      return false;
    }
  }

  /**
   * Everything the server sends until it closes (or resets) the connection: `closed` is false
   * when it was still open after `ms`, and then it is closed here.
   */
  readUntilClosed(ms: number): Promise<{ text: string; closed: boolean }> {
    return this.#read(ms, () => false);
  }

  /** The first answer, once all of it has come (or the connection closed, or `ms` passed). */
  async readResponse(ms: number): Promise<RawResponse | null> {
    const whole = (text: string) => {
      const r = parseResponse(text);
      return r !== null && r.headers.has("content-length") &&
        new TextEncoder().encode(r.body).length >= Number(r.headers.get("content-length"));
    };
    return parseResponse((await this.#read(ms, whole)).text);
  }

  async #read(ms: number, enough: (text: string) => boolean) {
    let waited = false;
    const timer = setTimeout(() => {
      waited = true;
      this.close();
    }, ms);
    const buf = new Uint8Array(64 * 1024);
    const dec = new TextDecoder();
    let text = "";
    try {
      while (true) {
        const n = await this.conn.read(buf);
        if (n === null) break;
        text += dec.decode(buf.subarray(0, n), { stream: true });
        if (enough(text)) break;
      }
    } catch {
      // Reset by the server, or closed here after `ms`.
    } finally {
      clearTimeout(timer);
    }
    return { text, closed: !waited };
  }

  close() {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.conn.close();
    } catch {
      // Already closed.
    }
  }
}
