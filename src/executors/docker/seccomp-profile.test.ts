import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { CLONE_NAMESPACE_FLAGS, DENIED_SYSCALLS_X86_64 } from '../shared/syscall-policy.js';
import { buildDockerSeccompProfile, KINDLING_SECCOMP_OPT } from './seccomp-profile.js';

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

  it('is passed inline as the engine expects (seccomp=<json>)', () => {
    assert.ok(KINDLING_SECCOMP_OPT.startsWith('seccomp={'));
    assert.deepEqual(JSON.parse(KINDLING_SECCOMP_OPT.slice('seccomp='.length)), profile);
  });
});
