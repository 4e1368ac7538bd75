"""What every script shares besides Paddle: flags in the original's `--name=value` style, log lines, progress bars
and one-line errors. Plain Python: importing it neither imports Paddle nor sets anything up.
"""
import argparse
import collections
import contextlib
import os
import signal
import sys
import tempfile
import time

TRUE_WORDS = ("true", "t", "yes", "y", "1", "on")
FALSE_WORDS = ("false", "f", "no", "n", "0", "off")


def str2bool(text):
    """Parses a boolean flag value; distutils.util.strtobool is gone from new Pythons."""
    word = str(text).strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise argparse.ArgumentTypeError("expected True/False, 1/0 or yes/no, got %r" % text)


def add_arguments(argname, type, default, help, argparser, **kwargs):
    """Adds `--argname` to `argparser`, in the original suite's call form.

    Booleans accept True/False/1/0/yes/no, as `--use_gpu=True` in the README.
    """
    type = str2bool if type == bool else type
    argparser.add_argument(
        "--" + argname,
        default=default,
        type=type,
        help=help + " Default: %(default)s.",
        **kwargs)


class Flag(collections.namedtuple("Flag", "name type default help check")):
    """One command-line flag: declared once, added to every parser that takes it.

    `check(value)` returns what is wrong with a parsed value (a phrase such as "must be positive, got 0"), or None;
    `ArgumentParser.parse_args` applies it, so a bad value stops the script before anything is built.
    """

    def __new__(cls, name, type, default, help, check=None):
        return super().__new__(cls, name, type, default, help, check)


def positive(value):
    return None if value > 0 else "must be positive, got %s" % value


def non_negative(value):
    return None if value >= 0 else "must not be negative, got %s" % value


def one_of(choices):
    """A check that the value is a key of `choices`, read when checking, so that later registrations count."""
    def check(value):
        return None if value in choices else "%r is not one of %s" % (value, ", ".join(choices))
    return check


def output_problem(path, kind):
    """Why `path` cannot be written, or None. `kind` is how it is written: "file" (a file written beside it and renamed
    over it), "directory" (a directory files are written into) or "renamed directory" (a directory written beside it
    and renamed over it).

    Checked by creating and deleting an empty file where the first new entry will appear: in the directory itself if
    it exists, else in the nearest existing directory above it. Permission bits would say nothing for root, on a
    read-only file system or in /proc; only trying tells.
    """
    path = os.path.abspath(path)
    wants_directory = kind != "file"
    if os.path.exists(path) and os.path.isdir(path) != wants_directory:
        return "%s cannot be written: it %s a directory" % (path, "is not" if wants_directory else "is")
    nearest = path if kind == "directory" else os.path.dirname(path)
    while not os.path.exists(nearest):
        nearest = os.path.dirname(nearest)
    if not os.path.isdir(nearest):
        return "%s cannot be written: %s is not a directory" % (path, nearest)
    try:
        descriptor, probe = tempfile.mkstemp(prefix=".write-check-", dir=nearest)
        os.close(descriptor)
        os.remove(probe)
    except OSError as error:
        return "%s cannot be written: cannot create files in %s (%s)" % (path, nearest, error.strerror)
    return None


def writable_file(path):
    return output_problem(path, "file")


def writable_directory(path):
    return output_problem(path, "directory")


class OutputError(RuntimeError):
    """An output that could not be written (a full disk, say); the message names it."""


STAGING_MARK = ".writing-"  # atomic_output's hidden files: .<name>.writing-<pid>


def is_staging_name(name):
    """Whether a file name is one of atomic_output's hidden files: one left there by a process that was killed."""
    return name.startswith(".") and STAGING_MARK in name


