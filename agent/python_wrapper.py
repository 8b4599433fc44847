"""The resident agent for python handlers: the main process of a warm sandbox.

Usage: python3 -u /.kindling/python_wrapper.py SOCKET MODULE HANDLER

Loads MODULE once (module-level code runs once per sandbox), connects to the host's unix SOCKET, says HELLO, then
serves invocations one at a time with the framing of agent/protocol.ts: the handler receives the body as bytes and
returns str or bytes (None: empty). An exception becomes an ERROR frame with the traceback (exit code 1 for the
invocation). print() output during an invocation travels as STDERR frames. No process is spawned per invocation.
Answers carry no usage report (agent version 3, see agent/protocol.ts): the host meters calls from the sandbox's cgroup.
"""
import json
import os
import socket
import struct
import sys
import tempfile
import traceback

VERSION = 1  # the frame header's version byte
AGENT_VERSION = 3  # announced in HELLO: 3 sends no per-call usage report
HELLO, INVOKE, BODY_CHUNK, BODY_END, RESULT_CHUNK, RESULT_END, ERROR, STDERR, PING, PONG, LOAD, USAGE = range(1, 13)
HEADER = struct.Struct(">IBBI")
MAX_FRAME = 16 * 1024 * 1024
MAX_CHUNK = 1024 * 1024


def set_traceparent(payload):
    # INVOKE's optional JSON payload names the call's trace ({traceparent}): the handler sees it as
    # os.environ["TRACEPARENT"] for this call (a warm sandbox serves many calls); absent: unset.
    traceparent = None
    if payload:
        try:
            traceparent = json.loads(payload.decode("utf-8")).get("traceparent")
        except (ValueError, AttributeError):
            traceparent = None
    if isinstance(traceparent, str):
        os.environ["TRACEPARENT"] = traceparent
    else:
        os.environ.pop("TRACEPARENT", None)


def frame(kind, ident, payload=b""):
    if isinstance(payload, str):
        payload = payload.encode("utf-8", "replace")
    return HEADER.pack(6 + len(payload), VERSION, kind, ident) + payload


class Reader:
    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray()

    def _fill(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(max(65536, n - len(self.buf)))
            if not chunk:
                raise EOFError
            self.buf += chunk

    def read(self):
        self._fill(4)
        (length,) = struct.unpack_from(">I", self.buf, 0)
        if length < 6 or length > MAX_FRAME:
            raise ValueError("bad frame length %d" % length)
        self._fill(4 + length)
        _, version, kind, ident = HEADER.unpack_from(self.buf, 0)
        if version != VERSION:
            raise ValueError("protocol version %d is not %d" % (version, VERSION))
        payload = bytes(self.buf[10:4 + length])
        del self.buf[:4 + length]
        return kind, ident, payload


class FrameStream:
    """sys.stdout/sys.stderr during an invocation: text goes to the host as STDERR frames."""

    def __init__(self, agent, fallback):
        self.agent = agent
        self.fallback = fallback

    def write(self, text):
        if self.agent.current:
            self.agent.send(frame(STDERR, self.agent.current, text))
        else:
            self.fallback.write(text)
        return len(text)

    def flush(self):
        pass


class Agent:
    def __init__(self, sock):
        self.sock = sock
        self.current = 0

    def send(self, data):
        self.sock.sendall(data)


def main():
    socket_path, module_path, handler_name = sys.argv[1:4]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(socket_path)
    agent = Agent(sock)
    reader = Reader(sock)
    if module_path == "-":
        # A generic agent: the code arrives later in one LOAD frame (the interpreter is already up by then).
        agent.send(frame(HELLO, 0, json.dumps({"version": AGENT_VERSION, "runtime": "python", "pid": os.getpid(), "generic": True})))
        while True:
            kind, ident, payload = reader.read()
            if kind == LOAD:
                break
        load = json.loads(payload.decode("utf-8"))
        os.environ.clear()
        os.environ.update(load["env"])
        handler_name = load["handler"]
        directory = tempfile.mkdtemp(prefix="kindling-fn-")
        module_path = os.path.join(directory, "handler.py")
        with open(module_path, "w", encoding="utf-8") as target:
            target.write(load["code"])
    try:
        namespace = {"__name__": "__kindling_handler__", "__file__": module_path}
        with open(module_path, "rb") as source:
            code = compile(source.read(), module_path, "exec")
        sys.path.insert(0, os.path.dirname(module_path))
        exec(code, namespace)
        handler = namespace.get(handler_name)
        if not callable(handler):
            raise NameError("%s does not define a function named %r" % (module_path, handler_name))
    except BaseException:
        agent.send(frame(ERROR, 0, "loading the module failed: " + traceback.format_exc()))
        sock.close()
        return
    sys.stdout = FrameStream(agent, sys.__stdout__)
    sys.stderr = FrameStream(agent, sys.__stderr__)
    agent.send(frame(HELLO, 0, json.dumps({"version": AGENT_VERSION, "runtime": "python", "pid": os.getpid()})))

    body = []
    while True:
        try:
            kind, ident, payload = reader.read()
        except EOFError:
            return
        if kind == INVOKE:
            body = []
            set_traceparent(payload)
        elif kind == BODY_CHUNK:
            body.append(payload)
        elif kind == BODY_END:
            agent.current = ident
            try:
                value = handler(b"".join(body))
                if value is None:
                    out = b""
                elif isinstance(value, str):
                    out = value.encode("utf-8")
                elif isinstance(value, (bytes, bytearray, memoryview)):
                    out = bytes(value)
                else:
                    out = str(value).encode("utf-8")
                frames = [frame(RESULT_CHUNK, ident, out[i:i + MAX_CHUNK]) for i in range(0, len(out), MAX_CHUNK)]
                frames.append(frame(RESULT_END, ident))
                agent.send(b"".join(frames))
            except Exception:
                text = traceback.format_exc()
                agent.send(frame(ERROR, ident, text))
            finally:
                agent.current = 0
                body = []
        elif kind == PING:
            agent.send(frame(PONG, ident))


if __name__ == "__main__":
    main()
