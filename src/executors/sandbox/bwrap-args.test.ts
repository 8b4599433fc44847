/** The sandbox's arguments, asserted as argv: what every kind of execution hands bubblewrap and the launcher. */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { test } from 'node:test';
import { isKindlingError } from '../../core/errors.js';
import type { RunSpec } from '../../core/types.js';
import { AGENT_MOUNT } from '../../../agent/files.js';
import { testSpec } from '../conformance.js';
import { EXEC_SHIM, FD_ARGS, SUPERVISOR_MOUNT, bwrapArgs, encodeArgs, launchLine, launchRecord, mountTargets, validateSpec, type ImageBinds } from './bwrap-args.js';

const image: ImageBinds = { bindArgs: ['--ro-bind', '/img/usr', '/usr', '--symlink', 'usr/bin', '/bin'], shell: '/bin/sh' };
const spec = (overrides: Partial<RunSpec> = {}): RunSpec => {
  const base = testSpec({ command: ['python3', '-c', 'print(1)'], env: { A: '1', B: 'two words' }, workdir: '/work', ...overrides });
  return { ...base, limits: { ...base.limits, diskMb: 2, ...overrides.limits } };
};
const MIB2 = String(2 * 1024 * 1024);

/** The values that follow each occurrence of `flag` (flag arity `n`). */
function after(argv: string[], flag: string, n = 1): string[][] {
  const out: string[][] = [];
  argv.forEach((a, i) => a === flag && out.push(argv.slice(i + 1, i + 1 + n)));
  return out;
}

test('a network-less execution: every namespace unshared, caps dropped, the image binds, size-limited tmpfs, exact env, seccomp and status fds', () => {
  const { options, command } = bwrapArgs(spec(), 'kindling', image, { kind: 'tmpfs' }, null);
  assert.deepEqual(options.slice(0, 11), ['--unshare-all', '--unshare-user', '--unshare-cgroup', '--disable-userns', '--die-with-parent', '--new-session', '--cap-drop', 'ALL', '--hostname', 'kindling', '--ro-bind']);
  assert.ok(!options.includes('--share-net'));
  assert.deepEqual(options.slice(10, 16), image.bindArgs);
  // /dev/shm, /tmp and the work dir are tmpfs of diskMb; /dev is read-only after /dev/shm is mounted.
  assert.deepEqual(after(options, '--tmpfs'), [['/dev/shm'], ['/tmp'], ['/work']]);
  assert.deepEqual(after(options, '--size'), [[MIB2], [MIB2], [MIB2]]);
  assert.deepEqual(after(options, '--remount-ro'), [['/dev'], ['/']]);
  // No run dir: an empty, read-only /.kindling.
  assert.deepEqual(after(options, '--dir'), [['/.kindling']]);
  assert.deepEqual(after(options, '--chdir'), [['/work']]);
  assert.ok(options.indexOf('--clearenv') < options.indexOf('--setenv'));
  assert.deepEqual(after(options, '--setenv', 2), [...Object.entries(spec().env)]);
  assert.deepEqual(options.slice(-4), ['--seccomp', '3', '--json-status-fd', '4']);
  // The image's shell execs the command so that a missing one is exit 127 with sh's message.
  assert.deepEqual(command, ['/bin/sh', '-c', EXEC_SHIM, 'python3', 'python3', '-c', 'print(1)']);
});

test('egress shares the launcher\'s network namespace; files and the agent dir are bound read-only', () => {
  const { options } = bwrapArgs(spec({ network: 'egress', agentDir: '/run/agents/x' }), 'h', image, { kind: 'tmpfs' }, '/run/runs/sbx-1');
  assert.equal(options[1], '--share-net');
  assert.deepEqual(after(options, '--ro-bind', 2).slice(-2), [
    ['/run/runs/sbx-1', '/.kindling'],
    ['/run/agents/x', AGENT_MOUNT],
  ]);
  assert.ok(!after(options, '--dir').some(([d]) => d === '/.kindling'));
});

