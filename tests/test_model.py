"""The SSANet model layer (python/ssanet): shapes, proposals, losses, gradients, checkpoints,
torch.compile and the reference-ops switch (the command line: test_cli.py).

Everything runs a ResNet-18 on tiny images with few classes, parts and scales, so the file
stays light on a CPU; nothing is downloaded.
"""

from __future__ import annotations

import json
import math
import urllib.error

import pytest
import torch
import torch.nn.functional as F

# The model layer needs torchvision, an optional dependency (the "train" extra): without it,
# or beside a torch it was not made for, this module is skipped, with ssanet's one-line reason.
# The imports below need it.
pytest.importorskip("ssanet._vision", exc_type=ImportError)

import ssanet
import torchvision
from ssanet.model import (
    NTS_ANCHOR_LEVELS,
    AnchorLevel,
    Backbone,
    DiscriminativeScaleMining,
    MACLoss,
    OrientedPoolClassifier,
    ProposalHead,
    RankingLoss,
    SSANet,
    SSANetLoss,
    make_anchors,
    select_proposals,
)

import ssanet_ops

IMAGE = 64  # tiny images and part crops: 2x2 part maps
# Anchors sized for a 64x64 image (NTS-Net's are for 448x448).
SMALL_ANCHORS = (
    AnchorLevel(32, 16.0, (1.0,), (0.667, 1.0, 1.5)),
    AnchorLevel(64, 32.0, (1.0,), (0.667, 1.0, 1.5)),
    AnchorLevel(128, 48.0, (1.0,), (1.0,)),
)


def tiny(num_classes: int = 5, **overrides) -> SSANet:
    config = dict(
        num_parts=3,
        num_scales=3,
        backbone="resnet18",
        part_size=IMAGE,
        anchor_levels=SMALL_ANCHORS,
        # The paper's 3x3 patches on a 3x3 grid need a 7x7 map; 2x2 maps take 1x1 on 2x2.
        op_patch_size=1,
        op_grid_size=2,
    )
    config.update(overrides)
    return SSANet(num_classes, **config)


def images(batch: int, size: int = IMAGE) -> torch.Tensor:
    return torch.randn(batch, 3, size, size)


def box_inside(boxes: torch.Tensor, height: int, width: int) -> bool:
    return bool(
        (boxes[..., 0] >= 0).all()
        and (boxes[..., 1] >= 0).all()
        and (boxes[..., 2] <= width).all()
        and (boxes[..., 3] <= height).all()
        and (boxes[..., 2] >= boxes[..., 0]).all()
        and (boxes[..., 3] >= boxes[..., 1]).all()
    )


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize(
    "batch, num_classes, crop_from", [(1, 3, "image"), (3, 7, "shared"), (2, 4, "image")]
)
def test_output_shapes(batch, num_classes, crop_from):
    model = tiny(num_classes, crop_from=crop_from).eval()
    parts, scales = 3, 3
    with torch.no_grad():
        output = model(images(batch))
    assert output.logits.shape == (batch, num_classes)
    assert output.dsm_logits.shape == output.op_logits.shape == (batch, num_classes)
    for name in ("dsm_part_logits", "op_part_logits", "part_logits"):
        assert getattr(output, name).shape == (batch, parts, num_classes)
    assert output.part_features.shape == (batch, parts, 512)
    assert output.part_boxes.shape == (batch, parts, 4)
    assert output.part_scores.shape == (batch, parts)
    assert output.candidate_boxes.shape == (batch, parts, scales, 4)
    assert output.aligned_scale.shape == (batch, parts)
    assert output.aligned_scale.dtype == torch.long
    assert ((output.aligned_scale >= 0) & (output.aligned_scale < scales)).all()
    # Section 3: the final logits are DSM + OP, each the sum over the parts.
    torch.testing.assert_close(output.logits, output.dsm_logits + output.op_logits)
    torch.testing.assert_close(output.dsm_logits, output.dsm_part_logits.sum(1))
    # The middle candidate (factor 1) is the proposal itself; parts are ranked by score.
    torch.testing.assert_close(output.candidate_boxes[:, :, 1], output.part_boxes)
    assert (output.part_scores[:, :-1] >= output.part_scores[:, 1:]).all()
    torch.testing.assert_close(
        output.candidate_boxes,
        ssanet_ops.scale_candidates(list(output.part_boxes), model.scales, (IMAGE, IMAGE)).view(
            batch, parts, scales, 4
        ),
    )


