"""The fault rules of one faultfs mount: which path prefix gets which fault, changed on command.

Pure bookkeeping, no FUSE and no sockets, so the command language is tested on its own. The
filesystem (fs.py) asks `fault(path)` on every operation and sleeps, blocks or fails as told.

One rule per prefix; a path matches a prefix when it is the prefix or lies under it ("/a" matches
"/a" and "/a/b", not "/ab"); the longest matching prefix wins, so `eio /root1` next to
`latency / 2` fails root1 and slows everything else.

Commands (one per line, words split as a shell would):
    latency PREFIX MS [meta]   add MS ms to every read; with `meta`, to open/getattr/readdir too
    eio PREFIX [open]          reads fail with EIO; with `open`, opening fails with EIO too
    stall PREFIX               reads block until the rule changes, or fail with EIO after the cap
    vanish PREFIX              the subtree is gone: path lookups ENOENT, I/O on held descriptors EIO
    readonly PREFIX            writes, creates, unlinks, renames fail with EROFS (a remount ro)
    clear [PREFIX]             remove that prefix's rule, or every rule
    rules                      the rules in force, as JSON
    stalled                    how many reads are blocked by stall rules right now
    ping                       "ok" once the mount serves
"""

import json
import shlex
import threading
import time
from dataclasses import asdict, dataclass

KINDS = ("latency", "eio", "stall", "vanish", "readonly")


@dataclass(frozen=True)
class Rule:
    """One fault on one prefix. `ms` is only for latency; `wide` is latency's `meta` or eio's `open`."""

    kind: str
    ms: float = 0.0
    wide: bool = False


class CommandError(ValueError):
    """A control command that does not parse; its text goes back to the sender."""


def normalize(prefix):
    """Prefixes are absolute paths inside the mount, without a trailing slash (except "/")."""
    if not prefix.startswith("/"):
        raise CommandError(f"prefix must start with '/': {prefix!r}")
    return "/" + prefix.strip("/") if prefix != "/" else "/"


def under(path, prefix):
    return prefix == "/" or path == prefix or path.startswith(prefix + "/")


class Rules:
    """The rule table, shared by every FUSE worker thread and the control thread."""

    def __init__(self, stall_cap_s):
        self.stall_cap_s = stall_cap_s
        self._rules = {}
        self._stalled = 0  # reads blocked right now, so a test can wait for its read to arrive
        # A changed rule wakes every stalled read so it can look again (a Condition, not polling).
        self._changed = threading.Condition()

    def fault(self, path):
        """The rule that applies to `path`, or None."""
        with self._changed:
            return self._match(path)

    def _match(self, path):
        best = None
        for prefix, rule in self._rules.items():
            if under(path, prefix) and (best is None or len(prefix) > len(best[0])):
                best = (prefix, rule)
        return best[1] if best else None

    def wait_while_stalled(self, path):
        """Block while `path` is under a stall rule. Returns False if the safety cap ran out.

        The cap is there so that a test that forgets to clear a stall fails with EIO instead of
        hanging its process forever; a real disk's I/O timeout also ends in EIO."""
        deadline = time.monotonic() + self.stall_cap_s
        with self._changed:
            self._stalled += 1
            try:
                while (rule := self._match(path)) is not None and rule.kind == "stall":
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self._changed.wait(left)
                return True
            finally:
                self._stalled -= 1

    def set(self, prefix, rule):
        with self._changed:
            self._rules[normalize(prefix)] = rule
            self._changed.notify_all()

    def clear(self, prefix=None):
        with self._changed:
            if prefix is None:
                self._rules.clear()
            else:
                self._rules.pop(normalize(prefix), None)
            self._changed.notify_all()

    def snapshot(self):
        with self._changed:
            return {prefix: asdict(rule) for prefix, rule in sorted(self._rules.items())}

    def command(self, line):
        """Apply one control command; returns the reply text. Raises CommandError."""
        words = shlex.split(line)
        if not words:
            raise CommandError("empty command")
        verb, args = words[0], words[1:]
        if verb == "ping":
            return "ok"
        if verb == "rules":
            return json.dumps(self.snapshot())
        if verb == "stalled":
            with self._changed:
                return str(self._stalled)
        if verb == "clear":
            if len(args) > 1:
                raise CommandError("usage: clear [PREFIX]")
            self.clear(args[0] if args else None)
            return "ok"
        if verb not in KINDS:
            raise CommandError(f"unknown command {verb!r}; known: {', '.join(KINDS)}, clear, rules, stalled, ping")
        self.set(*_parse_rule(verb, args))
        return "ok"


def _parse_rule(verb, args):
    if not args:
        raise CommandError(f"usage: {verb} PREFIX ...")
    prefix, rest = args[0], args[1:]
    if verb == "latency":
        if len(rest) not in (1, 2) or (len(rest) == 2 and rest[1] != "meta"):
            raise CommandError("usage: latency PREFIX MS [meta]")
        try:
            ms = float(rest[0])
        except ValueError:
            raise CommandError(f"latency wants milliseconds, got {rest[0]!r}") from None
        if ms < 0:
            raise CommandError("latency must not be negative")
        return prefix, Rule("latency", ms=ms, wide=len(rest) == 2)
    if verb == "eio":
        if rest not in ([], ["open"]):
            raise CommandError("usage: eio PREFIX [open]")
        return prefix, Rule("eio", wide=bool(rest))
    if rest:
        raise CommandError(f"usage: {verb} PREFIX")
    return prefix, Rule(verb)
