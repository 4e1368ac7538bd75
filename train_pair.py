r"""Fine-tunes an embedding network with a loss on pairs inside the batch: triplet (with --miner: batch_hard,
semi_hard or all), quadruplet, eml, npairs, multisimilarity, contrastive or circle; contrastive, multisimilarity,
circle and the mined triplet also against a cross-batch memory of past embeddings (--xbm_size).

    python train_pair.py --model=ResNet50 --loss_name=eml --samples_each_class=2 \
        --pretrained_model=output/ResNet50/30000 ...
    python train_pair.py --model=ResNet50 --loss_name=contrastive --samples_each_class=4 \
        --xbm_size=55000 --xbm_start_iter=1000 --pretrained_model=output/ResNet50/30000 ...
"""
import losses
from core import trainer

DEFAULTS = dict(train_batch_size=120, lr=0.0001, lr_steps=[100000], total_iter_num=100000, test_iter_step=5000,
                save_iter_step=5000, loss_name="triplet")


def make_parser():
    # --class_dim, as the original's train_pair.py: accepted so that train_elem.py's command lines carry over.
    return trainer.make_parser(__doc__, has_classifier=False, defaults=DEFAULTS, extra_flags=[losses.CLASS_DIM])


def main(argv=None):
    trainer.train(make_parser().parse_args(argv))


if __name__ == "__main__":
    main()