def test_eval_is_deterministic():
    model = tiny().eval()
    x = images(2)
    with torch.no_grad():
        first, second = model(x), model(x)
    for name, value in first._asdict().items():
        assert torch.equal(value, getattr(second, name)), name


# ------------------------------------------------------------------------- proposals


def nts_net_anchors(levels, image_size):
    """NTS-Net's generate_default_anchor_maps, one anchor at a time, clipped to the image."""
    height, width = image_size
    anchors = []
    for level in levels:
        rows, columns = math.ceil(height / level.stride), math.ceil(width / level.stride)
        # NTS-Net has one centre per cell (offset 0.5, 0.5); further offsets come first.
        for offset_x, offset_y in level.offsets:
            for scale in level.scales:
                for ratio in level.aspect_ratios:
                    anchor_h = level.size * scale / math.sqrt(ratio)
                    anchor_w = level.size * scale * math.sqrt(ratio)
                    for i in range(rows):
                        for j in range(columns):
                            cy = offset_y * level.stride + i * level.stride
                            cx = offset_x * level.stride + j * level.stride
                            anchors.append(
                                [
                                    max(cx - anchor_w / 2, 0),
                                    max(cy - anchor_h / 2, 0),
                                    min(cx + anchor_w / 2, width),
                                    min(cy + anchor_h / 2, height),
                                ]
                            )
    return torch.tensor(anchors)


@pytest.mark.parametrize("image_size", [(448, 448), (96, 160)])
def test_anchors_are_nts_nets_and_match_the_head(image_size):
    head = ProposalHead(512)
    scores, map_sizes = head(
        torch.zeros(1, 512, math.ceil(image_size[0] / 32), math.ceil(image_size[1] / 32))
    )
    anchors = make_anchors(NTS_ANCHOR_LEVELS, map_sizes, image_size)
    expected = nts_net_anchors(NTS_ANCHOR_LEVELS, image_size)
    torch.testing.assert_close(anchors, expected)
    assert scores.shape == (1, len(anchors))
    if image_size == (448, 448):
        assert len(anchors) == 1614  # NTS-Net's count


def loop_select(anchors, scores, parts, iou):
    """Per image: torchvision NMS, the first K survivors, then the best suppressed ones."""
    chosen = []
    for image_scores in scores:
        keep = torchvision.ops.nms(anchors, image_scores, iou).tolist()
        order = image_scores.argsort(descending=True).tolist()
        chosen.append((keep + [i for i in order if i not in keep])[:parts])
    return torch.tensor(chosen)


def test_select_proposals_is_per_image_nms_and_top_k():
    anchors = make_anchors(NTS_ANCHOR_LEVELS, [(14, 14), (7, 7), (4, 4)], (448, 448))
    scores = torch.randn(5, len(anchors), requires_grad=True)
    boxes, part_scores, indices = select_proposals(anchors, scores, 4, 0.25, (448, 448))
    assert torch.equal(indices, loop_select(anchors, scores.detach(), 4, 0.25))
    assert torch.equal(boxes, anchors[indices])
    assert box_inside(boxes, 448, 448)
    for image_boxes in boxes:
        overlap = torchvision.ops.box_iou(image_boxes, image_boxes) - torch.eye(4)
        assert overlap.max() <= 0.25
    # The scores are differentiable (the ranking loss trains the head through them).
    part_scores.sum().backward()
    assert scores.grad.sum() == 20 and torch.equal(scores.grad.gather(1, indices), torch.ones(5, 4))


