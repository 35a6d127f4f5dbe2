"""Do channels_last, TF32, bf16 autocast and torch.compile pay for Conv-4 on this device?

The network-level question behind issue 17's GPU item, asked without the meta-learning
machinery: Conv-4 (the backbone every few-shot method here uses) over one batch as large as
an evaluation batch of episodes (`--episodes` x 80 images: 5-way, 1 support + 15 queries),
forward only (evaluation, ProtoNet embedding) and forward + backward (first-order training),
each variant timed interleaved with the others (mtml.benchmark.interleaved, medians). Output:
one JSON row per (image size, variant) with ms per call and the speed-up over float32.

  python scripts/bench_kernels.py --device cuda --out kernels.json [--no-compile]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys

import torch

from mtml.benchmark import interleaved
from mtml.models.conv4 import Conv4


def variants(net, x, compile_: bool):
    """name -> (callable for forward, callable for forward+backward)."""
    device = x.device.type
    last = x.contiguous(memory_format=torch.channels_last)
    net_last = Conv4(x.shape[1], net.filters)
    net_last.load_state_dict(net.state_dict())
    net_last = net_last.to(x.device, memory_format=torch.channels_last)

    def run(model, inp, tf32: bool, dtype, backward: bool):
        def call():
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
            cast = torch.autocast(device, dtype=dtype) if dtype else contextlib.nullcontext()
            with cast, (contextlib.nullcontext() if backward else torch.no_grad()):
                out = model(inp)
                if backward:
                    out.float().sum().backward()
        return call

    table = {
        "float32": (net, x, False, None),
        "tf32": (net, x, True, None),
        "bf16": (net, x, False, torch.bfloat16),
        "channels_last+tf32": (net_last, last, True, None),
        "channels_last+bf16": (net_last, last, False, torch.bfloat16),
    }
    if compile_:
        compiled = torch.compile(net)
        table["compile+tf32"] = (compiled, x, True, None)
        table["compile+bf16"] = (compiled, x, False, torch.bfloat16)
    return {name: (run(m, i, t, d, False), run(m, i, t, d, True)) for name, (m, i, t, d) in table.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--episodes", type=int, default=128, help="episodes per batch (x 80 images)")
    ap.add_argument("--sizes", default="28,84", help="image sides (28: 1 channel, else 3)")
    ap.add_argument("--filters", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--no-compile", action="store_true", help="leave torch.compile out (it compiles ~minutes)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        channels = 1 if size == 28 else 3
        torch.manual_seed(0)
        net = Conv4(channels, args.filters).to(device)
        x = torch.rand(args.episodes * 80, channels, size, size, device=device)
        table = variants(net, x, not args.no_compile)
        for phase, index in (("forward", 0), ("forward+backward", 1)):
            med = interleaved({n: fns[index] for n, fns in table.items()}, args.repeats, device)
            base = med["float32"]["wall"]
            for name, t in med.items():
                row = {"image_size": size, "images": len(x), "phase": phase, "variant": name,
                       "ms_per_call": round(1000 * t["wall"], 3), "speedup_over_float32": round(base / t["wall"], 3)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    result = {"device": str(device), "torch": torch.__version__,
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine(),
              "filters": args.filters, "repeats": args.repeats, "rows": rows}
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
