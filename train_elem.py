"""Trains an embedding network with a classification loss: softmax or arcmargin (ArcFace).

    python train_elem.py --model=ResNet50 --loss_name=arcmargin --arc_scale=80.0 --arc_margin=0.15 ...
"""
import argparse
import math

import utility  # first: sets the CPU thread count before paddle is imported
import losses
import trainer
import training_flags
from utility import add_arguments

DEFAULTS = dict(model="ResNet50", embedding_size=0, image_shape=(3, 224, 224), train_batch_size=256,
                test_batch_size=50, lr=0.01, lr_steps=[15000, 25000], total_iter_num=30000, display_iter_step=10,
                test_iter_step=1000, save_iter_step=1000, loss_name="softmax", loss_choices=losses.ELEM_LOSSES)


def make_parser():
    parser = utility.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    training_flags.add_training_arguments(parser, DEFAULTS)
    add_arguments("class_dim", int, 11318, "Number of training classes (SOP: 11318).", parser)
    add_arguments("arc_scale", float, 80.0, "arcmargin: logit scale s.", parser)
    add_arguments("arc_margin", float, 0.15, "arcmargin: angular margin m in radians.", parser)
    add_arguments("arc_easy_margin", bool, False, "arcmargin: apply the margin only where the cosine is positive.",
                  parser)
    return parser


def make_loss(args):
    if args.class_dim <= 0:
        utility.flag_error("class_dim", "must be positive, got %d" % args.class_dim)
    if args.loss_name == "arcmargin" and args.arc_scale <= 0:
        utility.flag_error("arc_scale", "must be positive, got %s" % args.arc_scale)
    if args.loss_name == "arcmargin" and not 0 <= args.arc_margin < math.pi / 2:
        utility.flag_error("arc_margin", "must be an angle in [0, pi/2) radians, got %s" % args.arc_margin)
    if args.loss_name == "softmax":
        return losses.SoftmaxLoss(class_dim=args.class_dim)
    return losses.ArcMarginLoss(class_dim=args.class_dim, margin=args.arc_margin, scale=args.arc_scale,
                                easy_margin=args.arc_easy_margin)


def main(argv=None):
    args = training_flags.parse_training_arguments(make_parser(), losses.ELEM_LOSSES, argv)
    trainer.train(args, make_loss(args))


if __name__ == "__main__":
    main()
