"""Where a training step's time goes: encoder, decoder, heads and optimiser, each timed alone (forward + backward),
for the efficient and the naive path of one bench configuration, and with ``--amp bf16`` the efficient path under
bf16 autocast beside them (``--infer``: the same parts forward only, under ``inference_mode``).

    .venv/bin/python benchmarks/breakdown.py --preset taskprompter_bench_c --batch 8 --threads 2
    .venv/bin/python benchmarks/breakdown.py --preset taskprompter_bench_c --batch 8 --threads 2 --amp bf16
    .venv/bin/python benchmarks/breakdown.py --preset taskprompter_bench_a --batch 2 --threads 2 --amp bf16 --infer

Each part runs on detached inputs that require gradients (the encoder's outputs for the decoder, the decoder's for
the heads); the step also holds the loss, zero_grad and one larger autograd graph, so the parts add up to a little
less than the step. Medians of --repeats timed calls after warm-up.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from taskprompter.bench import BenchConfig, Runner
from taskprompter.bench.measure import amp_context
from taskprompter.model.heads import upsampled_logits
from taskprompter.model.prompt_block import Affinity


def median_ms(fn, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


MAPS = ("spatial", "cross_task", "channel")  # the Affinity fields that hold tensors


def detached(levels: list[tuple[torch.Tensor, Affinity]]) -> list[tuple[torch.Tensor, Affinity]]:
    return [(t.detach().requires_grad_(),
             a._replace(**{f: getattr(a, f).detach().requires_grad_() for f in MAPS if getattr(a, f) is not None}))
            for t, a in levels]


def parts(cfg: BenchConfig, repeats: int) -> dict[str, float]:
    """Median ms of the whole step and of each part alone, in the configuration's precision (``cfg.amp``) and mode."""
    runner = Runner(cfg)
    model, images, train = runner.model.train(), runner.images, cfg.mode == "train"
    if not train:
        model.eval()

    def timed(fn) -> float:
        def run() -> None:
            with torch.inference_mode(not train), amp_context(cfg):
                out = fn()
            if train:
                out.float().backward()
        return median_ms(run, repeats)

    def encoder() -> torch.Tensor:
        levels = model.backbone(images, model.decode_blocks)
        return sum(t.float().mean() + sum(getattr(a, f).float().mean() for f in MAPS if getattr(a, f) is not None)
                   for t, a in levels)

    with torch.no_grad(), amp_context(cfg):
        levels = model.backbone(images, model.decode_blocks)
        feats = model.decoder(levels, model.grid)
    levels = detached(levels) if train else levels
    feats = feats.detach().requires_grad_(train)

    def decoder() -> torch.Tensor:
        return model.decoder(levels, model.grid).float().mean()

    def heads() -> torch.Tensor:
        return sum(upsampled_logits(h, f, model.img_size, low_res_conv=model.low_res_head_conv).float().mean()
                   for h, f in zip(model.heads.values(), feats.unbind(1)))

    result = {"step": median_ms(runner.step, repeats), "encoder": timed(encoder), "decoder": timed(decoder),
              "heads": timed(heads)}
    if train:
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        result["optimizer"] = median_ms(runner.optimizer.step, repeats)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="taskprompter_bench_c")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--amp", default="off", choices=("off", "bf16"), help="bf16: add the efficient path in bf16")
    parser.add_argument("--infer", action="store_true", help="inference (forward only) instead of a training step")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    mode = "infer" if args.infer else "train"
    variants = {"efficient": BenchConfig(preset=args.preset, impl="efficient", batch=args.batch, mode=mode)}
    if args.amp == "bf16":
        variants["efficient+bf16"] = BenchConfig(preset=args.preset, impl="efficient", batch=args.batch, mode=mode,
                                                 amp="bf16")
    variants["naive"] = BenchConfig(preset=args.preset, impl="naive", batch=args.batch, mode=mode)
    rows = {name: parts(cfg, args.repeats) for name, cfg in variants.items()}
    what = "inference (forward)" if args.infer else "training step (forward + backward)"
    print(f"{args.preset}, batch {args.batch}, {args.threads} threads: ms per {what}; x naive = naive / variant")
    print(f"{'part':10s} " + " ".join(f"{v:>15s}" for v in rows) + " " + " ".join(
        f"{'x naive ' + v:>24s}" for v in rows if v != "naive"))
    for part in rows["naive"]:
        n = rows["naive"][part]
        print(f"{part:10s} " + " ".join(f"{rows[v][part]:15.1f}" for v in rows) + " " + " ".join(
            f"{n / rows[v][part]:24.2f}" for v in rows if v != "naive"))


if __name__ == "__main__":
    main()
