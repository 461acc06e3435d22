"""scale_align and scale_correlation's one-launch forward on CUDA (product_kernel, S <= 9):
the tile's last block to arrive adds up the other blocks' partial sums and finishes the
points (csrc/scale_align/kernels.cuh). Run on a GPU and in the simulator, whose blocks run in
a shuffled order, so that a different block of a tile arrives last at every launch."""

import math

import pytest
import torch

import ssanet_ops
from ssanet_ops import reference

# Mirrors of csrc/scale_align/kernels.cuh's product_chunks and kChunksPerBlock: the number B of
# block chunks of the feature axis per tile, to check that each case below is the one it names.
CHUNK_WIDTH = 256
CHUNKS_PER_BLOCK = 4


def block_chunks(proposals, classes, features):
    wanted = math.ceil(features / CHUNK_WIDTH)
    within_planes = (proposals + classes) * features // max(proposals * classes, 1)
    chunks = max(1, min(wanted, within_planes))
    width = math.ceil(features / chunks)
    return math.ceil(math.ceil(features / width) / CHUNKS_PER_BLOCK)


TOLERANCE = {
    torch.float64: {"atol": 1e-10, "rtol": 1e-10},
    torch.float32: {"atol": 1e-3, "rtol": 1e-4},
    # float32 arithmetic on the rounded inputs, rounded once to the dtype.
    torch.bfloat16: {"atol": 1e-3, "rtol": torch.finfo(torch.bfloat16).eps},
    torch.float16: {"atol": 1e-3, "rtol": torch.finfo(torch.float16).eps},
}

# (dtype, S, N, C, D, groups, B): one block chunk (no partials, no counter), two, an odd
# number and many; the fused path's limits of S (9: T = 13 planes; float64: 7 in tiles of 16
# proposals, 6 in tiles of 8); a partial proposal and class tile in every case.
CASES = [
    (torch.float32, 5, 16, 50, 512, None, 1),
    (torch.float32, 9, 20, 37, 1500, None, 2),
    (torch.float64, 7, 20, 37, 2300, None, 3),
    (torch.float64, 6, 8, 37, 1100, None, 2),
    (torch.bfloat16, 9, 8, 37, 700, None, 1),
    (torch.float32, 3, 17, 33, 5000, 2, 5),
    (torch.bfloat16, 2, 9, 40, 9000, None, 9),
    (torch.float16, 1, 5, 7, 300, None, 1),
    (torch.float32, 4, 3, 5, 12000, None, 12),
]


def inputs(dtype, scales, proposals, classes, features, groups, seed):
    generator = torch.Generator().manual_seed(seed)
    lead = () if groups is None else (groups,)
    phi = torch.randn(*lead, proposals, scales, features, generator=generator)
    weight = torch.randn(*lead, classes, scales, features, generator=generator)
    bias = torch.randn(*lead, classes, generator=generator)
    return phi.to(dtype), weight.to(dtype), bias.to(dtype)


def check_against_reference(phi, weight, bias, logits, shift, corr):
    """corr, logits and shift of the kernels against the float64 reference on the same inputs."""
    dtype = phi.dtype
    expected = reference.scale_correlation(phi.double(), weight.double())
    torch.testing.assert_close(corr.cpu().double(), expected, **TOLERANCE[dtype])
    best = expected.max(dim=-1).values
    expected_logits = best + bias.double().unsqueeze(-2)  # bias [G?, C] over the proposals
    torch.testing.assert_close(logits.cpu().double(), expected_logits, **TOLERANCE[dtype])
    # The shift is the reference's argmax wherever the runner-up is clearly below it.
    top2 = expected.topk(min(2, expected.shape[-1]), dim=-1).values
    clear = top2[..., 0] - top2[..., -1] > 1e-2 * (1 + top2[..., 0].abs())
    if expected.shape[-1] == 1:
        clear = torch.ones_like(best, dtype=torch.bool)
    assert clear.float().mean() > 0.9
    argmax = expected.argmax(dim=-1)
    assert torch.equal(shift.cpu()[clear], argmax[clear])


@pytest.mark.parametrize(
    ("dtype", "scales", "proposals", "classes", "features", "groups", "b"), CASES
)
def test_one_launch_forward(cuda_target, dtype, scales, proposals, classes, features, groups, b):
    assert block_chunks(proposals, classes, features) == b
    # Three calls with different inputs: the second and third reuse the tiles' arrival counters
    # that the call before left (a counter not reset to zero would leave no block last, and the
    # outputs unwritten), and run in other block orders.
    results = []
    cpu_results = []
    for seed in range(3):
        phi, weight, bias = inputs(dtype, scales, proposals, classes, features, groups, seed)
        cpu_results.append(ssanet_ops.scale_align(phi, weight, bias))
        with cuda_target:
            device = cuda_target.device
            on = [t.to(device) for t in (phi, weight, bias)]
            logits, shift = ssanet_ops.scale_align(*on)
            corr = ssanet_ops.scale_correlation(on[0], on[1])
            no_bias = ssanet_ops.scale_align(on[0], on[1])
        results.append((logits, shift, corr))
        check_against_reference(phi, weight, bias, logits, shift, corr)
        # The same points without the bias: the logits differ by it (within the rounding of the
        # addition), and the shift is the same.
        assert torch.equal(no_bias[1], shift)
        torch.testing.assert_close(
            no_bias[0].cpu().double() + bias.double().unsqueeze(-2),
            logits.cpu().double(),
            **TOLERANCE[dtype],
        )
        # Beside the CPU kernels: the same logits (within rounding).
        torch.testing.assert_close(
            logits.cpu().double(), cpu_results[-1][0].double(), **TOLERANCE[dtype]
        )
    # Deterministic: the first inputs again give the first results, bit for bit, whichever
    # blocks arrived last.
    phi, weight, bias = inputs(dtype, scales, proposals, classes, features, groups, 0)
    with cuda_target:
        on = [t.to(cuda_target.device) for t in (phi, weight, bias)]
        again = ssanet_ops.scale_align(*on)
        corr_again = ssanet_ops.scale_correlation(on[0], on[1])
    assert torch.equal(again[0], results[0][0])
    assert torch.equal(again[1], results[0][1])
    assert torch.equal(corr_again, results[0][2])


def test_counters_across_sizes(cuda_target):
    # A call of many tiles after one of few and before one of few again (the counter buffer
    # grows, and keeps its zeros): every call agrees with the reference.
    sizes = [(5, 8, 20, 3000), (5, 40, 90, 3000), (5, 8, 20, 3000), (3, 70, 33, 4000)]
    for seed, (scales, proposals, classes, features) in enumerate(sizes):
        phi, weight, bias = inputs(torch.float32, scales, proposals, classes, features, None, seed)
        assert block_chunks(proposals, classes, features) > 1
        with cuda_target:
            on = [t.to(cuda_target.device) for t in (phi, weight, bias)]
            logits, shift = ssanet_ops.scale_align(*on)
            corr = ssanet_ops.scale_correlation(on[0], on[1])
        check_against_reference(phi, weight, bias, logits, shift, corr)
