"""Port of torch7 CmdLine:log's print redirection (everything printed also lands in log.txt) and the project's
user-error type; imports nothing from the project so every module can use it."""
import sys


class UserError(Exception):
    """A problem the user can fix. main.py prints the message as one line on stderr and exits non-zero."""


def first_line(error):
    """The first line of an exception's message (torch's go on with a C++ stack), or its type's name."""
    return next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)


def lua_tostring(value):
    """tostring() of LuaJIT: numbers with %.14g, nil/true/false spelled as Lua does."""
    if value is None:
        return 'nil'
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, float):
        return '%.14g' % value
    return str(value)


class _Tee:
    """Stands in for sys.stdout: text printed by any module goes to the terminal and to log.txt."""

    def __init__(self, stream, log):
        self.stream = stream
        self.log = log

    def write(self, text):
        self.stream.write(text)
        self.log.write(text)
        return len(text)

    def flush(self):
        self.stream.flush()
        self.log.flush()

    def isatty(self):
        return self.stream.isatty()

    def fileno(self):
        return self.stream.fileno()

    def __getattr__(self, name):
        return getattr(self.stream, name)


class Console:
    """Lua's print() after CmdLine:log: tab-separated on stdout, space-separated with a trailing ' ' in log.txt.

    `quiet` silences a process entirely (DDP ranks other than 0 print nothing, as only one Lua process existed).
    """

    def __init__(self):
        self.log = None
        self.stream = sys.stdout
        self.quiet = False
        self.before_write = None

    def open_log(self, path, header, append=False):
        """Start copying everything printed to `path`, beginning with CmdLine:log's `header` text."""
        self.close()
        self.stream = sys.stdout
        # line buffering: a run killed at any moment leaves whole lines in log.txt
        self.log = open(path, 'a' if append else 'w', buffering=1, encoding='utf-8')
        sys.stdout = _Tee(self.stream, self.log)
        self.stream.write(header)
        self.log.write(header)
        self.flush()

    def close(self):
        if self.log is not None:
            if isinstance(sys.stdout, _Tee) and sys.stdout.log is self.log:
                sys.stdout = self.stream
            self.log.close()
            self.log = None

    def flush(self):
        (self.stream if self.log is not None else sys.stdout).flush()
        if self.log is not None:
            self.log.flush()

    def print(self, *args):
        if self.quiet:
            return
        words = [lua_tostring(a) for a in args]
        if self.before_write is not None:
            with self.before_write():
                self._write(words)
        else:
            self._write(words)

    def _write(self, words):
        out = self.stream if self.log is not None else sys.stdout
        out.write('\t'.join(words) + '\n')
        out.flush()
        if self.log is not None:
            self.log.write(' '.join(words + ['\n']))
            self.log.flush()


console = Console()


def lua_print(*args):
    """print() as the Lua programs saw it once CmdLine:log had replaced it."""
    console.print(*args)
