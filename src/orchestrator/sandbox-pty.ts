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
 * ignore SIGINT/SIGQUIT and python ignores SIGPIPE, which a terminal's command must not inherit.
 * The relay also ends when the command exits (SIGCHLD, through a wake-up pipe), after reading what is left on the
 * master: gVisor's pty master never reports end-of-file or an error once the slave's last holder closed it, so
 * waiting for that alone left the terminal open after `exit` there.
 * Nor does gVisor's line discipline (runsc 2022) turn Ctrl-C, Ctrl-\ or Ctrl-Z into signals (the byte reaches the
 * program as input): with KINDLING_PTY_SIGNALS=1 in its environment (set for gvisor sandboxes only, removed before
 * the command starts) the relay does it: with ISIG on, such a byte of the input is dropped and the signal goes to
 * every process group of the terminal's session, because gVisor tells no one which group is in the foreground
 * (TIOCGPGRP fails on the master, /proc's tpgid is 0): background jobs of that shell get it too. Images without python3 answer SANDBOX_PTY_UNSUPPORTED.
 */
import type { SandboxCommand } from '../executors/executor.js';

export const PTY_RELAY = "import os,sys,pty,struct,fcntl,termios,select,signal,shutil\nc,r=int(sys.argv[1]),int(sys.argv[2]);a=sys.argv[3:] or [shutil.which('bash') and 'bash' or 'sh']\nws=lambda f,c,r:fcntl.ioctl(f,termios.TIOCSWINSZ,struct.pack('HHHH',r,c,0,0))\nsg=os.environ.pop('KINDLING_PTY_SIGNALS',None)=='1'\nrp,wp=os.pipe();os.set_blocking(wp,False);signal.set_wakeup_fd(wp);signal.signal(signal.SIGCHLD,lambda*_:None)\np,m=pty.fork()\nif p==0:\n signal.set_wakeup_fd(-1);os.close(rp);os.close(wp)\n for g in (signal.SIGINT,signal.SIGQUIT,signal.SIGPIPE,signal.SIGXFSZ,signal.SIGCHLD):signal.signal(g,signal.SIG_DFL)\n ws(0,c,r)\n try:os.execvp(a[0],a)\n except OSError as e:os.write(2,('%s: %s\\r\\n'%(a[0],e.strerror)).encode());os._exit(127)\ni=b'';o=b'';e=False;s=None\ndef isig(b):\n a=termios.tcgetattr(m)\n if not a[3]&termios.ISIG:return b\n k={a[6][termios.VINTR]:signal.SIGINT,a[6][termios.VQUIT]:signal.SIGQUIT,a[6][termios.VSUSP]:signal.SIGTSTP}\n k={(x if isinstance(x,int) else ord(x)):y for x,y in k.items() if x not in (0,b'\\x00')}\n if not any(x in k for x in b):return b\n g=set()\n for d in os.listdir('/proc'):\n  try:f=open('/proc/%s/stat'%d).read().rsplit(')',1)[1].split();g.add(int(f[2])) if int(f[3])==p else None\n  except (OSError,ValueError,IndexError):pass\n for x in b:\n  if x in k:\n   for q in g:\n    try:os.killpg(q,k[x])\n    except OSError:pass\n return bytes(x for x in b if x not in k)\ndef drain():\n while True:\n  try:d=os.read(m,65536)\n  except OSError:return\n  if not d:return\n  os.write(1,d)\nos.set_blocking(m,False)\nwhile True:\n rs=[m,rp]+([] if e else [0]);wl=[m] if o else []\n rr,w,_=select.select(rs,wl,[])\n if rp in rr:\n  os.read(rp,512);q,t=os.waitpid(p,os.WNOHANG)\n  if q:s=t;drain();break\n if m in rr:\n  try:d=os.read(m,65536)\n  except BlockingIOError:d=None\n  except OSError:d=b''\n  if d is not None:\n   if not d:break\n   os.write(1,d)\n if m in w:\n  n=os.write(m,o);o=o[n:]\n if 0 in rr:\n  d=os.read(0,65536)\n  if not d:\n   e=True\n   try:os.killpg(p,signal.SIGHUP)\n   except OSError:pass\n   continue\n  i+=d\n  while len(i)>=5:\n   t,n=i[0],struct.unpack('>I',i[1:5])[0]\n   if len(i)<5+n:break\n   b=i[5:5+n];i=i[5+n:]\n   if t==100:o+=isig(b) if sg else b\n   elif t==114 and n==4:\n    rr_,cc=struct.unpack('>HH',b);ws(m,cc,rr_)\nif s is None:_,s=os.waitpid(p,0)\nsys.exit(os.waitstatus_to_exitcode(s) if os.WIFEXITED(s) else 128+os.WTERMSIG(s))\n";

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
