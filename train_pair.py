"""Fine-tunes an embedding network with a loss on pairs inside the batch: triplet, quadruplet, eml, npairs
or multisimilarity.

    python train_pair.py --model=ResNet50 --loss_name=eml --samples_each_class=2 \
        --pretrained_model=output/ResNet50/30000 ...
"""
import argparse

import utility  # first: sets the CPU thread count before paddle is imported
import losses
import trainer
import training_flags
from utility import add_arguments

DEFAULTS = dict(model="ResNet50", embedding_size=0, image_shape=(3, 224, 224), train_batch_size=120,
                test_batch_size=50, lr=0.0001, lr_steps=[100000], total_iter_num=100000, display_iter_step=10,
                test_iter_step=5000, save_iter_step=5000, loss_name="triplet", loss_choices=losses.PAIR_LOSSES)


def make_parser():
    parser = utility.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    training_flags.add_training_arguments(parser, DEFAULTS)
    add_arguments("samples_each_class", int, 2, "quadruplet, eml, npairs, multisimilarity: images of each class "
                  "in a batch.", parser)
    add_arguments("margin", float, 0.1, "triplet, quadruplet: the margin.", parser)
    add_arguments("npairs_reg_lambda", float, 0.01, "npairs: weight of the embedding-norm regulariser.", parser)
    add_arguments("ms_alpha", float, 2.0, "multisimilarity: scale of the positive pairs' term.", parser)
    add_arguments("ms_beta", float, 50.0, "multisimilarity: scale of the negative pairs' term.", parser)
    add_arguments("ms_base", float, 0.5, "multisimilarity: the similarity the pairs are pushed across.", parser)
    add_arguments("ms_epsilon", float, 0.1, "multisimilarity: mining margin; pairs easier than this are left out.",
                  parser)
    return parser


def make_loss(args):
    """Pair losses see the per-process batch; their constructors check it against --samples_each_class."""
    batch_size = training_flags.per_process_batch_size(args)
    if args.samples_each_class < 1:  # whatever the loss: a negative size is a typo, not a setting
        utility.flag_error("samples_each_class", "must be positive, got %d" % args.samples_each_class)
    try:
        if args.loss_name == "triplet":
            return losses.TripletLoss(margin=args.margin, train_batch_size=batch_size)
        if args.loss_name == "quadruplet":
            return losses.QuadrupletLoss(batch_size, args.samples_each_class, margin=args.margin)
        if args.loss_name == "eml":
            return losses.EmlLoss(batch_size, args.samples_each_class)
        if args.loss_name == "npairs":
            return losses.NpairsLoss(batch_size, args.samples_each_class, reg_lambda=args.npairs_reg_lambda)
        return losses.MultiSimilarityLoss(batch_size, args.samples_each_class, alpha=args.ms_alpha, beta=args.ms_beta,
                                          base=args.ms_base, epsilon=args.ms_epsilon)
    except ValueError as error:  # the message starts with the offending --flag=value
        if batch_size != args.train_batch_size:
            error = "%s (the share of each of %d processes of --train_batch_size=%d)" % (
                error, args.train_batch_size // batch_size, args.train_batch_size)
        utility.usage_error(str(error))


def main(argv=None):
    args = training_flags.parse_training_arguments(make_parser(), losses.PAIR_LOSSES, argv)
    trainer.train(args, make_loss(args))


if __name__ == "__main__":
    main()