@contextlib.contextmanager
def atomic_output(path, mode="w"):
    """A file to write that appears under `path` only complete: it is written to a hidden file beside `path`, flushed
    to disk, then renamed over it. On any failure or interruption the hidden file is removed and `path` is left as it
    was; an OSError becomes an OutputError naming `path`.
    """
    directory, name = os.path.split(os.path.abspath(path))
    staging = os.path.join(directory, ".%s%s%d" % (name, STAGING_MARK, os.getpid()))
    try:
        os.makedirs(directory, exist_ok=True)
        with open(staging, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(staging, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.remove(staging)
        if isinstance(error, OSError):
            raise OutputError("%s: cannot be written (%s: %s)" % (path, type(error).__name__, error)) from None
        raise


def print_arguments(args):
    """Prints every flag and its value, one per line, as the original did at start-up."""
    print("-----------  Configuration Arguments -----------")
    for name, value in sorted(vars(args).items()):
        print("%s: %s" % (name, value))
    print("------------------------------------------------")
    sys.stdout.flush()


def fmt_time():
    """The timestamp at the start of every log line."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())


def log(message):
    """Prints one log line with the original's `[time] message` format, flushed at once."""
    print("[%s] %s" % (fmt_time(), message), flush=True)


def progress_bar(total, description, unit="img"):
    """A tqdm bar with rate and ETA on stdout; silent when stdout is not a terminal, so logs and pipes stay clean.

    Use it as a context manager and call `update(n)`; print through its `write` while it is shown. It is cleared
    when done: a log line normally follows with the result.
    """
    from tqdm import tqdm
    return tqdm(total=total, desc=description, unit=unit, file=sys.stdout, disable=not sys.stdout.isatty(),
                leave=False, dynamic_ncols=True)


def parse_int_list(text):
    """Parses a comma-separated list of integers such as `--lr_steps=15000,25000`."""
    if isinstance(text, (list, tuple)):
        return [int(value) for value in text]
    try:
        return [int(value) for value in str(text).split(",") if value.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("expected comma-separated integers, got %r" % text)


def parse_image_shape(text):
    """Parses `--image_shape=3,224,224` into (channels, height, width)."""
    shape = parse_int_list(text)
    if len(shape) != 3 or min(shape) <= 0:
        raise argparse.ArgumentTypeError("expected C,H,W with three positive integers, got %r" % text)
    return tuple(shape)


def usage_error(message):
    """Stops the script with a one-line error and argparse's exit code 2; the message names the flag."""
    sys.stderr.write("error: %s\n" % message)
    sys.exit(2)


def flag_error(flag, message):
    usage_error("--%s: %s" % (flag, message))


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the suite's flags: one-line errors naming the flag, and each `Flag`'s check applied on parsing."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.flags = {}

    def add_flags(self, flags, **defaults):
        """Adds each `Flag` once (a flag two groups share is the same object); `defaults` override declared ones."""
        for flag in flags:
            if flag.name in self.flags:
                if self.flags[flag.name] is not flag:
                    raise ValueError("--%s is declared twice, differently" % flag.name)
                continue
            add_arguments(flag.name, flag.type, defaults.pop(flag.name, flag.default), flag.help, self)
            self.flags[flag.name] = flag
        if defaults:
            raise ValueError("defaults given for flags this parser does not take: %s" % ", ".join(defaults))

    def parse_known_args(self, args=None, namespace=None):
        """Parses, then applies each flag's check to its parsed value. Overriding this rather than parse_args
        covers subcommands: argparse parses a subcommand's flags with its parser's parse_known_args."""
        parsed, extras = super().parse_known_args(args, namespace)
        for name, flag in self.flags.items():
            value = getattr(parsed, name)
            problem = flag.check(value) if flag.check and value is not None else None  # None: not given
            if problem:
                flag_error(name, problem)
        return parsed, extras

    def error(self, message):
        usage_error("%s (see --help)" % message)


@contextlib.contextmanager
def exit_on(*error_types):
    """Ends the script with a one-line `error: ...` and exit code 1 on the failures a user can act on.

    A context manager or a decorator. The errors meant here (a bad file, a killed worker, a full disk) name their
    cause in their message's first line; a traceback would only bury it.
    """
    try:
        yield
    except error_types as error:
        sys.stderr.write("error: %s\n" % (str(error).splitlines() or [type(error).__name__])[0])
        sys.exit(1)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # Ctrl-C, and how schedulers and launchers stop a job


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived. A BaseException, as KeyboardInterrupt: no `except Exception` handles it by mistake."""

    def __init__(self, signum):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _Holds:
    """How many `signals_held` blocks the script is in, and the signal that arrived meanwhile."""
    depth = 0
    pending = None


def interrupt(signum):
    """Raises Interrupted for `signum` now, or, inside a `signals_held` block, as the outermost one ends."""
    if _Holds.depth:
        _Holds.pending = signum
        return
    raise Interrupted(signum)


@contextlib.contextmanager
def signals_held():
    """Holds SIGINT and SIGTERM back while Paddle sets a program up (builds, rewrites, loads or exports it). Paddle's
    C++ calls back into Python there, and an exception raised in such a callback crashes it (a segmentation fault or
    an unrelated error) instead of stopping the script. A signal that arrives in the block stops the script right
    after it."""
    _Holds.depth += 1
    try:
        yield
    finally:
        _Holds.depth -= 1
    if not _Holds.depth and _Holds.pending is not None:
        raise Interrupted(_Holds.pending)


def _on_stop_signal(signum, frame):
    # Later signals are ignored, so that the clean-up on the way out (reader workers, temporary files) is not cut
    # short: paddle.distributed.launch repeats its SIGTERM, and a scheduler sends one to every process of a job.
    for stop_signal in STOP_SIGNALS:
        signal.signal(stop_signal, signal.SIG_IGN)
    interrupt(signum)


@contextlib.contextmanager
def exit_on_signals():
    """Ends the script on Ctrl-C (SIGINT) or SIGTERM as on an error: `Interrupted` is raised where the script is (or
    after the `signals_held` block it is in), so every block it is in closes its files and reader workers; then one
    line says what stopped it and the exit code is 128 + the signal number (130, 143). A context manager or a
    decorator.

    A signal the script was started with ignored (`nohup`, a shell's background job) stays ignored.
    """
    previous = {}
    _Holds.pending = None
    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) != signal.SIG_IGN:
            previous[signum] = signal.signal(signum, _on_stop_signal)
    try:
        yield
    except Interrupted as interruption:
        log("stopped by %s" % interruption)
        sys.exit(128 + interruption.signum)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
