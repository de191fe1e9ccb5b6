/** CPU time of this process's threads, for the in-process benchmarks (Linux `/proc`). */

/** CPU ms of each thread of this process by name (the main thread, SQLite's, V8's workers). */
export function threadCpuMs(): Map<string, number> {
  const m = new Map<string, number>();
  try {
    for (const t of Deno.readDirSync("/proc/self/task")) {
      try {
        const st = Deno.readTextFileSync(`/proc/self/task/${t.name}/stat`);
        const name = st.slice(st.indexOf("(") + 1, st.lastIndexOf(")"));
        const f = st.slice(st.lastIndexOf(")") + 2).split(" ");
        m.set(name, (m.get(name) ?? 0) + (Number(f[11]) + Number(f[12])) * 10);
      } catch {
        // the thread ended while read
      }
    }
  } catch {
    // not Linux
  }
  return m;
}

/** Prints each thread's CPU since `before` (from threadCpuMs) per request. */
export function printThreadCpu(before: Map<string, number>, requests: number): void {
  for (const [name, ms] of threadCpuMs()) {
    const d = ms - (before.get(name) ?? 0);
    if (d > 0) console.log(`  thread ${name}: ${(d * 1000 / requests).toFixed(0)} µs/req`);
  }
}
