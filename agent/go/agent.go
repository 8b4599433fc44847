// The resident agent for go handlers: the main process of a warm sandbox, compiled together with the function's code
// when the function is deployed (the build adds this file and a one-line file naming the handler, kindlingHandler).
//
// Usage: PROGRAM SOCKET
//
// The function's package initialises once (its init functions and package variables), then the agent connects to the
// host's unix SOCKET, says HELLO and serves invocations one at a time with the framing of agent/protocol.ts: the
// handler gets the body as []byte and returns []byte or string, with or without an error. A returned error or a
// panic becomes an ERROR frame (exit code 1 for the invocation). What the handler writes to os.Stdout and os.Stderr
// travels as STDERR frames of the invocation. Each answer reports the call's CPU time and the process's peak RSS
// (getrusage; agent version 2), which hosts ignore: calls are metered from the sandbox's cgroup (agent/protocol.ts).
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime/debug"
	"sync"
	"syscall"
	"time"
)

const (
	kindlingProtocolVersion = 1
	kindlingAgentVersion    = 2
	kindlingMaxFrame        = 16 * 1024 * 1024
	kindlingMaxChunk        = 1024 * 1024
)

const (
	kindlingHello byte = iota + 1
	kindlingInvoke
	kindlingBodyChunk
	kindlingBodyEnd
	kindlingResultChunk
	kindlingResultEnd
	kindlingError
	kindlingStderr
	kindlingPing
	kindlingPong
	kindlingLoad
	kindlingUsage
)

// kindlingFlushMark ends what a call wrote to its output pipe: the reader has forwarded everything before it once it
// sees it, so the call's output frames precede its result.
var kindlingFlushMark = []byte("\x00kindling-output-flush\x00\n")

type kindlingAgent struct {
	conn    net.Conn
	writeMu sync.Mutex
	mu      sync.Mutex
	current uint32
	flushed chan struct{}
}

func (a *kindlingAgent) send(kind byte, id uint32, payload []byte) error {
	header := make([]byte, 10)
	binary.BigEndian.PutUint32(header[0:4], uint32(6+len(payload)))
	header[4] = kindlingProtocolVersion
	header[5] = kind
	binary.BigEndian.PutUint32(header[6:10], id)
	a.writeMu.Lock()
	defer a.writeMu.Unlock()
	if _, err := a.conn.Write(append(header, payload...)); err != nil {
		return err
	}
	return nil
}

func (a *kindlingAgent) read(in *bufio.Reader) (byte, uint32, []byte, error) {
	header := make([]byte, 10)
	if _, err := io.ReadFull(in, header); err != nil {
		return 0, 0, nil, err
	}
	length := binary.BigEndian.Uint32(header[0:4])
	if length < 6 || length > kindlingMaxFrame {
		return 0, 0, nil, fmt.Errorf("bad frame length %d", length)
	}
	if header[4] != kindlingProtocolVersion {
		return 0, 0, nil, fmt.Errorf("protocol version %d is not %d", header[4], kindlingProtocolVersion)
	}
	payload := make([]byte, length-6)
	if _, err := io.ReadFull(in, payload); err != nil {
		return 0, 0, nil, err
	}
	return header[5], binary.BigEndian.Uint32(header[6:10]), payload, nil
}

// forwardOutput sends what the process writes to its stdout and stderr (one pipe) as STDERR frames of the current call.
func (a *kindlingAgent) forwardOutput(pipe *os.File) {
	buffer := make([]byte, 64*1024)
	var pending []byte
	for {
		n, err := pipe.Read(buffer)
		pending = append(pending, buffer[:n]...)
		for {
			at := bytes.Index(pending, kindlingFlushMark)
			if at < 0 {
				break
			}
			a.forward(pending[:at])
			pending = pending[at+len(kindlingFlushMark):]
			// Never blocks: a mark the handler wrote itself must not stall the output.
			select {
			case a.flushed <- struct{}{}:
			default:
			}
		}
		// Keep a tail that may be the start of a mark; forward the rest.
		keep := len(kindlingFlushMark) - 1
		if len(pending) > keep {
			a.forward(pending[:len(pending)-keep])
			pending = append([]byte(nil), pending[len(pending)-keep:]...)
		}
		if err != nil {
			return
		}
	}
}

func (a *kindlingAgent) forward(text []byte) {
	if len(text) == 0 {
		return
	}
	a.mu.Lock()
	id := a.current
	a.mu.Unlock()
	if id == 0 {
		return
	}
	for len(text) > 0 {
		n := min(len(text), kindlingMaxChunk)
		_ = a.send(kindlingStderr, id, text[:n])
		text = text[n:]
	}
}

type kindlingUsageReport struct {
	DurationMs  float64 `json:"durationMs,omitempty"`
	CPUMs       float64 `json:"cpuMs"`
	MaxRSSBytes int64   `json:"maxRssBytes"`
}

