/**
 * Test support (not product code). In CI every executor the machine is set up for must really run: a skip there
 * would turn a broken probe into a green build. scripts/test.sh names them in KINDLING_TEST_REQUIRE when CI=true.
 */
export function skipOrFail(executor: string, reason: string): string {
  const required = (process.env.KINDLING_TEST_REQUIRE ?? '').split(',').map((name) => name.trim());
  if (required.includes(executor)) throw new Error(`the ${executor} tests must run here (KINDLING_TEST_REQUIRE) but cannot: ${reason}`);
  return reason;
}
