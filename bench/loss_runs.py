"""The loss configurations bench/loss_speed.py and bench/loss_recall.py compare: every loss of the registry, the
triplet loss once per --miner, and a twin with the cross-batch memory where a loss can keep one."""
import losses


def loss_variants(loss_name):
    """(row name, loss flags, whether a cross-batch memory twin applies) of each configuration of `loss_name`."""
    loss_class = losses.LOSSES[loss_name]
    miners = [losses.NO_MINER] + sorted(losses.MINERS) if losses.MINER in loss_class.flags else [None]
    for miner in miners:
        flags = {"loss_name": loss_name}
        if miner not in (None, losses.NO_MINER):
            flags["miner"] = miner
        name = loss_name if "miner" not in flags else "%s --miner=%s" % (loss_name, miner)
        yield name, flags, losses.XBM_SIZE in loss_class.flags and miner != losses.NO_MINER
