"""PyTorch's f32 matmul rate on a CUDA GPU: the ceiling our WebGPU numbers are read against.

Not part of `npm run bench` (no PyTorch on our CI machines); run it beside the bench on a
GPU machine:  python3 bench/peers/torch_matmul.py --sizes 1024,2048,4096 > torch.json
TF32 is turned off, so this is plain f32 FMA work like our kernels; the TF32 rate is
printed too for context. Each size: 3 warm-up products, then the mean of `reps` products
between CUDA events; the result is checked against a float64 product on sampled rows.
"""
import argparse
import json
import sys

import torch


def rate(n: int, reps: int, tf32: bool) -> float:
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    g = torch.Generator(device="cuda").manual_seed(n)
    a = torch.rand(n, n, device="cuda", generator=g) - 0.5
    b = torch.rand(n, n, device="cuda", generator=g) - 0.5
    c = a @ b
    rows = torch.arange(0, n, max(1, n // 16), device="cuda")
    want = a[rows].double() @ b.double()
    err = (c[rows].double() - want).abs().max().item()
    tol = 1e-2 if tf32 else 1e-3 * n ** 0.5
    if err > tol:
        raise SystemExit(f"torch matmul {n}: max error {err} over {tol}")
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(reps):
        a @ b
    end.record()
    torch.cuda.synchronize()
    ms = start.elapsed_time(end) / reps
    return 2 * n ** 3 / (ms * 1e-3) / 1e12


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", default="1024,2048,4096")
    p.add_argument("--reps", type=int, default=20)
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("no CUDA device")
    out = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "tflops_f32": {}, "tflops_tf32": {}}
    for n in (int(s) for s in args.sizes.split(",")):
        out["tflops_f32"][n] = round(rate(n, args.reps, False), 2)
        out["tflops_tf32"][n] = round(rate(n, args.reps, True), 2)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
