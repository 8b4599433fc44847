import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { CLONE_NAMESPACE_FLAGS, DENIED_SYSCALLS_X86_64 } from '../shared/syscall-policy.js';
import { argumentRuleVerdict, type PolicyVerdict } from '../shared/syscall-policy.js';
import { argumentRuleSamples } from '../shared/syscall-policy-samples.js';
import { buildDockerSeccompProfile, KINDLING_SECCOMP_OPT, type SeccompProfile } from './seccomp-profile.js';

/** What libseccomp makes of the profile for one call: rules of the syscall ORed, conditions of a rule ANDed. */
function evaluate(profile: SeccompProfile, name: string, args: readonly bigint[]): PolicyVerdict {
  for (const rule of profile.syscalls) {
    if (!rule.names.includes(name)) continue;
    const matches = (rule.args ?? []).every((cond) => {
      const arg = args[cond.index] ?? 0n;
      if (cond.op === 'SCMP_CMP_MASKED_EQ') return (arg & BigInt(cond.value)) === BigInt(cond.valueTwo);
      return arg !== BigInt(cond.value);
    });
    if (matches) return { allow: false, errno: rule.errnoRet };
  }
  return { allow: true };
}

const NAMES: Record<number, string> = { 41: 'socket', 53: 'socketpair', 135: 'personality', 160: 'setrlimit', 302: 'prlimit64' };

describe('docker seccomp profile', () => {
  const profile = buildDockerSeccompProfile();

  it('denies every syscall of the shared policy with EPERM and allows the rest', () => {
    assert.equal(profile.defaultAction, 'SCMP_ACT_ALLOW');
    const plain = profile.syscalls.find((rule) => rule.args === undefined && rule.names.includes('ptrace'));
    assert.ok(plain, 'no rule denies ptrace');
    assert.equal(plain.errnoRet, 1);
    for (const name of Object.keys(DENIED_SYSCALLS_X86_64)) assert.ok(plain.names.includes(name), `${name} is not denied`);
  });

  it('only native x86_64: other ABIs fail the architecture check', () => {
    assert.deepEqual(profile.architectures, ['SCMP_ARCH_X86_64']);
  });

  it('denies clone with each namespace flag, and only those flags', () => {
    const cloneRules = profile.syscalls.filter((rule) => rule.names.includes('clone'));
    let covered = 0;
    for (const rule of cloneRules) {
      const [arg] = rule.args ?? [];
      assert.ok(arg, 'a clone rule without an argument condition would deny every fork');
      assert.equal(arg.op, 'SCMP_CMP_MASKED_EQ');
      assert.equal(arg.index, 0);
      assert.equal(arg.value, arg.valueTwo, 'the rule must match when the flag is set');
      assert.equal(arg.value & (arg.value - 1), 0, 'one flag per rule');
      covered |= arg.value;
    }
    assert.equal(covered >>> 0, CLONE_NAMESPACE_FLAGS >>> 0);
  });

  it('clone3 gets ENOSYS so libc falls back to the checked clone', () => {
    const rule = profile.syscalls.find((r) => r.names.includes('clone3'));
    assert.equal(rule?.errnoRet, 38);
  });

  it('applies the argument rules of the shared policy exactly as the sandbox filter does', () => {
    let checked = 0;
    for (const { nr, args } of argumentRuleSamples()) {
      const name = NAMES[nr];
      assert.ok(name !== undefined, `no name for syscall ${nr}`);
      assert.deepEqual(evaluate(profile, name, args), argumentRuleVerdict(nr, args), `${name}(${args.map((a) => `0x${a.toString(16)}`).join(', ')})`);
      checked++;
    }
    assert.ok(checked > 500);
    for (const rule of profile.syscalls) {
      const indexes = (rule.args ?? []).map((a) => a.index);
      assert.equal(new Set(indexes).size, indexes.length, 'libseccomp allows one condition per argument in a rule');
      for (const a of rule.args ?? []) assert.ok(Number.isSafeInteger(a.value) && Number.isSafeInteger(a.valueTwo));
    }
  });

  it('is passed inline as the engine expects (seccomp=<json>)', () => {
    assert.ok(KINDLING_SECCOMP_OPT.startsWith('seccomp={'));
    assert.deepEqual(JSON.parse(KINDLING_SECCOMP_OPT.slice('seccomp='.length)), profile);
  });
});