def test_select_proposals_fills_with_suppressed_anchors():
    # Three nearly identical boxes and one apart: only two survive NMS, K = 3.
    anchors = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 11], [1, 0, 10, 10], [20, 20, 30, 30.0]])
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.2], [0.3, 0.2, 0.1, 0.0]])
    _, _, indices = select_proposals(anchors, scores, 3, 0.25, (32, 32))
    assert indices.tolist() == [[1, 3, 2], [0, 3, 1]]
    assert torch.equal(indices, loop_select(anchors, scores, 3, 0.25))


def test_model_proposals_are_inside_the_image_and_k_per_image():
    model = tiny(num_parts=4, anchor_levels=SMALL_ANCHORS).eval()
    with torch.no_grad():
        output = model(images(3, 96))
    assert output.part_boxes.shape == (3, 4, 4)
    assert box_inside(output.part_boxes, 96, 96)
    assert box_inside(output.candidate_boxes, 96, 96)
    for image_boxes in output.part_boxes:
        overlap = torchvision.ops.box_iou(image_boxes, image_boxes) - torch.eye(4)
        assert overlap.max() <= 0.25


# ---------------------------------------------------------------------------- losses


def mac_loop(features, logits, labels, lambda_):
    """Eqs. 1-2 term by term: sum_i sum_j CE + lambda sum_{xi, tau} Lm(f_xi, f_tau)."""
    batch, parts = features.shape[:2]
    cross_entropy = sum(
        F.cross_entropy(logits[i, j], labels[i]) for i in range(batch) for j in range(parts)
    )
    pair_sum = 0.0
    for xi in range(batch):
        for tau in range(batch):

            def similarity(j, n, xi=xi, tau=tau):
                return F.cosine_similarity(features[xi, j], features[tau, n], dim=0)

            lm = 0.0
            for j in range(parts):
                inner = sum(
                    torch.exp(-similarity(j, j) + similarity(j, m)) for m in range(parts) if m != j
                )
                lm = lm + torch.log(1 + inner)
            pair_sum = pair_sum + lm / parts
    return cross_entropy, pair_sum


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_mac_loss_matches_eqs_1_2(reduction):
    batch, parts, dim, classes = 3, 4, 6, 5
    features = torch.randn(batch, parts, dim, dtype=torch.float64)
    logits = torch.randn(batch, parts, classes, dtype=torch.float64)
    labels = torch.tensor([0, 4, 2])
    cross_entropy, pair_sum = mac_loop(features, logits, labels, 0.5)
    if reduction == "mean":
        cross_entropy, pair_sum = cross_entropy / (batch * parts), pair_sum / batch**2
    loss = MACLoss(0.5, reduction)(features, logits, labels)
    torch.testing.assert_close(loss, cross_entropy + 0.5 * pair_sum)
    without_mac = MACLoss(0.0, reduction)(features, logits, labels)
    torch.testing.assert_close(without_mac, cross_entropy)


def test_ranking_loss_matches_nts_net():
    batch, parts, classes = 4, 5, 6
    scores = torch.randn(batch, parts)
    logits = torch.randn(batch, parts, classes)
    labels = torch.randint(classes, (batch,))
    part_loss = torch.stack(
        [F.cross_entropy(logits[:, j], labels, reduction="none") for j in range(parts)], 1
    )
    expected = torch.zeros(())
    for i in range(parts):  # NTS-Net's ranking_loss
        targets = (part_loss > part_loss[:, i : i + 1]).float()
        expected = expected + F.relu((1 - scores[:, i : i + 1] + scores) * targets).sum()
    torch.testing.assert_close(RankingLoss()(scores, logits, labels), expected / batch)


