import assert from "node:assert/strict";
import { MAX_JSON_DEPTH, nestsWithin } from "../../lib/json.ts";

const arrays = (d: number) => "[".repeat(d) + "]".repeat(d);
const objects = (d: number) => '{"a":'.repeat(d) + "1" + "}".repeat(d);

Deno.test("nestsWithin counts arrays and objects, up to the bound and not past it", () => {
  for (const nest of [arrays, objects]) {
    assert.equal(nestsWithin(nest(MAX_JSON_DEPTH)), true);
    assert.equal(nestsWithin(nest(MAX_JSON_DEPTH + 1)), false);
    assert.equal(nestsWithin(nest(3), 3), true);
    assert.equal(nestsWithin(nest(4), 3), false);
  }
  // Depth, not count: siblings do not add up.
  assert.equal(nestsWithin("[" + "[],".repeat(1000) + "[]]", 2), true);
  assert.equal(nestsWithin('{"a":[1,{"b":[]}],"c":{}}', 4), true);
  assert.equal(nestsWithin('{"a":[1,{"b":[]}],"c":{}}', 3), false);
});

Deno.test("nestsWithin skips brackets inside strings, escaped quotes included", () => {
  assert.equal(nestsWithin(`["${"[{".repeat(500)}"]`, 1), true);
  assert.equal(nestsWithin(String.raw`["a\"[[[[", "b\\", [[]]]`, 3), true);
  assert.equal(nestsWithin(String.raw`["a\"[[[[", "b\\", [[]]]`, 2), false);
  // After an escaped backslash the quote closes the string: the brackets after it count.
  assert.equal(nestsWithin(String.raw`["\\", [[[]]]]`, 3), false);
  // Text that is not JSON is left to JSON.parse.
  assert.equal(nestsWithin('["unterminated [[['), true);
});
