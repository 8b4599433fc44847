// The resident agent for java handlers: the main process of a warm sandbox, compiled together with the function's
// code when the function is deployed (javac of both; the classes are the function's program layer).
//
// Usage: java -cp DIR KindlingAgent SOCKET CLASS METHOD
//
// CLASS is loaded once (its static initialisers run once per warm sandbox), then the agent connects to the host's unix
// SOCKET, says HELLO and serves invocations one at a time with the framing of agent/protocol.ts. METHOD is a public
// method of CLASS, static or of one instance made with its no-argument constructor, taking byte[] or String (the body)
// and returning byte[] or String (the response; void or null: empty). What it throws becomes an ERROR frame with the
// stack trace (exit code 1 for the invocation). What it prints on System.out and System.err travels as STDERR frames of
// the invocation. The W3C trace context of a call is the system property kindling.traceparent (Java cannot change its
// own environment). Each answer reports the call's CPU time and the process's peak RSS (agent version 2), which hosts
// ignore: calls are metered from the sandbox's cgroup (agent/protocol.ts).

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.OutputStream;
import java.io.PrintStream;
import java.io.PrintWriter;
import java.io.StringWriter;
import java.lang.management.ManagementFactory;
import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Method;
import java.lang.reflect.Modifier;
import java.net.StandardProtocolFamily;
import java.net.UnixDomainSocketAddress;
import java.nio.ByteBuffer;
import java.nio.channels.Channels;
import java.nio.channels.SocketChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.io.DataInputStream;
import java.io.BufferedInputStream;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

public final class KindlingAgent {
  private static final int PROTOCOL_VERSION = 1;
  private static final int AGENT_VERSION = 2;
  private static final int MAX_FRAME = 16 * 1024 * 1024;
  private static final int MAX_CHUNK = 1024 * 1024;

  private static final int HELLO = 1;
  private static final int INVOKE = 2;
  private static final int BODY_CHUNK = 3;
  private static final int BODY_END = 4;
  private static final int RESULT_CHUNK = 5;
  private static final int RESULT_END = 6;
  private static final int ERROR = 7;
  private static final int STDERR = 8;
  private static final int PING = 9;
  private static final int PONG = 10;
  private static final int USAGE = 12;

  private final SocketChannel channel;
  /** The invocation whose output System.out and System.err carry now; 0 between calls (output then dropped). */
  private volatile int current;

  private KindlingAgent(SocketChannel channel) {
    this.channel = channel;
  }

  private synchronized void send(int type, int id, byte[] payload, int offset, int length) throws IOException {
    ByteBuffer frame = ByteBuffer.allocate(10 + length);
    frame.putInt(6 + length).put((byte) PROTOCOL_VERSION).put((byte) type).putInt(id).put(payload, offset, length).flip();
    while (frame.hasRemaining()) channel.write(frame);
  }

  private void send(int type, int id, byte[] payload) throws IOException {
    send(type, id, payload, 0, payload.length);
  }

  private void sendChunks(int type, int id, byte[] data) throws IOException {
    for (int at = 0; at < data.length; at += MAX_CHUNK) send(type, id, data, at, Math.min(MAX_CHUNK, data.length - at));
  }

  /** System.out and System.err of the handler: STDERR frames of the current invocation, written as they come. */
  private final class Output extends OutputStream {
    @Override
    public void write(int b) throws IOException {
      write(new byte[] {(byte) b}, 0, 1);
    }

    @Override
    public void write(byte[] data, int offset, int length) throws IOException {
      int id = current;
      if (id == 0 || length == 0) return;
      for (int at = 0; at < length; at += MAX_CHUNK) send(STDERR, id, data, offset + at, Math.min(MAX_CHUNK, length - at));
    }
  }

  /** The handler as a function of the body's bytes to the response's bytes. */
  private interface Handler {
    byte[] call(byte[] body) throws Throwable;
  }

  private static Handler load(String className, String methodName) throws Throwable {
    Class<?> type = Class.forName(className);
    Method found = null;
    for (Method method : type.getMethods()) {
      Class<?>[] parameters = method.getParameterTypes();
      if (method.getName().equals(methodName) && parameters.length == 1 && (parameters[0] == byte[].class || parameters[0] == String.class)) {
        found = method;
        break;
      }
    }
    if (found == null) {
      throw new IllegalArgumentException(
          "class " + className + " has no public method " + methodName + "(byte[] body) or " + methodName + "(String body); write e.g. public static String " + methodName + "(String body)");
    }
    Class<?> returned = found.getReturnType();
    if (returned != byte[].class && returned != String.class && returned != void.class) {
      throw new IllegalArgumentException(className + "." + methodName + " returns " + returned.getName() + "; return byte[] or String");
    }
    Object target = Modifier.isStatic(found.getModifiers()) ? null : type.getDeclaredConstructor().newInstance();
    Method method = found;
    boolean takesString = method.getParameterTypes()[0] == String.class;
    return body -> {
      Object argument = takesString ? new String(body, StandardCharsets.UTF_8) : body;
      Object result;
      try {
        result = method.invoke(target, argument);
      } catch (InvocationTargetException e) {
        throw e.getCause();
      }
      if (result == null) return new byte[0];
      return result instanceof byte[] bytes ? bytes : ((String) result).getBytes(StandardCharsets.UTF_8);
    };
  }

