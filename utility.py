"""Flags, timing and metrics helpers shared by every script."""
import argparse
import contextlib
import io
import os
import sys
import time
import warnings

# Importing paddle forces OMP_NUM_THREADS=1 when it is unset, which makes CPU training single-threaded.
# Every script and the test suite import this module before paddle, so the default here is all cores.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, str(os.cpu_count() or 1))
# Paddle's C++ info and warning lines would drown the one-line-per-step log; errors still show.
os.environ.setdefault("GLOG_minloglevel", "2")
warnings.filterwarnings("ignore", category=UserWarning, module=r"paddle\.")


def _import_paddle_without_its_thread_warning():
    """Imports paddle once, dropping the two lines it prints to stderr whenever OMP_NUM_THREADS > 1 (set above on
    purpose; they warn about data parallelism and OpenBLAS builds, neither of which applies). Anything else it prints
    is passed on."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            import paddle  # noqa: F401
    finally:
        for line in captured.getvalue().splitlines(keepends=True):
            if not line.startswith(("WARNING: OMP_NUM_THREADS set to", "PLEASE USE OMP_NUM_THREADS WISELY")):
                sys.stderr.write(line)


_import_paddle_without_its_thread_warning()

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

    Booleans accept True/False/1/0/yes/no, as `--use_gpu=False` in the README.
    """
    type = str2bool if type == bool else type
    argparser.add_argument(
        "--" + argname,
        default=default,
        type=type,
        help=help + " Default: %(default)s.",
        **kwargs)


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


def cuda_is_compiled():
    import paddle
    return paddle.is_compiled_with_cuda()


def usage_error(message):
    """Stops the script with a one-line error and argparse's exit code 2; the message names the flag."""
    sys.stderr.write("error: %s\n" % message)
    sys.exit(2)


def flag_error(flag, message):
    usage_error("--%s: %s" % (flag, message))


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line naming the flag, as flag_error's, not the whole usage first."""

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


def check_cuda(use_gpu):
    """Fails with a clear message when --use_gpu=True is asked of a CPU build of Paddle."""
    if use_gpu and not cuda_is_compiled():
        flag_error("use_gpu", "True, but this PaddlePaddle is a CPU build. Run with --use_gpu=False, "
                   "or install paddlepaddle-gpu (same major version).")


def recall_topk(fea, lab, k=1):
    """Recall@k as the original: L2-normalised features, Euclidean distance, the query itself excluded.

    Computed exactly by metrics.py in blocks; ties between a positive and a negative count against the positive.
    """
    import metrics
    return metrics.retrieval_metrics(fea, lab, recall_ks=(k,))["recall@%d" % k]