@pytest.mark.parametrize("crop_from", ["image", "shared"])
def test_every_parameter_gets_a_gradient_from_the_total_loss(crop_from):
    model = tiny(crop_from=crop_from).train()
    output = model(images(2))
    losses = SSANetLoss()(output, torch.tensor([1, 3]))
    assert set(losses) == {"final", "dsm", "op", "mac", "rank", "total"}
    torch.testing.assert_close(
        losses["total"], sum(value for name, value in losses.items() if name != "total")
    )
    losses["total"].backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
        # The ranking loss reaches only the proposal levels its selected anchors come from,
        # and is blind to a shift shared by all scores; everything else must move.
        if not name.startswith("proposal_head.") or name.startswith("proposal_head.reduce."):
            assert parameter.grad.abs().sum() > 0, name


# --------------------------------------------------------------------- heads and DSM


def test_oriented_pool_classifier_is_eq_13():
    classifier = OrientedPoolClassifier(12, 5, groups=3)
    pooled = torch.randn(3, 4, 4, 12)  # [G, N, orientations, L]
    expected = torch.stack(
        [
            torch.stack(
                [pooled[g, :, o] @ classifier.weight[g].T + classifier.bias[g] for o in range(4)]
            ).amax(0)
            for g in range(3)
        ]
    )
    torch.testing.assert_close(classifier(pooled), expected)
    single = OrientedPoolClassifier(12, 5)
    torch.testing.assert_close(
        single(pooled[0]), (pooled[0] @ single.weight[0].T + single.bias[0]).amax(1)
    )