func kindlingCPU() (float64, int64) {
	var usage syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &usage)
	cpu := time.Duration(usage.Utime.Nano()+usage.Stime.Nano()).Seconds() * 1000
	return cpu, usage.Maxrss * 1024
}

// kindlingAdapt accepts the handler shapes a Go user would write.
func kindlingAdapt(handler any) (func(context.Context, []byte) ([]byte, error), error) {
	switch f := handler.(type) {
	case func([]byte) ([]byte, error):
		return func(_ context.Context, b []byte) ([]byte, error) { return f(b) }, nil
	case func([]byte) []byte:
		return func(_ context.Context, b []byte) ([]byte, error) { return f(b), nil }, nil
	case func([]byte) (string, error):
		return func(_ context.Context, b []byte) ([]byte, error) { s, err := f(b); return []byte(s), err }, nil
	case func([]byte) string:
		return func(_ context.Context, b []byte) ([]byte, error) { return []byte(f(b)), nil }, nil
	case func(context.Context, []byte) ([]byte, error):
		return f, nil
	case func(context.Context, []byte) (string, error):
		return func(ctx context.Context, b []byte) ([]byte, error) { s, err := f(ctx, b); return []byte(s), err }, nil
	}
	return nil, fmt.Errorf("the handler is a %T; write func(body []byte) ([]byte, error) (or return string, or take a context.Context first)", handler)
}

// kindlingCall runs the handler, turning a panic into an error with its stack.
func kindlingCall(handler func(context.Context, []byte) ([]byte, error), body []byte) (out []byte, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic: %v\n\n%s", r, debug.Stack())
		}
	}()
	return handler(context.Background(), body)
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: PROGRAM SOCKET")
		os.Exit(2)
	}
	conn, err := net.Dial("unix", os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "kindling agent:", err)
		os.Exit(1)
	}
	agent := &kindlingAgent{conn: conn, flushed: make(chan struct{}, 1)}
	handler, err := kindlingAdapt(kindlingHandler)
	if err != nil {
		_ = agent.send(kindlingError, 0, []byte("loading the handler failed: "+err.Error()))
		os.Exit(1)
	}
	reader, writer, err := os.Pipe()
	if err != nil {
		_ = agent.send(kindlingError, 0, []byte("loading the handler failed: "+err.Error()))
		os.Exit(1)
	}
	os.Stdout, os.Stderr = writer, writer
	go agent.forwardOutput(reader)
	hello, _ := json.Marshal(map[string]any{"version": kindlingAgentVersion, "runtime": "go", "pid": os.Getpid()})
	if err := agent.send(kindlingHello, 0, hello); err != nil {
		os.Exit(1)
	}
	in := bufio.NewReaderSize(conn, 256*1024)
	var body []byte
	for {
		kind, id, payload, err := agent.read(in)
		if err != nil {
			if errors.Is(err, io.EOF) {
				os.Exit(0)
			}
			os.Exit(1)
		}
		switch kind {
		case kindlingInvoke:
			body = body[:0]
			var options struct {
				Traceparent string `json:"traceparent"`
			}
			if len(payload) > 0 && json.Unmarshal(payload, &options) == nil && options.Traceparent != "" {
				_ = os.Setenv("TRACEPARENT", options.Traceparent)
			} else {
				_ = os.Unsetenv("TRACEPARENT")
			}
		case kindlingBodyChunk:
			body = append(body, payload...)
		case kindlingBodyEnd:
			started := time.Now()
			cpuStart, _ := kindlingCPU()
			agent.mu.Lock()
			agent.current = id
			agent.mu.Unlock()
			out, callErr := kindlingCall(handler, body)
			// Everything the call wrote goes out before its result.
			_, _ = writer.Write(kindlingFlushMark)
			<-agent.flushed
			agent.mu.Lock()
			agent.current = 0
			agent.mu.Unlock()
			cpu, maxRSS := kindlingCPU()
			report := kindlingUsageReport{CPUMs: max(0, cpu-cpuStart), MaxRSSBytes: maxRSS}
			if callErr != nil {
				usage, _ := json.Marshal(report)
				_ = agent.send(kindlingUsage, id, usage)
				_ = agent.send(kindlingError, id, []byte(callErr.Error()))
				continue
			}
			for len(out) > 0 {
				n := min(len(out), kindlingMaxChunk)
				_ = agent.send(kindlingResultChunk, id, out[:n])
				out = out[n:]
			}
			report.DurationMs = float64(time.Since(started).Microseconds()) / 1000
			end, _ := json.Marshal(report)
			_ = agent.send(kindlingResultEnd, id, end)
		case kindlingPing:
			_ = agent.send(kindlingPong, id, nil)
		}
	}
}
