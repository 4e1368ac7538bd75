"""What every script shares besides Paddle: flags in the original's `--name=value` style, log lines, progress bars
and one-line errors. Plain Python: importing it neither imports Paddle nor sets anything up.
"""
import argparse
import collections
import contextlib
import sys
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

    def parse_args(self, args=None, namespace=None):
        return self.check_flags(super().parse_args(args, namespace))

    def check_flags(self, parsed):
        """Applies each flag's check to its parsed value (argparse does not call a subcommand parser's
        parse_args, so a script with subcommands calls this on the chosen one)."""
        for name, flag in self.flags.items():
            value = getattr(parsed, name)
            problem = flag.check(value) if flag.check and value is not None else None  # None: not given
            if problem:
                flag_error(name, problem)
        return parsed

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