test('work dirs: inside /tmp only a --dir, / nothing, /tmp itself nothing; an image without a shell runs the command as is', () => {
  const inTmp = bwrapArgs(spec({ workdir: '/tmp/job' }), 'h', image, { kind: 'in-tmp' }, null).options;
  assert.deepEqual(after(inTmp, '--tmpfs'), [['/dev/shm'], ['/tmp']]);
  assert.deepEqual(after(inTmp, '--dir'), [['/tmp/job'], ['/.kindling']]);
  const tmp = bwrapArgs(spec({ workdir: '/tmp' }), 'h', image, { kind: 'in-tmp' }, null).options;
  assert.deepEqual(after(tmp, '--dir'), [['/.kindling']]);
  const root = bwrapArgs(spec({ workdir: '/' }), 'h', image, { kind: 'root' }, null).options;
  assert.deepEqual(after(root, '--tmpfs'), [['/dev/shm'], ['/tmp']]);
  const { command } = bwrapArgs(spec(), 'h', { bindArgs: [], shell: null }, { kind: 'tmpfs' }, null);
  assert.deepEqual(command, ['python3', '-c', 'print(1)']);
  // A command that is the image's shell itself (a persistent sandbox's supervisor) needs no shim.
  const shell = bwrapArgs(spec({ command: ['/bin/sh', '-c', 'echo r'] }), 'h', image, { kind: 'tmpfs' }, null).command;
  assert.deepEqual(shell, ['/bin/sh', '-c', 'echo r']);
  // So does the supervisor the executor bound in itself; any other bound file (a function's bundle) keeps it.
  const bound = bwrapArgs(spec({ command: [SUPERVISOR_MOUNT, '/a'], roBinds: [{ source: '/host/sup', target: SUPERVISOR_MOUNT }] }), 'h', image, { kind: 'tmpfs' }, null);
  assert.deepEqual(bound.command, [SUPERVISOR_MOUNT, '/a']);
  const bundle = bwrapArgs(spec({ command: ['/work/run'], roBinds: [{ source: '/host/bundle', target: '/work/run' }] }), 'h', image, { kind: 'tmpfs' }, null);
  assert.deepEqual(bundle.command.slice(0, 4), ['/bin/sh', '-c', EXEC_SHIM, '/work/run']);
  // Another shell, or the same by another name, keeps it.
  assert.deepEqual(bwrapArgs(spec({ command: ['sh', '-c', 'echo r'] }), 'h', image, { kind: 'tmpfs' }, null).command.slice(0, 4), ['/bin/sh', '-c', EXEC_SHIM, 'sh']);
});

test('a command found in the image runs without the shim, with the PWD the shim\'s sh would export; one found under a mount keeps it', () => {
  const found = { direct: true, visited: ['/usr', '/usr/bin', '/usr/bin/python3'] };
  const direct = bwrapArgs(spec(), 'h', image, { kind: 'tmpfs' }, null, found);
  assert.deepEqual(direct.command, ['python3', '-c', 'print(1)']);
  assert.deepEqual(after(direct.options, '--setenv', 2), [...Object.entries(spec().env), ['PWD', '/work']]);
  // As sh does, a PWD that is not the work dir is replaced (bwrap applies its --setenv in order).
  assert.deepEqual(after(bwrapArgs(spec({ env: { PWD: '/mine' } }), 'h', image, { kind: 'tmpfs' }, null, found).options, '--setenv', 2), [['PWD', '/mine'], ['PWD', '/work']]);
  // Not found (or not looked up): the shim, and no PWD of ours.
  const shimmed = bwrapArgs(spec(), 'h', image, { kind: 'tmpfs' }, null, { direct: false, visited: [] });
  assert.deepEqual(shimmed.command.slice(0, 3), ['/bin/sh', '-c', EXEC_SHIM]);
  assert.ok(!after(shimmed.options, '--setenv', 2).some(([key]) => key === 'PWD'));
  // Through the work dir, /tmp, a bind or the agent's mount the sandbox sees something else than the image.
  const through = (dir: string): { direct: boolean; visited: string[] } => ({ direct: true, visited: [dir, `${dir}/python3`, ...found.visited] });
  for (const [lookup, extra] of [
    [through('/work/bin'), {}],
    [through('/tmp/bin'), {}],
    [through('/proc/1'), {}],
    [through('/opt/bundle'), { roBinds: [{ source: '/host/b', target: '/opt/bundle' }] }],
    [through('/data'), { rwBinds: [{ source: '/host/d', target: '/data' }] }],
    [through(AGENT_MOUNT), { agentDir: '/run/agents/x' }],
  ] as Array<[{ direct: boolean; visited: string[] }, Partial<RunSpec>]>) {
    assert.equal(bwrapArgs(spec(extra), 'h', image, { kind: 'tmpfs' }, null, lookup).command[0], '/bin/sh', lookup.visited[0]);
  }
  // A work dir of `/` mounts nothing there.
  assert.equal(bwrapArgs(spec({ workdir: '/' }), 'h', image, { kind: 'root' }, null, found).command[0], 'python3');
});

