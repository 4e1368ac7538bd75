"""What the loss tests share: running a loss graph, building a loss from its flags, batches, finite differences, and
float64 NumPy references of the pair losses in their (queries, references) form, written from the papers' formulas."""
import numpy as np
import paddle
import pytest

import losses
import utility

FEATURE_DIM = 5
PLACE = paddle.CPUPlace()


@pytest.fixture(autouse=True)
def static_mode():
    paddle.enable_static()
    yield
    paddle.disable_static()


def run_loss(make_loss, features, labels, dtype="float32", parameters=None, probe=None):
    """Builds `make_loss().loss` in a fresh program and scope and runs it on one batch.

    Returns (outputs, parameter values, gradient w.r.t. the features or None). The gradient is of
    sum(outputs[0] * probe): random probe weights check every output's gradient, not only their sum;
    probe="sum" takes the plain sum. `parameters` overwrites named parameters after initialisation.
    """
    main, startup, scope = paddle.static.Program(), paddle.static.Program(), paddle.static.Scope()
    with paddle.static.scope_guard(scope), paddle.utils.unique_name.guard(), \
            paddle.static.program_guard(main, startup):
        x = paddle.static.data("features", [-1, features.shape[1]], dtype)
        x.stop_gradient = False
        y = paddle.static.data("labels", [-1, 1], "int64")
        loss = make_loss()
        outputs = loss.loss(x, y)
        outputs = list(outputs) if loss.has_classifier else [outputs]
        fetch = list(outputs)
        feed = {"features": features.astype(dtype), "labels": labels.reshape(-1, 1)}
        if isinstance(probe, str):
            fetch += paddle.static.gradients([paddle.sum(outputs[0])], [x])
        elif probe is not None:
            weights = paddle.static.data("probe", list(probe.shape), dtype)
            fetch += paddle.static.gradients([paddle.sum(outputs[0] * weights)], [x])
            feed["probe"] = probe.astype(dtype)
        exe = paddle.static.Executor(PLACE)
        exe.run(startup)
        for name, value in (parameters or {}).items():
            scope.find_var(name).get_tensor().set(value.astype(dtype), PLACE)
        params = {name: np.array(scope.find_var(name).get_tensor()).astype(np.float64)
                  for name in main.state_dict()}
        results = exe.run(main, feed=feed, fetch_list=fetch)
    gradient = results[len(outputs)] if probe is not None else None
    return results[:len(outputs)], params, gradient


def build(name, batch_size, **flag_values):
    """The registered loss `name` as the training scripts build it: its flags' defaults, `flag_values` over them."""
    loss_class = losses.LOSSES[name]
    parser = utility.ArgumentParser()
    loss_class.add_arguments(parser)
    return loss_class.from_flags(parser.parse_args(["--%s=%s" % item for item in flag_values.items()]), batch_size)


