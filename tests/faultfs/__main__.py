"""faultfs by hand (run with tests/ on PYTHONPATH):

    python -m faultfs mount BACKING MOUNTPOINT [--ctl SOCKET] [--stall-cap S] [--max-threads N] [--debug]
    python -m faultfs ctl SOCKET COMMAND [ARGS...]      e.g. ctl /tmp/f.ctl latency /root1 2

`mount` serves in the foreground until SIGTERM/SIGINT or `umount`; the commands are in rules.py.
"""

import argparse
import os
import shlex
import sys

from .mount import FaultFSError, send


def main(argv):
    parser = argparse.ArgumentParser(prog="python -m faultfs", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("mount", help="mount BACKING at MOUNTPOINT and serve in the foreground")
    m.add_argument("backing")
    m.add_argument("mountpoint")
    m.add_argument("--ctl", help="control socket (default: MOUNTPOINT.ctl)")
    m.add_argument("--stall-cap", type=float, default=120.0, help="a stalled read fails with EIO after S s")
    m.add_argument("--max-threads", type=int, default=64, help="libfuse worker threads at most")
    m.add_argument("--debug", action="store_true", help="libfuse's request trace on stderr")
    c = sub.add_parser("ctl", help="send one rule command to a mounted faultfs")
    c.add_argument("socket")
    c.add_argument("words", nargs="+")
    args = parser.parse_args(argv)

    if args.cmd == "ctl":
        try:
            print(send(args.socket, " ".join(shlex.quote(w) for w in args.words)))
        except (OSError, FaultFSError) as e:
            print(e, file=sys.stderr)
            return 1
        return 0

    if not os.path.isdir(args.backing):
        parser.error(f"backing directory {args.backing} does not exist")
    from .fs import serve  # imports mfusepy, which needs libfuse: only when mounting

    serve(args.backing, args.mountpoint, args.ctl or args.mountpoint.rstrip("/") + ".ctl",
          stall_cap_s=args.stall_cap, max_threads=args.max_threads, debug=args.debug)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
