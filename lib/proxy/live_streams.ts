/**
 * The streams this process is passing on, and a way to end them all at once: at the shutdown
 * deadline (`SHUTDOWN_GRACE_MS`) each stream still running is ended as one reaching
 * `MAX_STREAM_MS` is, by its own tap (lib/proxy/tap.ts): an error event to the client, billed for
 * what was delivered, its hold settled. A request still waiting for its provider's answer (a JSON
 * reply, or a stream not yet begun) watches `signal` too: it is answered 503 `shutting_down`, its
 * hold released.
 */
import { pause } from "../kv/util.ts";

export class LiveStreams {
  #ending = new AbortController();
  #live = 0;
  #idle: (() => void)[] = [];

  /** Aborted when every stream is to end now; a stream begun after that ends at once. */
  get signal(): AbortSignal {
    return this.#ending.signal;
  }

  /** Streams begun and not yet ended (billed). */
  get size(): number {
    return this.#live;
  }

  /** A stream begins; call the function returned once it has ended and been billed. */
  begin(): () => void {
    this.#live++;
    let done = false;
    return () => {
      if (done) return;
      done = true;
      if (--this.#live === 0) { for (const wake of this.#idle.splice(0)) wake(); }
    };
  }

  /**
   * Ends every stream now; resolves once each has been billed, or after `waitMs` (a settlement
   * that cannot commit is left to the hold's expiry, as at any crash).
   */
  async endAll(waitMs: number): Promise<void> {
    this.#ending.abort();
    if (this.#live === 0) return;
    const timer = new AbortController();
    const idle = new Promise<void>((resolve) => this.#idle.push(resolve));
    await Promise.race([idle, pause(waitMs, timer.signal)]);
    timer.abort();
  }
}