test('an image root bound whole replaces the entries, is read-only already, and needs a mount point for each mount on it', () => {
  const { options } = bwrapArgs(spec(), 'h', { ...image, root: '/run/k/images/python-1' }, { kind: 'tmpfs' }, null);
  assert.deepEqual(options.slice(10, 13), ['--ro-bind', '/run/k/images/python-1', '/']);
  assert.ok(!options.includes('/img/usr') && !options.includes('--symlink'));
  assert.deepEqual(after(options, '--remount-ro'), [['/dev']]);
  const targets = (overrides: Partial<RunSpec>, plan: Parameters<typeof mountTargets>[1] = { kind: 'tmpfs' }): string[] => mountTargets(spec(overrides), plan).map((t) => t.target);
  assert.deepEqual(targets({}), ['/proc', '/dev', '/.kindling', '/tmp', '/work']);
  // A work dir in /tmp is made in its tmpfs; `/` mounts nothing.
  assert.deepEqual(targets({ workdir: '/tmp/x' }, { kind: 'in-tmp' }), ['/proc', '/dev', '/.kindling', '/tmp']);
  assert.deepEqual(targets({ workdir: '/' }, { kind: 'root' }), ['/proc', '/dev', '/.kindling', '/tmp']);
  // Binds with their sources (a file bind needs a file); one inside another is made in the outer one.
  const persistent = mountTargets(spec({ rwBinds: [{ source: '/v/work', target: '/work' }, { source: '/v/tmp', target: '/tmp' }], roBinds: [{ source: '/v/sup', target: SUPERVISOR_MOUNT }, { source: '/v/nm', target: '/work/node_modules' }], agentDir: '/a' }), { kind: 'tmpfs' });
  assert.deepEqual(persistent, [
    { target: '/proc', source: null },
    { target: '/dev', source: null },
    { target: '/.kindling', source: null },
    { target: '/work', source: '/v/work' },
    { target: '/tmp', source: '/v/tmp' },
    { target: SUPERVISOR_MOUNT, source: '/v/sup' },
    { target: AGENT_MOUNT, source: null },
  ]);
});

test('encodeArgs ends every argument with a NUL; launchLine sets RLIMIT_NOFILE and takes stdin from fd 6 or /dev/null, as sh reads it', () => {
  assert.deepEqual([...encodeArgs(['--a', 'b c', ''])], [...Buffer.from('--a\0b c\0\0')]);
  const withStdin = launchLine('/usr/bin/bwrap', ['echo', "it's"], 64.7, true);
  assert.equal(withStdin, `ulimit -n 64 || exit 125\nexec '/usr/bin/bwrap' --args ${FD_ARGS} -- 'echo' 'it'\\''s' 0<&6 6<&-\n`);
  assert.match(launchLine('/b', ['true'], 64, false), / 0<\/dev\/null 6<&-\n$/);
  // The line is valid sh: with bwrap replaced by printf, the command arrives word for word.
  const line = launchLine('printf', ['%s|', "it's", '$HOME', 'a b'], 64, false).replace(` --args ${FD_ARGS} --`, '');
  assert.equal(execFileSync('sh', ['-c', line]).toString(), "it's|$HOME|a b|");
});

test('launchRecord: the native launcher\'s fields (open files, stdin, argc, bwrap and its command), each ending with a NUL', () => {
  assert.equal(launchRecord('/usr/bin/bwrap', ['echo', "it's", ''], 64.7, true), `64\x001\x007\x00/usr/bin/bwrap\x00--args\x00${FD_ARGS}\x00--\x00echo\x00it's\x00\x00`);
  assert.ok(launchRecord('/b', ['true'], 64, false).startsWith('64\x000\x005\x00/b\x00'));
});

test('validateSpec refuses what the arguments cannot carry: NULs, "=" in env names, odd file names, non-positive limits', () => {
  const refuses = (overrides: Partial<RunSpec>, field: string): void =>
    assert.throws(() => validateSpec(spec(overrides)), (err: unknown) => isKindlingError(err) && err.code === 'VALIDATION_FAILED' && (err.details as { field: string }).field === field);
  validateSpec(spec());
  refuses({ command: [] }, 'command');
  refuses({ command: ['a\0b'] }, 'command');
  refuses({ env: { 'A=B': 'x' } }, 'env');
  refuses({ env: { A: 'x\0' } }, 'env');
  refuses({ files: [{ name: '../x', content: Buffer.alloc(0) }] }, 'files');
  refuses({ files: [{ name: 'x', content: Buffer.alloc(0) }, { name: 'x', content: Buffer.alloc(0) }] }, 'files');
  refuses({ limits: { ...spec().limits, openFiles: 8 } }, 'limits');
});

test("a function's bundle is bound read-only at the work dir instead of its tmpfs; /tmp stays a tmpfs", () => {
  const { options } = bwrapArgs(spec({ roBinds: [{ source: '/data/bundles/abc', target: '/work' }] }), 'h', image, { kind: 'tmpfs' }, null);
  assert.deepEqual(after(options, '--tmpfs'), [['/dev/shm'], ['/tmp']]);
  assert.ok(after(options, '--ro-bind', 2).some(([source, target]) => source === '/data/bundles/abc' && target === '/work'));
  assert.deepEqual(after(options, '--bind', 2), []);
  assert.deepEqual(after(options, '--chdir'), [['/work']]);
});