def np_normalize(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def balanced_labels(num_classes, samples_each_class, rng):
    """Consecutive groups of samples_each_class images of one class, distinct classes, as the sampler does."""
    return np.repeat(rng.permutation(100)[:num_classes], samples_each_class).astype(np.int64)


def finite_difference_gradient(objective, x, step=1e-6):
    gradient = np.zeros_like(x)
    for index in np.ndindex(*x.shape):
        up, down = x.copy(), x.copy()
        up[index] += step
        down[index] -= step
        gradient[index] = (objective(up) - objective(down)) / (2 * step)
    return gradient




# ---------------------------------------------------------------- the pair losses' references, (queries, references)

def in_batch(n):
    """The valid pairs of a batch against itself: all but the self-pairs."""
    return ~np.eye(n, dtype=bool)


def pair_sets(query_labels, reference_labels, valid):
    """Per query, the indices of its positive and of its negative references among the valid pairs."""
    positives = [[j for j in range(len(reference_labels)) if valid[i, j] and reference_labels[j] == label]
                 for i, label in enumerate(query_labels)]
    negatives = [[k for k in range(len(reference_labels)) if valid[i, k] and reference_labels[k] != label]
                 for i, label in enumerate(query_labels)]
    return positives, negatives


def np_squared_distances(query, reference):
    return ((query[:, None, :] - reference[None, :, :]) ** 2).sum(-1)


def log_one_plus_sum_exp(exponents):
    return float(np.logaddexp.reduce(np.concatenate([[0.0], exponents])))


def ref_contrastive(query, query_labels, reference, reference_labels, valid, pos_margin=1.0, neg_margin=0.5):
    similarity = query @ reference.T
    positives, negatives = pair_sets(query_labels, reference_labels, valid)
    return np.array([[sum(max(pos_margin - similarity[i, j], 0.0) for j in positives[i])
                      + sum(max(similarity[i, k] - neg_margin, 0.0) for k in negatives[i])]
                     for i in range(len(query))])


def ref_circle(query, query_labels, reference, reference_labels, valid, margin=0.4, gamma=80.0, constants=None):
    """`constants`: the similarities the weights alpha are computed from (default: the similarities themselves),
    which the paper holds constant for the gradient."""
    similarity = query @ reference.T
    constants = similarity if constants is None else constants
    positives, negatives = pair_sets(query_labels, reference_labels, valid)
    out = []
    for i in range(len(query)):
        if not positives[i] or not negatives[i]:
            out.append(0.0)
            continue
        positive_logits = [-gamma * max(1 + margin - constants[i, j], 0.0) * (similarity[i, j] - (1 - margin))
                           for j in positives[i]]
        negative_logits = [gamma * max(constants[i, k] + margin, 0.0) * (similarity[i, k] - margin)
                           for k in negatives[i]]
        out.append(float(np.logaddexp(0.0, np.logaddexp.reduce(positive_logits)
                                      + np.logaddexp.reduce(negative_logits))))
    return np.array(out)[:, None]


def ref_multisimilarity_pairs(query, query_labels, reference, reference_labels, valid, alpha=2.0, beta=50.0,
                              base=0.5, epsilon=0.1):
    similarity = query @ reference.T
    positives, negatives = pair_sets(query_labels, reference_labels, valid)
    out = []
    for i in range(len(query)):
        if not positives[i] or not negatives[i]:
            out.append(0.0)
            continue
        hardest_negative = max(similarity[i, k] for k in negatives[i])
        hardest_positive = min(similarity[i, j] for j in positives[i])
        kept_positives = [similarity[i, j] for j in positives[i] if similarity[i, j] - epsilon < hardest_negative]
        kept_negatives = [similarity[i, k] for k in negatives[i] if similarity[i, k] + epsilon > hardest_positive]
        out.append(log_one_plus_sum_exp(-alpha * (np.array(kept_positives) - base)) / alpha
                   + log_one_plus_sum_exp(beta * (np.array(kept_negatives) - base)) / beta)
    return np.array(out)[:, None]


def ref_batch_hard(query, query_labels, reference, reference_labels, valid, margin=0.1):
    distance = np_squared_distances(query, reference)
    positives, negatives = pair_sets(query_labels, reference_labels, valid)
    return np.array([[max(max(distance[i, positives[i]]) - min(distance[i, negatives[i]]) + margin, 0.0)
                      if positives[i] and negatives[i] else 0.0] for i in range(len(query))])


def ref_semi_hard(query, query_labels, reference, reference_labels, valid, margin=0.1):
    distance = np_squared_distances(query, reference)
    positives, negatives = pair_sets(query_labels, reference_labels, valid)
    hinges = []
    for i in range(len(query)):
        for j in positives[i] if negatives[i] else []:
            farther = [distance[i, k] for k in negatives[i] if distance[i, k] > distance[i, j]]
            negative = min(farther) if farther else max(distance[i, k] for k in negatives[i])
            hinges.append(max(distance[i, j] - negative + margin, 0.0))
    return float(np.mean(hinges)) if hinges else 0.0


def ref_all_triplets(query, query_labels, reference, reference_labels, valid, margin=0.1):
    distance = np_squared_distances(query, reference)
    positives, negatives = pair_sets(query_labels, reference_labels, valid)
    hinges = [distance[i, j] - distance[i, k] + margin
              for i in range(len(query)) for j in positives[i] for k in negatives[i]]
    active = [hinge for hinge in hinges if hinge > 0]
    return float(np.sum(active) / len(active)) if active else 0.0


MINER_REFERENCES = {"batch_hard": ref_batch_hard, "semi_hard": ref_semi_hard, "all": ref_all_triplets}


def ref_in_batch(reference_loss, x, labels, **parameters):
    """A pair loss's reference on a batch against itself, from the raw embeddings."""
    normalised = np_normalize(x)
    return reference_loss(normalised, labels, normalised, labels, in_batch(len(x)), **parameters)