  private static String stackTrace(Throwable error) {
    StringWriter text = new StringWriter();
    error.printStackTrace(new PrintWriter(text));
    return text.toString();
  }

  private static final Pattern HWM = Pattern.compile("VmHWM:\\s+(\\d+) kB");
  private static final Pattern TRACEPARENT = Pattern.compile("\"traceparent\"\\s*:\\s*\"([0-9A-Za-z-]{1,128})\"");

  /** CPU time of the process (ms) and its peak resident set (bytes, from /proc/self/status). */
  private static double cpuMs() {
    java.lang.management.OperatingSystemMXBean os = ManagementFactory.getOperatingSystemMXBean();
    if (os instanceof com.sun.management.OperatingSystemMXBean sun) return sun.getProcessCpuTime() / 1e6;
    return 0;
  }

  private static long maxRssBytes() {
    try {
      Matcher m = HWM.matcher(Files.readString(Path.of("/proc/self/status")));
      return m.find() ? Long.parseLong(m.group(1)) * 1024 : 0;
    } catch (IOException e) {
      return 0;
    }
  }

  private static byte[] usage(double cpuMs, long maxRss, Double durationMs) {
    String json = "{" + (durationMs == null ? "" : "\"durationMs\":" + durationMs + ",") + "\"cpuMs\":" + Math.max(0, cpuMs) + ",\"maxRssBytes\":" + maxRss + "}";
    return json.getBytes(StandardCharsets.UTF_8);
  }

  public static void main(String[] args) throws Exception {
    if (args.length < 3) {
      System.err.println("usage: java KindlingAgent SOCKET CLASS METHOD");
      System.exit(2);
    }
    SocketChannel channel = SocketChannel.open(StandardProtocolFamily.UNIX);
    channel.connect(UnixDomainSocketAddress.of(args[0]));
    KindlingAgent agent = new KindlingAgent(channel);
    PrintStream output = new PrintStream(agent.new Output(), true, StandardCharsets.UTF_8);
    System.setOut(output);
    System.setErr(output);
    Handler handler;
    try {
      handler = load(args[1], args[2]);
    } catch (Throwable error) {
      Throwable cause = error instanceof ExceptionInInitializerError init && init.getCause() != null ? init.getCause() : error;
      agent.send(ERROR, 0, ("loading the handler failed: " + stackTrace(cause)).getBytes(StandardCharsets.UTF_8));
      System.exit(1);
      return;
    }
    long pid = ProcessHandle.current().pid();
    agent.send(HELLO, 0, ("{\"version\":" + AGENT_VERSION + ",\"runtime\":\"java\",\"pid\":" + pid + "}").getBytes(StandardCharsets.UTF_8));
    DataInputStream in = new DataInputStream(new BufferedInputStream(Channels.newInputStream(channel), 256 * 1024));
    ByteArrayOutputStream body = new ByteArrayOutputStream();
    while (true) {
      int length;
      try {
        length = in.readInt();
      } catch (java.io.EOFException e) {
        System.exit(0);
        return;
      }
      if (length < 6 || length > MAX_FRAME) System.exit(1);
      int version = in.readUnsignedByte();
      int type = in.readUnsignedByte();
      int id = in.readInt();
      byte[] payload = new byte[length - 6];
      in.readFully(payload);
      if (version != PROTOCOL_VERSION) System.exit(1);
      switch (type) {
        case INVOKE -> {
          body.reset();
          Matcher m = TRACEPARENT.matcher(new String(payload, StandardCharsets.UTF_8));
          if (m.find()) System.setProperty("kindling.traceparent", m.group(1));
          else System.clearProperty("kindling.traceparent");
        }
        case BODY_CHUNK -> body.write(payload);
        case BODY_END -> {
          long started = System.nanoTime();
          double cpuStart = cpuMs();
          agent.current = id;
          byte[] out = null;
          Throwable failure = null;
          try {
            out = handler.call(body.toByteArray());
          } catch (Throwable error) {
            failure = error;
          }
          output.flush();
          agent.current = 0;
          double cpu = cpuMs() - cpuStart;
          if (failure != null) {
            agent.send(USAGE, id, usage(cpu, maxRssBytes(), null));
            agent.send(ERROR, id, stackTrace(failure).getBytes(StandardCharsets.UTF_8));
            continue;
          }
          agent.sendChunks(RESULT_CHUNK, id, out);
          agent.send(RESULT_END, id, usage(cpu, maxRssBytes(), (System.nanoTime() - started) / 1e6));
        }
        case PING -> agent.send(PONG, id, new byte[0]);
        default -> {
          // A host ignores frame types it does not know; so does the agent.
        }
      }
    }
  }
}
