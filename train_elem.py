"""Trains an embedding network with a classification loss: softmax, arcmargin (ArcFace), cosface (CosFace) or
proxyanchor (Proxy-Anchor, one learned proxy per class).

    python train_elem.py --model=ResNet50 --loss_name=arcmargin --arc_scale=80.0 --arc_margin=0.15 ...
"""
from core import trainer

DEFAULTS = dict(train_batch_size=256, lr=0.01, lr_steps=[15000, 25000], total_iter_num=30000, test_iter_step=1000,
                save_iter_step=1000, loss_name="softmax")


def make_parser():
    return trainer.make_parser(__doc__, has_classifier=True, defaults=DEFAULTS)


def main(argv=None):
    trainer.train(make_parser().parse_args(argv))


if __name__ == "__main__":
    main()
