"""I-JEPA: block-mask sampler properties over many draws, context-only encoding, targets, predictor batching."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sptrack.data.masks import BlockMaskSampler, IJEPAMasks, patch_content
from sptrack.errors import ConfigError
from sptrack.methods import gather_tokens, ijepa_loss, ijepa_targets, predict_blocks
from sptrack.nn import ViT, ViTPredictor


def _rect(idx: torch.Tensor, cols: int) -> tuple[int, int, int, int]:
    rows_, cols_ = (idx // cols).tolist(), (idx % cols).tolist()
    return min(rows_), max(rows_), min(cols_), max(cols_)


@pytest.mark.parametrize("grid", [(7, 7), (14, 14), (5, 9)])
def test_block_masks_properties_over_many_draws(grid):
    rows, cols = grid
    n = rows * cols
    sampler = BlockMaskSampler(grid, num_targets=4, min_context=4)
    g = torch.Generator().manual_seed(0)
    areas, aspects = [], []
    for _ in range(150):
        masks = sampler.sample(6, g)
        b, m, k = masks.targets.shape
        h, w = masks.target_shape
        assert (b, m, k) == (6, 4, h * w)  # same count for every image and block: no padding
        assert masks.context.shape[0] == 6 and masks.context.shape[1] >= 4
        areas.append(h * w / n)
        aspects.append(h / w)
        ch, cw = masks.context_shape
        for i in range(6):
            ctx = masks.context[i]
            assert torch.equal(ctx, ctx.unique()), "context indices are sorted and unique"
            assert ctx.min() >= 0 and ctx.max() < n
            r0, r1, c0, c1 = _rect(ctx, cols)
            assert r1 - r0 < ch and c1 - c0 < cw, "context lies inside one context block"
            for block in masks.targets[i]:
                assert torch.equal(block, block.unique())
                r0, r1, c0, c1 = _rect(block, cols)
                assert (r1 - r0 + 1, c1 - c0 + 1) == (h, w), "each target is a full h x w rectangle"
                assert not torch.isin(ctx, block).any(), "no context patch is a target patch"
    areas, aspects = torch.tensor(areas), torch.tensor(aspects)
    if n >= 49:
        # Rounding to whole patches widens the ranges a little on small grids; the centre must be right.
        assert 0.12 <= areas.min() and areas.max() <= 0.26 and abs(areas.mean() - 0.175) < 0.03
        assert 0.5 <= aspects.min() and aspects.max() <= 2.0


def test_block_masks_are_deterministic_under_a_seed():
    sampler = BlockMaskSampler(7)
    a = sampler.sample(8, torch.Generator().manual_seed(3))
    b = sampler.sample(8, torch.Generator().manual_seed(3))
    c = sampler.sample(8, torch.Generator().manual_seed(4))
    assert torch.equal(a.context, b.context) and torch.equal(a.targets, b.targets)
    assert not (a.context.shape == c.context.shape and torch.equal(a.context, c.context))


def test_context_is_trimmed_by_random_subset_not_prefix():
    """Cutting every context to the batch minimum keeps a random subset: later rows of the block survive."""
    sampler = BlockMaskSampler(14, context_scale=(0.85, 1.0))
    g = torch.Generator().manual_seed(0)
    last_rows = 0
    for _ in range(20):
        masks = sampler.sample(16, g)
        last_rows += int((masks.context // 14 >= 10).sum())
    assert last_rows > 0


@pytest.mark.parametrize("kwargs, key", [
    ({"num_targets": 0}, "ijepa.num_targets"), ({"target_scale": (0.3, 0.2)}, "ijepa.target_scale"),
    ({"context_scale": (0.0, 1.0)}, "ijepa.context_scale"), ({"min_context": 49}, "ijepa.min_context"),
])
def test_bad_mask_settings_name_the_key(kwargs, key):
    with pytest.raises(ConfigError) as err:
        BlockMaskSampler(7, **kwargs)
    assert key in str(err.value)


def test_impossible_masks_raise_a_clear_error():
    sampler = BlockMaskSampler(4, num_targets=4, target_scale=(0.9, 1.0), min_context=3, max_tries=5)
    with pytest.raises(ConfigError, match="ijepa.min_context"):
        sampler.sample(2, torch.Generator().manual_seed(0))


def test_transform_adds_masks_on_the_batch_device():
    transform = IJEPAMasks(BlockMaskSampler(7), seed=1)
    batch = {"image": torch.rand(5, 1, 28, 28), "label": torch.arange(5)}
    out = transform(batch)
    assert out["context_idx"].dtype == torch.long and out["target_idx"].shape[:2] == (5, 4)
    assert "context_idx" not in batch  # the input batch is left alone


def test_patch_content_is_each_patchs_pixel_variance():
    image = torch.tensor([[0., 0., 1., 3.], [0., 0., 5., 7.], [2., 2., 0., 4.], [2., 2., 0., 0.]])[None, None]
    # patches row-major: all zeros; {1, 3, 5, 7}; all twos; {0, 4, 0, 0}
    assert patch_content(image, 2).tolist() == [[0.0, 5.0, 0.0, 3.0]]
    rgb = torch.stack([image[0, 0], 2 * image[0, 0], image[0, 0]])[None]  # variance over channels and pixels together
    assert patch_content(rgb, 2)[0, 1] == pytest.approx(torch.tensor([1., 3., 5., 7., 2., 6., 10., 14., 1., 3., 5., 7.]).var(unbiased=False).item())


def test_content_placement_draws_blocks_in_proportion_to_the_content_they_cover():
    """1x1 targets on a 3x3 grid (scale 1/9): each patch is drawn with probability weight / total; zero never."""
    sampler = BlockMaskSampler(3, num_targets=1, target_scale=(1 / 9, 1 / 9), target_aspect=(1.0, 1.0),
                               context_scale=(1.0, 1.0), min_context=1)
    weights = torch.tensor([[0., 1., 2., 0., 3., 0., 0., 0., 4.]])
    g = torch.Generator().manual_seed(0)
    draws = torch.cat([sampler.sample(1, g, content=weights).targets.flatten() for _ in range(4000)])
    counts = torch.bincount(draws, minlength=9).double()
    assert counts[weights[0] == 0].sum() == 0
    expected = 4000 * weights[0] / weights.sum()
    nonzero = weights[0] > 0
    # binomial spread: 4 standard deviations at most
    assert ((counts[nonzero] - expected[nonzero]).abs() <= 4 * (expected[nonzero] * (1 - weights[0][nonzero] / 10)).sqrt()).all()


def test_content_placement_covers_the_only_stroke_and_falls_back_to_uniform_on_blank_images():
    sampler = BlockMaskSampler(7, num_targets=4, min_context=4)
    stroke = torch.zeros(1, 1, 28, 28)
    stroke[0, 0, 0:8, 20:22] = 1.0  # a bar inside patches (0, 5) and (1, 5): every other patch is blank
    transform = IJEPAMasks(sampler, seed=0, content_of=lambda batch: batch["image"], patch_size=4)
    for _ in range(30):
        targets = transform({"image": stroke})["target_idx"][0]
        assert all(bool(torch.isin(torch.tensor([5, 12]), block).any()) for block in targets), targets
    blank = IJEPAMasks(sampler, seed=0, content_of=lambda batch: batch["image"], patch_size=4)({"image": torch.zeros(2, 1, 28, 28)})
    assert blank["target_idx"].shape[:2] == (2, 4)


def _models():
    torch.manual_seed(0)
    encoder = ViT(28, 4, embed_dim=32, depth=2, num_heads=2, use_cls_token=False)
    predictor = ViTPredictor(encoder.grid_size, 32, predictor_dim=16, depth=1, num_heads=2)
    return encoder, predictor


def test_context_encoder_and_predictor_only_see_context_patches():
    encoder, predictor = _models()
    masks = BlockMaskSampler(7).sample(3, torch.Generator().manual_seed(2))
    images = torch.rand(3, 1, 28, 28)
    context_pixels = torch.zeros(3, 49, dtype=torch.bool)
    context_pixels.scatter_(1, masks.context, True)
    pixel_mask = context_pixels.view(3, 1, 7, 1, 7, 1).expand(3, 1, 7, 4, 7, 4).reshape(3, 1, 28, 28)
    changed = torch.where(pixel_mask, images, torch.rand(3, 1, 28, 28))  # every non-context pixel redrawn

    def predict(x):
        return predict_blocks(predictor, encoder.forward_tokens(x, keep=masks.context), masks.context, masks.targets)

    assert torch.equal(predict(images), predict(changed))
    # And the gradient of the loss reaches the image only through context patches.
    x = images.clone().requires_grad_(True)
    targets = torch.randn(3, 4, masks.targets.shape[-1], 32)
    ijepa_loss(predict(x), targets).backward()
    assert x.grad[~pixel_mask].abs().max() == 0 and x.grad[pixel_mask].abs().max() > 0


def test_each_block_is_predicted_on_its_own():
    """Block j of image i equals the predictor run on (context i, block j) alone."""
    encoder, predictor = _models()
    masks = BlockMaskSampler(7).sample(2, torch.Generator().manual_seed(5))
    context = encoder.forward_tokens(torch.rand(2, 1, 28, 28), keep=masks.context)
    out = predict_blocks(predictor, context, masks.context, masks.targets)
    for i in range(2):
        for j in range(4):
            alone = predictor(context[i : i + 1], masks.context[i : i + 1], masks.targets[i, j][None])
            assert torch.allclose(out[i, j], alone[0], atol=1e-6)


def test_targets_are_layer_normed_teacher_tokens_at_target_positions():
    tokens = torch.randn(2, 49, 8) * 3 + 1
    idx = torch.randint(0, 49, (2, 4, 6))
    targets = ijepa_targets(tokens, idx)
    for b in range(2):
        for j in range(4):
            expected = F.layer_norm(tokens[b, idx[b, j]], (8,))
            assert torch.allclose(targets[b, j], expected, atol=1e-6)
    assert torch.equal(gather_tokens(tokens, idx)[1, 2, 3], tokens[1, idx[1, 2, 3]])


def test_block_shape_follows_area_and_height_over_width_aspect():
    """area 0.18 x 196 patches, aspect (height / width) 2 -> 8 x 4 patches (sqrt(35.28 x 2), sqrt(35.28 / 2)); 1/2 -> 4 x 8."""
    g = torch.Generator().manual_seed(0)
    tall = BlockMaskSampler(14, num_targets=1, target_scale=(0.18, 0.18), target_aspect=(2.0, 2.0))
    wide = BlockMaskSampler(14, num_targets=1, target_scale=(0.18, 0.18), target_aspect=(0.5, 0.5))
    assert tall.block_shape(tall.target_scale, tall.target_aspect, g) == (8, 4)
    assert wide.block_shape(wide.target_scale, wide.target_aspect, g) == (4, 8)
    masks = tall.sample(4, g)
    for target in masks.targets[:, 0]:
        rows, cols = target // 14, target % 14
        assert (int(rows.max() - rows.min()) + 1, int(cols.max() - cols.min()) + 1) == (8, 4) and len(target) == 32


def test_position_center_removes_a_running_per_position_mean():
    from sptrack.methods.ijepa import PositionCenter

    first = torch.tensor([[[1.0, 2.0], [3.0, 0.0]], [[3.0, 4.0], [5.0, 2.0]]])  # (B=2, N=2 positions, D=2)
    center = PositionCenter(2, 2, momentum=0.5)
    out = center(first)  # the first batch initialises the centre to its own mean: [[2, 3], [4, 1]]
    assert torch.equal(out, torch.tensor([[[-1.0, -1.0], [-1.0, -1.0]], [[1.0, 1.0], [1.0, 1.0]]]))
    center.update(first)  # initialised: c <- 0.5 c + 0.5 mean = the same mean
    center.update(torch.zeros(3, 2, 2))  # c <- 0.5 c + 0.5 * 0
    assert torch.equal(center.center, torch.tensor([[1.0, 1.5], [2.0, 0.5]]))
    assert torch.equal(center(torch.ones(1, 2, 2)), torch.tensor([[[0.0, -0.5], [-1.0, 0.5]]]))
    assert "center" in center.state_dict() and "initialised" in center.state_dict()  # checkpointed, so a resume is exact
