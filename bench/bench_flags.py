"""Flags the benchmarks share: --quick (a smoke test's tiny sizes), names checked against a registry, the toy data
set's size, the batch a pair-loss comparison needs, and the selection passes a search is timed on. Paddle-free, like
utility, so light benchmarks stay light."""
import os
import sys

import utility
from core import select_kernel


def add_quick_flag(parser, quick_flags):
    parser.add_argument("--quick", action="store_true", help="Tiny sizes for a smoke test: %s." % " ".join(quick_flags))


def parse_args(parser, quick_flags, argv=None):
    """`parser`'s flags; with --quick, `quick_flags` first and then the user's own, so that theirs win."""
    args = parser.parse_args(argv)
    if args.quick:
        args = parser.parse_args(quick_flags + (sys.argv[1:] if argv is None else argv))
    return args


def registered_names(flag, text, registry):
    """The comma-separated names of `--flag=text`, each checked against `registry` (exit 2 naming the flag)."""
    names = text.split(",")
    for name in names:
        if name not in registry:
            utility.flag_error(flag, "%r is not one of %s" % (name, ", ".join(registry)))
    return names


def check_at_least_one(args, flags):
    """Exit 2 naming the first of `flags` (counts: steps, rounds, sizes) that is below 1."""
    for flag in flags:
        if getattr(args, flag) < 1:
            utility.flag_error(flag, "must be at least 1, got %d" % getattr(args, flag))


def add_training_grid_flags(parser):
    """--models, --sides, --batch_sizes and --losses: the configurations a training benchmark times."""
    add = parser.add_argument
    add("--models", default="ResNet18,ResNet50", help="Comma-separated backbones. Default: %(default)s.")
    add("--sides", type=utility.parse_int_list, default=[64, 224], help="Input sides (3xSxS). Default: 64,224.")
    add("--batch_sizes", type=utility.parse_int_list, default=[32, 8], help="Training batch per side. Default: 32,8.")
    add("--losses", default="arcmargin,eml", help="Comma-separated losses. Default: %(default)s.")


def check_training_grid(args, model_registry, loss_registry, per_side=("batch_sizes",)):
    """The names of `add_training_grid_flags` checked and split; each flag of `per_side` has one value per side."""
    args.models = registered_names("models", args.models, model_registry)
    args.losses = registered_names("losses", args.losses, loss_registry)
    for flag in per_side:
        if len(getattr(args, flag)) != len(args.sides):
            utility.flag_error(flag, "needs one value per --sides entry")


def add_toy_set_flags(parser, work_dir, classes=300, image_size=80):
    add = parser.add_argument
    add("--train_classes", type=int, default=classes, help="Toy training products. Default: %(default)s.")
    add("--test_classes", type=int, default=classes, help="Toy test products. Default: %(default)s.")
    add("--image_size", type=int, default=image_size, help="Toy JPEG side. Default: %(default)s.")
    add("--work_dir", default=work_dir, help="Data set, checkpoints and logs. Default: %(default)s.")


def toy_set_dir(args):
    """Where the toy data set of `add_toy_set_flags`' sizes lives under --work_dir, one directory per size."""
    return os.path.join(args.work_dir, "toy_sop_%d_%d_%dpx" % (args.train_classes, args.test_classes, args.image_size))


def check_pair_batch(args):
    """Every pair loss, with or without its memory, takes `args.batch_size`: pairs and triples of a class fill it,
    and the cross-batch memory holds one."""
    if args.batch_size % 6:
        utility.flag_error("batch_size", "must be divisible by 6 (pairs of a class and triples), got %d"
                           % args.batch_size)
    if args.xbm_size < args.batch_size:
        utility.flag_error("xbm_size", "must hold a batch: at least --batch_size=%d" % args.batch_size)


def add_numpy_passes_flag(parser, what):
    parser.add_argument("--numpy_passes", type=utility.str2bool, default=True,
                        help="Also time %s on NumPy's passes, the C selection pass switched off. Default: True." % what)


def selection_passes(args):
    """(uses the C pass, its name) of each timing asked for: the C selection pass (NumPy's passes where it cannot be
    built), then NumPy's passes if --numpy_passes and the C pass is there to compare with."""
    if select_kernel.load() is None:
        return [(False, "NumPy's passes")]
    return [(True, "C selection pass")] + [(False, "NumPy's passes")] * bool(args.numpy_passes)
