/**
 * The main thread's share of a Deno KV atomic per check or mutation: the synchronous part of
 * `commit()` (the operations handed to the KV thread) timed alone, on an in-memory KV, for the
 * kinds of items the router writes. The commit itself (SQLite) runs on another thread and is not
 * counted.
 *
 * Usage: deno run -A bench/kvops.ts [atomics=2000]
 */
const n = Number(Deno.args[0] ?? 2000);
const kv = await Deno.openKv(":memory:");
const id = () => "evt_" + crypto.randomUUID().replaceAll("-", "").slice(0, 22);
const account = "acct_" + crypto.randomUUID().replaceAll("-", "").slice(0, 20);
const bytes = new Uint8Array(200).fill(65);
const event = () => ({
  id: id(),
  account_id: account,
  ts: Date.now(),
  cost: 12_345_678n,
  model: "gpt-4o-mini",
  provider: "openai",
  status: 200,
  streaming: false,
  prompt_tokens: 100,
  completion_tokens: 20,
});

async function run(name: string, items: number, fill: (a: Deno.AtomicOperation) => void) {
  let sync = 0;
  for (let i = 0; i < n; i++) {
    const a = kv.atomic();
    fill(a);
    const t0 = performance.now();
    const committed = a.commit();
    sync += performance.now() - t0;
    await committed;
  }
  console.log(`${name.padEnd(36)} ${(sync * 1000 / n / items).toFixed(2)} µs per item`);
}

for (let round = 1; round <= 2; round++) {
  console.log(`round ${round}: ${n} atomics of 10 items each`);
  await run("set 200 bytes, 3-part key", 10, (a) => {
    for (let j = 0; j < 10; j++) a.set(["audit", account, id()], bytes);
  });
  await run("set an object (V8-serialized)", 10, (a) => {
    for (let j = 0; j < 10; j++) a.set(["outbox", account, id()], event());
  });
  await run("set 200 bytes, 1-part key", 10, (a) => {
    for (let j = 0; j < 10; j++) a.set([id()], bytes);
  });
  await run("set 200 bytes, bigint in the key", 10, (a) => {
    for (let j = 0; j < 10; j++) a.set(["ledger", account, BigInt(Date.now()), id()], bytes);
  });
  await run("delete, 3-part key", 10, (a) => {
    for (let j = 0; j < 10; j++) a.delete(["audit", account, id()]);
  });
  await run("check (absent), 3-part key", 10, (a) => {
    for (let j = 0; j < 10; j++) a.check({ key: ["outbox", account, id()], versionstamp: null });
  });
  await run("sum, 4-part key", 10, (a) => {
    for (let j = 0; j < 10; j++) a.sum(["rollup", account, "h", id()], 5n);
  });
}
kv.close();
