"""Where a training step's time goes: encoder, decoder, heads and optimiser, each timed alone (forward + backward),
for the efficient and the naive path of one bench configuration.

    .venv/bin/python benchmarks/breakdown.py --preset taskprompter_bench_c --batch 8 --threads 2

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
    runner = Runner(cfg)
    model, images = runner.model.train(), runner.images

    def encoder() -> None:
        levels = model.backbone(images, model.decode_blocks)
        sum(t.mean() + sum(getattr(a, f).mean() for f in MAPS if getattr(a, f) is not None)
            for t, a in levels).backward()

    levels = detached(model.backbone(images, model.decode_blocks))

    def decoder() -> None:
        model.decoder(levels, model.grid).mean().backward()

    feats = model.decoder(levels, model.grid).detach().requires_grad_()

    def heads() -> None:
        sum(upsampled_logits(h, f, model.img_size, low_res_conv=model.low_res_head_conv).mean()
            for h, f in zip(model.heads.values(), feats.unbind(1))).backward()

    result = {"step": median_ms(runner.step, repeats), "encoder": median_ms(encoder, repeats),
              "decoder": median_ms(decoder, repeats), "heads": median_ms(heads, repeats)}
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
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = {impl: parts(BenchConfig(preset=args.preset, impl=impl, batch=args.batch), args.repeats)
            for impl in ("efficient", "naive")}
    print(f"{args.preset}, batch {args.batch}, {args.threads} threads: ms per training step (forward + backward)")
    print(f"{'part':10s} {'efficient':>10s} {'naive':>10s} {'x naive':>8s}")
    for part in ("encoder", "decoder", "heads", "optimizer", "step"):
        e, n = rows["efficient"][part], rows["naive"][part]
        print(f"{part:10s} {e:10.1f} {n:10.1f} {n / e:8.2f}")


if __name__ == "__main__":
    main()
