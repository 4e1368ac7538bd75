"""The tables of bench/train_throughput.py: medians over rounds and the ratios of those medians."""
import statistics
import sys


def cell(value, digits=1):
    return "-" if value is None else "%.*f" % (digits, value)


def ratio(numerator, denominator):
    return None if numerator is None or denominator is None else numerator / denominator


def print_tables(groups, torch_rates, args):
    """Prints the CPU tables (training, bfloat16 with --bf16, features), or the GPU ones with --use_gpu."""
    def torch_median(group, kind, dtype):
        rates = torch_rates.get(group.torch_key(kind, dtype))
        return statistics.median(rates) if rates else None

    if args.use_gpu:
        print_gpu_tables(groups, torch_median)
    else:
        print_cpu_tables(groups, torch_median, args.bf16)
    sys.stdout.flush()


def shape(group):
    return "%s | 3x%dx%d" % (group.model, group.side, group.side)


def losses_of(group):
    return sorted({key[0] for key in group.results if key[0] != "features"})


def print_cpu_tables(groups, torch_median, bf16):
    print("\nTraining step, images/s (median of rounds); compute: one pre-made batch fed every step\n")
    print("| model | input | batch | loss | oneDNN compute | end to end | e2e / compute | default kernels "
          "| oneDNN / default | dynamic | static / dynamic | PyTorch | Paddle / PyTorch |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for group in groups:
        torch_train = torch_median(group, "train", "float32")
        for loss in losses_of(group):
            fast, e2e = group.median((loss, "oneDNN")), group.median((loss, "end to end"))
            default, dynamic = group.median((loss, "default")), group.median((loss, "dynamic"))
            print("| %s | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |"
                  % (shape(group), group.batch_size, loss, cell(fast), cell(e2e), cell(ratio(e2e, fast), 2),
                     cell(default), cell(ratio(fast, default), 1), cell(dynamic), cell(ratio(fast, dynamic), 1),
                     cell(torch_train), cell(ratio(fast, torch_train), 2)))
    if bf16:
        print("\nbfloat16 AMP (--use_amp=True --amp_dtype=bfloat16) against float32, and against PyTorch's CPU "
              "bfloat16 autocast, images/s\n")
        print("| model | input | batch | loss | float32 | bfloat16 | bf16 / fp32 | PyTorch float32 | PyTorch bfloat16 "
              "| Paddle / PyTorch bf16 |")
        print("|---|---|---:|---|---:|---:|---:|---:|---:|---:|")
        for group in groups:
            torch_float32, torch_bf16 = torch_median(group, "train", "float32"), torch_median(group, "train",
                                                                                             "bfloat16")
            for loss in losses_of(group):
                fast, bfloat16 = group.median((loss, "oneDNN")), group.median((loss, "bfloat16"))
                print("| %s | %d | %s | %s | %s | %s | %s | %s | %s |"
                      % (shape(group), group.batch_size, loss, cell(fast), cell(bfloat16),
                         cell(ratio(bfloat16, fast), 2), cell(torch_float32), cell(torch_bf16),
                         cell(ratio(bfloat16, torch_bf16), 2)))
    else:
        print("\nbfloat16 AMP: not timed (--bf16=False, the default where paddle.amp.is_bfloat16_supported('cpu') is "
              "False)")
    print_feature_table(groups, torch_median, "Feature extraction, images/s (median of rounds): eval.py, infer.py and "
                        "the training scripts' test (Paddle Inference with oneDNN), against Paddle's default kernels",
                        ("oneDNN predictor", "default kernels", "oneDNN / default"))


def print_gpu_tables(groups, torch_median):
    print("\nTraining step on the GPU, images/s (median of rounds); compute: one pre-made batch fed every step\n")
    print("| model | input | batch | loss | float32 | float16 AMP | fp16 / fp32 | end to end | e2e / fp32 "
          "| PyTorch float32 | PyTorch float16 | Paddle / PyTorch fp32 | Paddle / PyTorch fp16 |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for group in groups:
        torch_float32, torch_float16 = torch_median(group, "train", "float32"), torch_median(group, "train", "float16")
        for loss in losses_of(group):
            float32, float16 = group.median((loss, "float32")), group.median((loss, "float16"))
            e2e = group.median((loss, "end to end"))
            print("| %s | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |"
                  % (shape(group), group.batch_size, loss, cell(float32), cell(float16),
                     cell(ratio(float16, float32), 2), cell(e2e), cell(ratio(e2e, float32), 2), cell(torch_float32),
                     cell(torch_float16), cell(ratio(float32, torch_float32), 2),
                     cell(ratio(float16, torch_float16), 2)))
    print_feature_table(groups, torch_median, "Feature extraction on the GPU, images/s (median of rounds): eval.py and "
                        "infer.py (Paddle Inference's GPU predictor), against Paddle's executor",
                        ("GPU predictor", "executor", "predictor / executor"))


def print_feature_table(groups, torch_median, title, columns):
    """Paddle Inference's predictor against Paddle's executor, and against PyTorch's eval; `columns` names the first
    two and their ratio."""
    print("\n%s\n" % title)
    print("| model | input | batch | %s | %s | %s | PyTorch eval | Paddle / PyTorch |" % columns)
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for group in groups:
        fast, plain = group.median(("features", "predictor")), group.median(("features", "executor"))
        torch_eval = torch_median(group, "eval", "float32")
        print("| %s | %d | %s | %s | %s | %s | %s |"
              % (shape(group), group.feature_batch_size, cell(fast), cell(plain), cell(ratio(fast, plain), 1),
                 cell(torch_eval), cell(ratio(fast, torch_eval), 2)))
