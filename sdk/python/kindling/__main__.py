"""``python3 -m kindling run --runtime python -c 'print(1)'``: a tiny CLI for scripts. Output goes to stdout/stderr
as the program produced it; the exit status is the program's (2 for a usage error, 1 for a platform error)."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from ._errors import KindlingError
from ._sync import Kindling


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m kindling", description="Kindling client (KINDLING_URL, KINDLING_API_KEY)")
    parser.add_argument("--url", help="server URL (default: KINDLING_URL or http://127.0.0.1:8080)")
    parser.add_argument("--api-key", help="API key (default: KINDLING_API_KEY)")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run code (-c or a file) or a command in a fresh sandbox")
    run.add_argument("--runtime", help="bash, python, node, rust, python3.11, python3.13, node18, node20, deno, bun, go or java (with -c or FILE)")
    run.add_argument("-c", "--code", help="source code to run")
    run.add_argument("--image", help="image of a command, e.g. kindling/base (with the command after --)")
    run.add_argument("--timeout", type=float, help="wall-clock limit of the program in seconds")
    run.add_argument("--stdin", action="store_true", help="feed this process's stdin to the program")
    run.add_argument("args", nargs="*", help="FILE with --runtime, or the command with --image")
    options = parser.parse_args(argv)

    spec: dict[str, object] = {}
    if options.image:
        if not options.args:
            parser.error("--image needs a command, e.g. --image kindling/base -- sh -c 'echo hi'")
        spec.update(image=options.image, command=list(options.args))
    elif options.runtime:
        if options.code is None:
            if len(options.args) != 1:
                parser.error("--runtime needs -c CODE or one FILE")
            with open(options.args[0], encoding="utf-8") as handle:
                options.code = handle.read()
        spec.update(runtime=options.runtime, code=options.code)
    else:
        parser.error("give --runtime (with -c CODE or FILE) or --image with a command")
    if options.timeout is not None:
        spec["timeout"] = options.timeout
    if options.stdin:
        spec["stdin"] = sys.stdin.buffer.read()
    try:
        with Kindling(options.url, options.api_key) as client:
            result = client.execute(
                spec,
                on_stdout=lambda text: (sys.stdout.write(text), sys.stdout.flush()),
                on_stderr=lambda text: (sys.stderr.write(text), sys.stderr.flush()),
            )
    except KindlingError as error:
        print(f"kindling: {error}", file=sys.stderr)
        return 1
    if result.timed_out:
        print(f"kindling: timed out after {result.duration_ms:.0f} ms", file=sys.stderr)
    return result.exit_code if 0 <= result.exit_code < 256 else 1


if __name__ == "__main__":
    sys.exit(main())