def test_dsm_aligns_with_the_predicted_class():
    parts, batch, scales, dim, classes = 3, 4, 5, 8, 6
    dsm = DiscriminativeScaleMining(dim, classes, parts, scales)
    phi = torch.randn(parts, batch, scales, dim)
    # The head is image-major ([B, K, ...]); the loops below index part first.
    logits, shift = (value.transpose(0, 1) for value in dsm(phi.transpose(0, 1)))
    weight = dsm.scale_align.weight
    bias = dsm.scale_align.bias
    # Each candidate's features normalised over D (layer norm, eps 1e-5), then eq. 7 directly:
    # corr[k, n, c, r] = <roll(phi[k, n], r), weight[k, c]>
    mean, variance = phi.mean(-1, keepdim=True), phi.var(-1, unbiased=False, keepdim=True)
    phi = (phi - mean) / torch.sqrt(variance + 1e-5)
    corr = torch.stack(
        [torch.einsum("knsd,kcsd->knc", phi.roll(r, dims=2), weight) for r in range(scales)], -1
    )
    torch.testing.assert_close(logits, corr.amax(-1) + bias[:, None], rtol=1e-4, atol=1e-4)
    aligned = dsm.aligned_index(logits, shift)
    for k in range(parts):
        for n in range(batch):
            predicted = logits[k, n].argmax()
            winning = corr[k, n, predicted].argmax()
            assert aligned[k, n] == (scales // 2 - winning) % scales


# ------------------------------------------------------------------------- ablations


@pytest.mark.parametrize(
    "overrides",
    [
        {"proposals": False},
        {"dsm": "fixed"},
        {"dsm": "single"},
        {"dsm": "none"},
        {"op": "gap"},
        {"op": "gmp"},
        {"op": "none"},
        {"dsm": "none", "op": "none"},
        {"dsm_features": "flatten"},
    ],
    ids=lambda overrides: ",".join(f"{key}={value}" for key, value in overrides.items()),
)
def test_ablation_switches(overrides):
    model = tiny(**overrides)
    output = model(images(2))
    losses = SSANetLoss()(output, torch.tensor([0, 2]))
    assert output.logits.shape == (2, 5)
    assert torch.isfinite(losses["total"])
    if overrides.get("proposals") is False:
        assert set(losses) == {"final", "total"}
        assert all(value is None for value in output[1:])
        return
    dsm, op = overrides.get("dsm", "align"), overrides.get("op", "oriented")
    scales = 3 if dsm in ("align", "fixed") else 1
    assert output.candidate_boxes.shape == (2, 3, scales, 4)
    assert (output.dsm_logits is None) == (dsm == "none")
    assert (output.op_logits is None) == (op == "none")
    if dsm == "fixed":  # shift 0 only: the OP module sees the proposal itself
        assert (output.aligned_scale == 1).all()
    if dsm == op == "none":
        torch.testing.assert_close(output.logits, output.part_logits.sum(1))


@pytest.mark.parametrize("crop_from", ["image", "shared"])
def test_global_view_at_a_lower_resolution(crop_from):
    # global_size: the backbone's global pass sees the images resized (antialiased) to
    # global_size; the proposals are its anchors scaled back to the input's pixels; "image"
    # crops the parts from the full-resolution input, "shared" crops the global view's
    # stride-16 map at the boxes scaled to it. Checked against a model without global_size
    # run on the resized images (the same weights) and against crops computed here.
    torch.manual_seed(0)
    anchors = (AnchorLevel(32, 12.0, (1.0, 1.5), (0.667, 1.0, 1.5)),)
    model = tiny(anchor_levels=anchors, crop_from=crop_from, global_size=32, part_size=32).eval()
    reference = tiny(anchor_levels=anchors, crop_from=crop_from, part_size=32).eval()
    reference.load_state_dict(model.state_dict())
    batch = images(2)
    view = F.interpolate(batch, size=(32, 32), mode="bilinear", antialias=True)
    with torch.no_grad():
        output = model(batch)
        expected = reference(view)
        torch.testing.assert_close(output.part_boxes, expected.part_boxes * 2)
        torch.testing.assert_close(output.part_scores, expected.part_scores)
        rois = torch.cat(
            [torch.arange(2.0).repeat_interleave(3)[:, None], output.part_boxes.view(-1, 4)], 1
        )
        if crop_from == "image":
            crops = ssanet_ops.multiscale_roi_crop(batch, rois, (32, 32), [1.0])[:, 0]
        else:
            stride16 = model.backbone.forward_stride16(view)
            crops = ssanet_ops.multiscale_roi_crop(
                stride16, rois, (2, 2), [1.0], spatial_scale=0.5 / 16, sampling_ratio=2
            )[:, 0]
        crops = crops if crop_from == "shared" else model.backbone.forward_stride16(crops)
        features = model.backbone.layer4(crops).mean(dim=(-2, -1)).view(2, 3, -1)
        torch.testing.assert_close(output.part_features, features)
        plain = SSANet(5, backbone="resnet18", proposals=False, global_size=32).eval()
        plain_logits = plain.classifier(plain.backbone(view)[1].mean(dim=(-2, -1)))
        torch.testing.assert_close(plain(batch).logits, plain_logits)
    assert SSANet.from_config(model.config).global_size == 32
    with pytest.raises(ValueError, match="global_size"):
        tiny(global_size=16)


def test_anchor_level_of_stride_16_scores_the_stride_16_map():
    # A first anchor level of stride 16 puts the anchors on the backbone's stride-16 map (4x4
    # cells on a 64-pixel view instead of 2x2): the head scores that map, the anchors are
    # NTS-Net's on the finer grid (nts_net_anchors, one at a time), and the proposals are the
    # NMS / top-K of those scores, scaled from the global view to the input.
    torch.manual_seed(0)
    levels = (
        AnchorLevel(16, 12.0, (1.0, 1.5), (0.667, 1.0, 1.5)),
        AnchorLevel(32, 24.0, (1.0,), (1.0,)),
    )
    model = tiny(anchor_levels=levels, global_size=32).eval()
    batch = images(2)
    view = F.interpolate(batch, size=(32, 32), mode="bilinear", antialias=True)
    with torch.no_grad():
        output = model(batch)
        stride16 = model.backbone.forward_stride16(view)
        scores, map_sizes = model.proposal_head(stride16)
    assert model.proposal_head.reduce.in_channels == model.backbone.stride16_channels
    assert map_sizes == [(2, 2), (1, 1)]
    anchors = nts_net_anchors(levels, (32, 32))
    assert scores.shape == (2, len(anchors)) == (2, 2 * 2 * 6 + 1)
    _, expected_scores, indices = select_proposals(anchors, scores, 3, 0.25, (32, 32))
    torch.testing.assert_close(output.part_boxes, anchors[indices] * 2)
    torch.testing.assert_close(output.part_scores, expected_scores)
    assert SSANet.from_config(model.config).propose_on_stride16
    with pytest.raises(ValueError, match="level 0 must have stride 16 or 32"):
        ProposalHead(8, (AnchorLevel(8, 4.0, (1.0,), (1.0,)),))
    with pytest.raises(ValueError, match="level 1 must have stride 32"):
        ProposalHead(8, (levels[0], AnchorLevel(64, 24.0, (1.0,), (1.0,))))


def test_anchor_offsets_give_several_centres_per_cell():
    # A level with four offsets: its anchors are nts_net_anchors' loop with the centres moved
    # within each cell, the head scores every one of them, and the level survives the model's
    # config (a checkpoint) as JSON gives it back, lists for tuples.
    quarters = ((0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75))
    level = AnchorLevel(16, 12.0, (1.0, 1.26), (0.667, 1.0, 1.5), quarters)
    assert level.anchors_per_cell == 4 * 2 * 3
    model = tiny(anchor_levels=(level,), global_size=64).eval()
    with torch.no_grad():
        scores, map_sizes = model.proposal_head(
            model.backbone.forward_stride16(torch.zeros(1, 3, 64, 64))
        )
    anchors = make_anchors((level,), map_sizes, (64, 64))
    torch.testing.assert_close(anchors, nts_net_anchors((level,), (64, 64)))
    assert scores.shape == (1, len(anchors)) == (1, 4 * 4 * 24)
    # Centres a quarter and three quarters of a cell in: 4 + 8k pixels, a grid of stride 8.
    unclipped = ((anchors[:, :2] > 0) & (anchors[:, 2:] < 64)).all(dim=1)
    centres = ((anchors[:, :2] + anchors[:, 2:]) / 2)[unclipped]
    assert set(centres.flatten().tolist()) == {4.0 + 8 * k for k in range(1, 7)}
    stored = json.loads(json.dumps(model.config))
    assert SSANet.from_config(stored).anchor_levels == (level,)
    # A level without offsets (every config and checkpoint before them) is NTS-Net's.
    old = {key: value for key, value in stored["anchor_levels"][0].items() if key != "offsets"}
    assert AnchorLevel(**old).offsets == ((0.5, 0.5),)
    for bad in ((), ((0.5,),), ((1.5, 0.5),)):
        with pytest.raises(ValueError, match="anchor offsets"):
            AnchorLevel(16, 12.0, (1.0,), (1.0,), bad)


def test_the_former_part_features_keyword_and_configs_still_work():
    with pytest.warns(DeprecationWarning, match="crop_from"):
        model = tiny(part_features="shared")
    assert model.config["crop_from"] == "shared"
    # The model_config of a checkpoint written before the rename.
    old_config = {key: value for key, value in model.config.items() if key != "crop_from"}
    old_config["part_features"] = "shared"
    assert SSANet.from_config(old_config).config == model.config


def test_bad_arguments_raise_with_the_argument_name():
    with pytest.raises(ValueError, match="crop_from"):
        tiny(crop_from="features")
    with pytest.raises(ValueError, match="part_features"), pytest.warns(DeprecationWarning):
        tiny(part_features="features")
    with pytest.raises(ValueError, match="dsm"):
        tiny(dsm="pyramid")
    with pytest.raises(ValueError, match="op"):
        tiny(op="avg")
    with pytest.raises(ValueError, match="num_scales must be odd"):
        tiny(num_scales=4)
    with pytest.raises(ValueError, match="backbone"):
        tiny(backbone="vgg16")
    with pytest.raises(ValueError, match="images"):
        tiny()(torch.randn(2, 1, 64, 64))


# ------------------------------------------------------------------ weights and files


def test_backbone_weights_from_a_local_file(tmp_path):
    network = torchvision.models.resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(network.state_dict(), path)
    backbone = Backbone("resnet18", weights=path)
    torch.testing.assert_close(backbone.layer4[1].conv2.weight, network.layer4[1].conv2.weight)
    torch.testing.assert_close(backbone.stem[1].running_mean, network.bn1.running_mean)


def test_failed_download_says_how_to_pass_a_local_file(monkeypatch):
    def offline(self, *args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.models.ResNet18_Weights, "get_state_dict", offline)
    # An OSError, which the command line reports in one line (issue 23).
    with pytest.raises(OSError, match=r"weights='/path/to/resnet18-[0-9a-f]+\.pth'"):
        tiny(weights="IMAGENET1K_V1")
    with pytest.raises(ValueError, match="IMAGENET1K_V1"):
        tiny(weights="IMAGENET_NOT_A_NAME")


def test_state_dict_and_checkpoint_round_trip(tmp_path):
    model = tiny(crop_from="shared").eval()
    x = images(2)
    with torch.no_grad():
        expected = model(x)
    copy = SSANet.from_config(model.config)
    copy.load_state_dict(model.state_dict())
    path = tmp_path / "model.pt"
    ssanet.save_checkpoint(path, model, class_names=list("abcde"), image_size=IMAGE, epoch=3)
    loaded = ssanet.load_checkpoint(path)
    assert loaded.class_names == list("abcde") and loaded.image_size == IMAGE
    assert loaded.extra == {"epoch": 3} and not loaded.model.training
    with torch.no_grad():
        for restored in (copy.eval(), loaded.model):
            for name, value in restored(x)._asdict().items():
                assert torch.equal(value, getattr(expected, name)), name


# ----------------------------------------------------------- operators and compile


@pytest.mark.parametrize("crop_from", ["image", "shared"])
def test_reference_ops_switch(crop_from, monkeypatch):
    model = tiny(crop_from=crop_from).eval()
    x = images(2)
    calls = []
    for name in ("multiscale_roi_crop", "scale_align", "oriented_pool"):
        original = getattr(ssanet_ops.reference, name)

        def counted(*args, original=original, name=name, **kwargs):
            calls.append(name)
            return original(*args, **kwargs)

        monkeypatch.setattr(ssanet_ops.reference, name, counted)
    with torch.no_grad():
        kernels = model(x)
        assert calls == []
        with ssanet.use_reference_ops():
            reference = model(x)
        assert sorted(calls) == ["multiscale_roi_crop", "oriented_pool", "scale_align"]
        with ssanet.use_reference_ops(), ssanet.use_reference_ops(False):
            model(x)
        assert len(calls) == 3
    for name, value in kernels._asdict().items():
        torch.testing.assert_close(value, getattr(reference, name), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_torch_compile_of_the_eval_forward_equals_eager():
    # One small case: Inductor's compile takes most of a minute on a 2-core CPU. "shared" mode
    # has less code to compile than "image". fullgraph: NMS is a fixed-shape custom op, so
    # the whole forward is one graph.
    model = tiny(num_parts=2, crop_from="shared").eval()
    x = images(2)
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        eager, result = model(x), compiled(x)
    for name, value in eager._asdict().items():
        torch.testing.assert_close(getattr(result, name), value, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ predict and CLI


def test_predict_returns_the_top_k_and_keeps_the_training_mode():
    model = tiny(num_classes=7).train()
    x = images(2)
    prediction = ssanet.predict(model, x, topk=3)
    assert model.training
    with torch.no_grad():
        logits = model.eval()(x).logits
    top = logits.softmax(-1).topk(3)
    torch.testing.assert_close(prediction.probabilities, top.values)
    assert torch.equal(prediction.classes, top.indices)
    single = ssanet.predict(model, x[0], topk=10)
    assert single.classes.shape == (7,) and single.part_boxes.shape == (3, 4)
