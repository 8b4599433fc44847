/**
 * Interactive terminals in persistent sandboxes (GET /v1/sandboxes/ID/pty).
 *
 * The pty is allocated INSIDE the sandbox, by a small relay run as an ordinary sandbox command (same namespaces,
 * cgroup, seccomp filter and uid as any command; the server never holds a terminal of its own): python3's `pty`
 * module opens /dev/ptmx of the sandbox's own devpts (bwrap's `--dev` mounts a private one; docker containers have
 * theirs), forks the command as a session leader with the slave as its controlling terminal, and relays bytes. So
 * Ctrl-C (0x03) written to the master reaches the foreground process group as SIGINT through the line discipline.
 *
 * The relay's stdin carries frames (type byte, 4-byte big-endian length, payload): 'd' terminal input, 'r' a resize
 * (rows, cols as two big-endian uint16; TIOCSWINSZ on the master, so the foreground group gets SIGWINCH). Its stdout
 * is the terminal's output, raw. It exits with the command's exit status (128+N for a signal); when its stdin ends
 * it hangs the session up. The command starts with default signal dispositions: the supervisor's background jobs
 * ignore SIGINT/SIGQUIT and python ignores SIGPIPE, which a terminal's command must not inherit. Images without python3 answer SANDBOX_PTY_UNSUPPORTED.
 */
import type { SandboxCommand } from '../executors/executor.js';

export const PTY_RELAY = "import os,sys,pty,struct,fcntl,termios,select,signal,shutil\nc,r=int(sys.argv[1]),int(sys.argv[2]);a=sys.argv[3:] or [shutil.which('bash') and 'bash' or 'sh']\nws=lambda f,c,r:fcntl.ioctl(f,termios.TIOCSWINSZ,struct.pack('HHHH',r,c,0,0))\np,m=pty.fork()\nif p==0:\n for g in (signal.SIGINT,signal.SIGQUIT,signal.SIGPIPE,signal.SIGXFSZ):signal.signal(g,signal.SIG_DFL)\n ws(0,c,r)\n try:os.execvp(a[0],a)\n except OSError as e:os.write(2,('%s: %s\\r\\n'%(a[0],e.strerror)).encode());os._exit(127)\ni=b'';o=b'';e=False\nos.set_blocking(m,False)\nwhile True:\n rs=[m]+([] if e else [0]);wl=[m] if o else []\n rr,w,_=select.select(rs,wl,[])\n if m in rr:\n  try:d=os.read(m,65536)\n  except OSError:d=b''\n  if not d:break\n  os.write(1,d)\n if m in w:\n  n=os.write(m,o);o=o[n:]\n if 0 in rr:\n  d=os.read(0,65536)\n  if not d:\n   e=True\n   try:os.killpg(p,signal.SIGHUP)\n   except OSError:pass\n   continue\n  i+=d\n  while len(i)>=5:\n   t,n=i[0],struct.unpack('>I',i[1:5])[0]\n   if len(i)<5+n:break\n   b=i[5:5+n];i=i[5+n:]\n   if t==100:o+=b\n   elif t==114 and n==4:\n    rr_,cc=struct.unpack('>HH',b);ws(m,cc,rr_)\n_,s=os.waitpid(p,0)\nsys.exit(os.waitstatus_to_exitcode(s) if os.WIFEXITED(s) else 128+os.WTERMSIG(s))\n";

export const PTY_MAX_DIMENSION = 1000;
const FRAME_DATA = 0x64;
const FRAME_RESIZE = 0x72;

export function ptyDataFrame(bytes: Buffer): Buffer {
  const head = Buffer.alloc(5);
  head[0] = FRAME_DATA;
  head.writeUInt32BE(bytes.length, 1);
  return Buffer.concat([head, bytes]);
}

export function ptyResizeFrame(cols: number, rows: number): Buffer {
  const frame = Buffer.alloc(9);
  frame[0] = FRAME_RESIZE;
  frame.writeUInt32BE(4, 1);
  frame.writeUInt16BE(rows, 5);
  frame.writeUInt16BE(cols, 7);
  return frame;
}

/** A terminal session: write() input bytes, resize(), output on `command.stdout`, kill() ends the process tree. */
export class PtySession {
  readonly done: Promise<{ exitCode: number }>;
  constructor(
    private readonly command: SandboxCommand,
    release: () => void,
  ) {
    command.stdin?.on('error', () => {});
    command.stderr.resume();
    this.done = command.wait().then(({ exitCode }) => ({ exitCode })).finally(release);
  }

  get output(): NodeJS.ReadableStream {
    return this.command.stdout;
  }

  /** False when the relay's stdin is full (wait for 'drain' on `input`). */
  write(bytes: Buffer): boolean {
    return this.command.stdin?.write(ptyDataFrame(bytes)) ?? false;
  }

  get input(): NodeJS.WritableStream | null {
    return this.command.stdin;
  }

  resize(cols: number, rows: number): void {
    this.command.stdin?.write(ptyResizeFrame(cols, rows));
  }

  kill(): void {
    this.command.stdin?.end();
    this.command.kill();
  }
}
