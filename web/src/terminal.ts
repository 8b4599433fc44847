/**
 * A terminal into a sandbox: xterm.js over the PTY WebSocket (GET /v1/sandboxes/ID/pty; protocol in
 * src/api/routes/sandbox-pty.ts). The first message is the size, then keystrokes go as binary (Ctrl-C is the byte
 * 0x03: the terminal's line discipline turns it into SIGINT), a resize as {"type":"resize"}; output comes as binary and
 * the end as {"type":"exit","exitCode"}. A browser cannot set Authorization on a WebSocket, so the key travels as the
 * subprotocol `kindling.key.BASE64URL(KEY)` next to `kindling.pty` (never in the URL: URLs end up in logs).
 */
import { FitAddon } from '@xterm/addon-fit';
import { Terminal } from '@xterm/xterm';
import '@xterm/xterm/css/xterm.css';

type Report = (text: string, kind: 'ok' | 'error' | '') => void;

/** base64url of the key's UTF-8 bytes, without padding: every character is allowed in a subprotocol name. */
function base64url(text: string): string {
  let binary = '';
  for (const byte of new TextEncoder().encode(text)) binary += String.fromCharCode(byte);
  return btoa(binary).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

export class ConsoleTerminal {
  private readonly term: Terminal;
  private readonly fit = new FitAddon();
  private readonly encoder = new TextEncoder();
  private readonly observer: ResizeObserver;
  private socket: WebSocket | null = null;

  constructor(
    container: HTMLElement,
    private readonly report: Report,
  ) {
    this.term = new Terminal({ cursorBlink: true, fontSize: 13, scrollback: 2000, convertEol: false });
    this.term.loadAddon(this.fit);
    this.term.open(container);
    this.fit.fit();
    // Tab belongs to the shell (completion), so the terminal would trap keyboard users: Escape then Tab leaves it, as in
    // the code editor (the Escape still reaches the program; the Tab is left to the browser, which moves the focus).
    let escaped = false;
    this.term.attachCustomKeyEventHandler((event) => {
      if (event.type !== 'keydown') return true;
      if (event.key === 'Tab' && escaped) {
        escaped = false;
        return false;
      }
      escaped = event.key === 'Escape';
      return true;
    });
    this.term.onData((data) => this.send(this.encoder.encode(data)));
    this.term.onResize(({ cols, rows }) => this.send(JSON.stringify({ type: 'resize', cols, rows })));
    // The container follows the page's width: the terminal follows the container (its size reaches the sandbox's pty).
    this.observer = new ResizeObserver(() => this.fit.fit());
    this.observer.observe(container);
  }

  connect(sandboxId: string, apiKey: string | null): void {
    this.socket?.close();
    this.term.reset();
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
    const protocols = ['kindling.pty', ...(apiKey ? [`kindling.key.${base64url(apiKey)}`] : [])];
    const socket = new WebSocket(`${scheme}://${location.host}/v1/sandboxes/${encodeURIComponent(sandboxId)}/pty`, protocols);
    socket.binaryType = 'arraybuffer';
    this.socket = socket;
    let ended = false;
    this.report(`Connecting to ${sandboxId}…`, '');
    socket.addEventListener('open', () => socket.send(JSON.stringify({ cols: this.term.cols, rows: this.term.rows })));
    socket.addEventListener('message', (event: MessageEvent<ArrayBuffer | string>) => {
      if (typeof event.data !== 'string') {
        this.term.write(new Uint8Array(event.data));
        return;
      }
      const message = JSON.parse(event.data) as { type: string; exitCode?: number; error?: { code: string; message: string } };
      if (message.type === 'started') {
        this.report(`Connected to ${sandboxId} (Ctrl-C reaches the program; exit ends the session).`, 'ok');
        this.term.focus();
      } else if (message.type === 'exit') {
        ended = true;
        this.report(`The terminal session ended: exit code ${message.exitCode}.`, message.exitCode === 0 ? 'ok' : 'error');
      } else if (message.type === 'error' && message.error) {
        ended = true;
        this.report(`${message.error.code}: ${message.error.message}`, 'error');
      }
    });
    socket.addEventListener('close', (event) => {
      // A socket replaced (Reconnect) or closed by the page (another sandbox opened) reports nothing.
      if (this.socket !== socket) return;
      this.socket = null;
      if (!ended) this.report(`Disconnected from ${sandboxId} (WebSocket closed ${event.code}${event.reason ? `: ${event.reason}` : ''}); Reconnect opens a new session.`, 'error');
    });
  }

  private send(data: string | Uint8Array): void {
    if (this.socket?.readyState === WebSocket.OPEN) this.socket.send(data);
  }

  close(): void {
    this.socket?.close();
    this.socket = null;
    this.observer.disconnect();
    this.term.dispose();
  }
}
