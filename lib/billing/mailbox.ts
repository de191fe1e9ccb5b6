/**
 * The account actors' scheduling: one serial mailbox per account, and committers that fold the
 * next batch of as many accounts as fit into one atomic (group commit). What a batch decides and
 * writes is the actor's (`Committer`); this module only batches, retries and isolates failures.
 */
import { isLocked, sleep } from "../kv/util.ts";
import { AtomicRoom } from "../kv/limits.ts";
import type { Op, ResultOf } from "./ops.ts";

export interface Pending {
  op: Op;
  resolve: (v: unknown) => void;
  reject: (e: unknown) => void;
}

/** One account's batch in a committing atomic. */
export interface Part {
  accountId: string;
  batch: Pending[];
}

/** What the mailboxes need from the actor. */
export interface Committer {
  /** How many operations at the head of the account's queue fit in `room` (see `fitBatch`). */
  fit(accountId: string, queue: readonly Pending[], room: AtomicRoom, first: boolean): number;
  /**
   * Decides the parts and commits them as one atomic, resolving their operations; false when a
   * check failed (they are decided again on fresh state).
   */
  attempt(parts: Part[]): Promise<boolean>;
  /** An operation that could not be committed, about to be rejected with the error. */
  failed(accountId: string, op: Op): void;
  /** A commit that met a conflict or the KV file's lock (counted). */
  conflicted(): void;
}

const MAX_ATTEMPTS = 200;
// Atomics committing at once (of different accounts): the next one is decided and serialized
// while the previous one is written.
const MAX_IN_FLIGHT = 2;

export class Mailboxes {
  #committer: Committer;
  #boxes = new Map<string, Pending[]>();
  /** Accounts with operations waiting and no batch in the committing atomic, in arrival order. */
  #ready = new Set<string>();
  /** Accounts with a batch in a committing atomic: their next batch waits for it. */
  #busy = new Set<string>();
  #pumps = 0;
  #idle: (() => void)[] = [];

  constructor(committer: Committer) {
    this.#committer = committer;
  }

  /** Whether the account has operations waiting or committing. */
  has(accountId: string): boolean {
    return this.#boxes.has(accountId);
  }

  /** Queues an operation on the account's mailbox; resolves once its atomic has committed. */
  submit<O extends Op>(accountId: string, op: O): Promise<ResultOf<O>> {
    return new Promise((resolve, reject) => {
      let box = this.#boxes.get(accountId);
      if (!box) this.#boxes.set(accountId, box = []);
      box.push({ op, resolve: resolve as (v: unknown) => void, reject });
      this.#ready.add(accountId);
      if (this.#pumps < MAX_IN_FLIGHT) {
        this.#pumps++;
        // Let operations submitted in the same tick join the first atomic.
        queueMicrotask(() => this.#pump());
      }
    });
  }

  /** Resolves when every mailbox is empty. */
  idle(): Promise<void> {
    if (this.#boxes.size === 0 && this.#pumps === 0) return Promise.resolve();
    return new Promise((r) => this.#idle.push(r));
  }

  /**
   * A committer: while operations wait, folds the next batch of as many accounts as fit into one
   * atomic and commits it. An account joins an atomic with one batch at most, and its next batch
   * waits for that commit, so each account's operations apply in order.
   */
  async #pump() {
    for (;;) {
      const parts = this.#takeParts();
      // Nothing to take, or only accounts the other committer holds: it takes them next.
      if (parts.length === 0) break;
      for (const p of parts) this.#busy.add(p.accountId);
      await this.#commitParts(parts);
      for (const { accountId } of parts) {
        this.#busy.delete(accountId);
        if (this.#boxes.get(accountId)?.length === 0) this.#boxes.delete(accountId);
      }
    }
    this.#pumps--;
    if (this.#boxes.size === 0 && this.#pumps === 0) {
      for (const r of this.#idle.splice(0)) r();
    }
  }

  /** Takes the next batch of each ready account, in turn, while the atomic's limits allow. */
  #takeParts(): Part[] {
    // Room for the queue message and its ids, if any.
    const room = new AtomicRoom({ mutations: 1, bytes: 64 * 1024 });
    const parts: Part[] = [];
    for (const accountId of this.#ready) {
      if (this.#busy.has(accountId)) continue;
      const box = this.#boxes.get(accountId)!;
      const n = this.#committer.fit(accountId, box, room, parts.length === 0);
      if (n === 0) break;
      this.#ready.delete(accountId);
      parts.push({ accountId, batch: box.splice(0, n) });
    }
    return parts;
  }

  /** Commits the parts; never throws: every operation is resolved or rejected. */
  async #commitParts(parts: Part[]): Promise<void> {
    try {
      // Many accounts' atomic fails when any of them was written elsewhere: after a few tries,
      // each account alone, so one contended account does not hold back the others.
      if (await this.#commitWithRetry(parts, parts.length > 1 ? 3 : MAX_ATTEMPTS)) return;
      if (parts.length > 1) {
        for (const p of parts) await this.#commitParts([p]);
        return;
      }
      throw new Error("balance contention did not resolve");
    } catch (err) {
      if (parts.length > 1) {
        // One account's bad operation must not fail the other accounts: each alone.
        for (const p of parts) await this.#commitParts([p]);
      } else if (parts[0].batch.length > 1) {
        // Nor its neighbours in the account's batch: one by one.
        for (const op of parts[0].batch) await this.#commitParts([{ ...parts[0], batch: [op] }]);
      } else {
        this.#committer.failed(parts[0].accountId, parts[0].batch[0].op);
        parts[0].batch[0].reject(err);
      }
    } finally {
      for (const { accountId } of parts) {
        if (this.#boxes.get(accountId)?.length) this.#ready.add(accountId);
      }
    }
  }

  /** Commits the parts, deciding again after each conflict; false when `attempts` all conflicted. */
  async #commitWithRetry(parts: Part[], attempts: number): Promise<boolean> {
    for (let attempt = 0; attempt < attempts; attempt++) {
      let done = false;
      try {
        done = await this.#committer.attempt(parts);
      } catch (e) {
        // Another process holding the local KV file's write lock is contention too: retry.
        if (!isLocked(e)) throw e;
      }
      if (done) return true;
      this.#committer.conflicted();
      // Another process committed first: back off briefly, then decide again on fresh state.
      await sleep(Math.random() * Math.min(50, 1 + attempt * 2));
    }
    return false;
  }
}
