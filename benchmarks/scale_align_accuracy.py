"""The accuracy of scale_align's logits (issue 20, part 4): the largest absolute error of the
float32 logits against the float64 direct form, beside the same maximum computed with torch.fft
in float32 (ssanet_ops.reference.scale_correlation_fft), and of the float64 logits against an
exact reference beside torch.fft in float64; the CPU kernels, and the CUDA kernels' code in the
host simulator (ssanet_ops.testing.simulate_cuda) where it is built.

The exact reference takes inputs on a grid (phi a multiple of 2**-12, weight of 2**-16), on
which the direct form of the grid numerators never rounds (exact_correlation); the float64
kernels see those values as any others (their DFT twiddles are irrational). Prints a markdown
table.

    python benchmarks/scale_align_accuracy.py [--large]   # --large adds D = 100,352 (N = 8)
"""

from __future__ import annotations

import argparse

import torch

import ssanet_ops
from ssanet_ops import reference
from ssanet_ops.testing import simulate_cuda, simulator_available

CLASSES, SCALES = 200, 5
PHI_BITS, WEIGHT_BITS = 12, 16


def random_inputs(proposals: int, features: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """phi [N, 5, D] and weight [200, 5, D] / sqrt(D), float64, random normal."""
    generator = torch.Generator().manual_seed(seed)
    phi = torch.randn(proposals, SCALES, features, generator=generator, dtype=torch.float64)
    weight = torch.randn(CLASSES, SCALES, features, generator=generator, dtype=torch.float64)
    return phi, weight / features**0.5


def logits_errors(phi: torch.Tensor, weight: torch.Tensor, exact: torch.Tensor) -> list[float]:
    """Largest |logit - exact| of ssanet_ops.scale_align on the CPU, of its CUDA code in the
    simulator (where built), and of the same maximum computed with torch.fft."""
    results = [ssanet_ops.scale_align(phi, weight)[0]]
    if simulator_available():
        with simulate_cuda():
            results.append(ssanet_ops.scale_align(phi, weight)[0])
    results.append(reference.scale_correlation_fft(phi, weight).amax(dim=-1))
    return [(result.double() - exact).abs().max().item() for result in results]


def float32_errors(proposals: int, features: int) -> list[float]:
    """logits_errors in float32, against the float64 direct form."""
    phi, weight = random_inputs(proposals, features, seed=0)
    phi32, weight32 = phi.float(), weight.float()
    # The float64 computation on the very values the float32 ops see.
    exact = reference.scale_correlation(phi32.double(), weight32.double()).amax(dim=-1)
    return logits_errors(phi32, weight32, exact)


def exact_correlation(phi: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """corr of grid inputs, exactly: the direct form on the grid numerators (integer-valued
    float64), where every partial sum is an integer below 2**53 (checked on the sums of absolute
    products), so no step rounds, whatever order the GEMM adds in."""
    phi_int, weight_int = phi * 2**PHI_BITS, weight * 2**WEIGHT_BITS
    assert torch.equal(phi_int, phi_int.round()) and torch.equal(weight_int, weight_int.round())
    largest = torch.einsum("nsd,csd->nc", phi_int.abs(), weight_int.abs())
    assert largest.max() < 2**53
    return reference.scale_correlation(phi_int, weight_int) / 2 ** (PHI_BITS + WEIGHT_BITS)


def float64_errors(proposals: int, features: int) -> list[float]:
    """logits_errors in float64, against the exact maximum of grid inputs."""
    phi, weight = random_inputs(proposals, features, seed=1)
    phi = torch.round(phi * 2**PHI_BITS) / 2**PHI_BITS
    weight = torch.round(weight * 2**WEIGHT_BITS) / 2**WEIGHT_BITS
    return logits_errors(phi, weight, exact_correlation(phi, weight).amax(dim=-1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", action="store_true", help="also D = 100,352 with N = 8")
    args = parser.parse_args()
    cases = [(96, 2048)] + ([(8, 100_352)] if args.large else [])
    devices = "CPU | simulated CUDA" if simulator_available() else "CPU"
    print(f"| dtype | D | N | {devices} | torch.fft | ratio (largest) |")
    print("|---" * (devices.count("|") + 6) + "|")
    for proposals, features in cases:
        for dtype, measure in (("float32", float32_errors), ("float64", float64_errors)):
            *ours, fft = measure(proposals, features)
            columns = " | ".join(f"{error:.2e}" for error in ours)
            print(
                f"| {dtype} | {features:,} | {proposals} | {columns} | {fft:.2e} "
                f"| {max(ours) / fft:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
