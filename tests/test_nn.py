"""Networks of sptrack.nn: shapes, positional-embedding resampling, token selection, heads."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sptrack.errors import ConfigError
from sptrack.nn import MLP, DINOHead, DropPath, SmallCNN, ViT, ViTPredictor, resample_table, sincos_2d
from sptrack.nn.pos_embed import grid_coordinates

TINY = dict(embed_dim=32, depth=2, num_heads=4)


def vit(**kwargs) -> ViT:
    torch.manual_seed(0)
    return ViT(**{**TINY, **kwargs}).eval()


def images(b=3, size=28, seed=1) -> torch.Tensor:
    return torch.randn(b, 1, size, size, generator=torch.Generator().manual_seed(seed))


def patch_pixels(idx: torch.Tensor, grid: int = 7, patch: int = 4) -> torch.Tensor:
    """Bool (B, 1, H, W) mask of the pixels of the patches listed in idx (B, K)."""
    b = idx.shape[0]
    cells = torch.zeros(b, grid * grid, dtype=torch.bool)
    cells.scatter_(1, idx, True)
    cells = cells.view(b, 1, grid, grid)
    return cells.repeat_interleave(patch, 2).repeat_interleave(patch, 3)


# ---------------------------------------------------------------------------- ViT
@pytest.mark.parametrize("pos_embed", ["sincos", "learned"])
@pytest.mark.parametrize("use_cls_token", [True, False])
def test_vit_shapes_at_training_and_local_crop_sizes(pos_embed, use_cls_token):
    m = vit(pos_embed=pos_embed, use_cls_token=use_cls_token)
    assert m.grid_size == (7, 7) and m.num_patches == 49
    assert m(images()).shape == (3, 32)
    assert m.forward_tokens(images()).shape == (3, 49, 32)
    assert m.num_patches_for(12, 12) == 9 and m.num_patches_for(16, 12) == 12
    assert m(images(size=12)).shape == (3, 32)
    assert m.forward_tokens(images(size=12)).shape == (3, 9, 32)
    assert m.forward_tokens(torch.randn(2, 1, 16, 12)).shape == (2, 12, 32)
    if not use_cls_token:  # without CLS the embedding is the mean patch token
        assert torch.allclose(m(images()), m.forward_tokens(images()).mean(1), atol=1e-6)


def test_non_multiple_sizes_raise_or_are_centre_cropped():
    strict = vit()
    with pytest.raises(ConfigError, match=r"input: image size 14x14 is not a positive multiple of patch_size 4.*12x12.*remainder='crop'"):
        strict(images(size=14))
    with pytest.raises(ConfigError, match="14x14"):
        strict.num_patches_for(14, 14)
    with pytest.raises(ConfigError, match="img_size"):
        ViT(img_size=30, patch_size=4, **TINY)
    crop = vit(remainder="crop")
    x14 = images(size=14)
    assert crop.num_patches_for(14, 14) == 9
    assert crop.forward_tokens(x14).shape == (3, 9, 32)
    assert torch.equal(crop(x14), crop(x14[..., 1:13, 1:13])), "crop mode reads the central 12x12"


def test_vit_config_errors():
    with pytest.raises(ConfigError, match="num_heads"):
        ViT(embed_dim=36, num_heads=5, depth=1)
    with pytest.raises(ConfigError, match="pos_embed"):
        ViT(pos_embed="rope", **TINY)
    with pytest.raises(ConfigError, match=r"input: expected images \(B, 1, H, W\)"):
        vit()(torch.randn(2, 3, 28, 28))
    with pytest.raises(ConfigError, match="mask: this ViT has no mask token"):
        vit()(images(), mask=torch.zeros(3, 49, dtype=torch.bool))
    with pytest.raises(ConfigError, match="keep: must be a LongTensor"):
        vit().forward_tokens(images(), keep=torch.zeros(3, 4, dtype=torch.int32))


def test_sincos_table_and_resampling_over_the_base_extent():
    base = sincos_2d(32, (7, 7))
    assert base.shape == (49, 32)
    # Row channels depend on the row only, column channels on the column only.
    grid = base.view(7, 7, 32)
    assert torch.equal(grid[:, 0, :16], grid[:, 5, :16]) and torch.equal(grid[0, :, 16:], grid[4, :, 16:])
    assert torch.allclose(grid[0, 0, :8], torch.zeros(8)) and torch.allclose(grid[0, 0, 8:16], torch.ones(8))
    # A 3x3 grid samples the centres of 7/3-wide cells of the same extent: its centre is the base centre.
    small = sincos_2d(32, (7, 7), (3, 3)).view(3, 3, 32)
    assert torch.allclose(small[1, 1], grid[3, 3], atol=1e-6)
    assert torch.allclose(grid_coordinates(7, 3), torch.tensor([2 / 3, 3.0, 16 / 3], dtype=torch.float64))
    assert not torch.allclose(small[0, 0], grid[0, 0]), "a coarse grid is not the top-left corner of the table"

    m = vit()
    assert torch.equal(m.pos_embed_for((7, 7))[0], base)
    assert torch.equal(m.pos_embed_for((3, 3))[0], small.reshape(9, 32))


def test_learned_pos_embed_is_resampled_and_trained_at_local_sizes():
    m = vit(pos_embed="learned")
    assert m.pos_embed_for((7, 7)) is m.pos_embed, "training size uses the table itself"
    table = m.pos_embed.detach()
    small = m.pos_embed_for((3, 3)).detach().view(3, 3, 32)
    assert torch.allclose(small[1, 1], table.view(7, 7, 32)[3, 3], atol=1e-6)
    assert torch.allclose(resample_table(table, (7, 7), (7, 7)), table)
    assert m.pos_embed_for((4, 3)).shape == (1, 12, 32)
    m.train()
    # Not .sum(): the output ends in a LayerNorm whose feature sum is constant at init, so that gradient is zero up
    # to rounding (exactly zero on some CPUs).
    m(images(size=12)).square().sum().backward()
    assert m.pos_embed.grad is not None and m.pos_embed.grad.abs().sum() > 0


@pytest.mark.parametrize("use_cls_token", [True, False])
def test_forward_tokens_with_keep(use_cls_token):
    m = vit(use_cls_token=use_cls_token)
    x = images()
    full = m.forward_tokens(x)
    all_idx = torch.arange(49).expand(3, 49)
    assert torch.allclose(m.forward_tokens(x, keep=all_idx), full, atol=1e-6)
    perm = torch.stack([torch.randperm(49, generator=torch.Generator().manual_seed(i)) for i in range(3)])
    permuted = m.forward_tokens(x, keep=perm)
    assert torch.allclose(permuted, torch.gather(full, 1, perm[..., None].expand(-1, -1, 32)), atol=1e-5)
    keep = perm[:, :10]
    assert m.forward_tokens(x, keep=keep).shape == (3, 10, 32)
    # Patches outside `keep` never enter the blocks, so changing them changes nothing.
    x2 = torch.where(patch_pixels(keep), x, torch.randn_like(x))
    assert torch.equal(m.forward_tokens(x2, keep=keep), m.forward_tokens(x, keep=keep))
    assert not torch.allclose(m.forward_tokens(x2), full, atol=1e-3)


def test_mask_token_replaces_masked_patches():
    m = vit(use_mask_token=True)
    x = images()
    none = torch.zeros(3, 49, dtype=torch.bool)
    assert torch.equal(m(x, mask=none), m(x))
    mask = none.clone()
    mask[:, :20] = True
    masked = m.forward_tokens(x, mask=mask)
    assert not torch.allclose(masked, m.forward_tokens(x), atol=1e-4)
    # Masked pixels are invisible: changing them leaves the output unchanged.
    x2 = torch.where(patch_pixels(torch.arange(20).expand(3, 20)), torch.randn_like(x), x)
    assert torch.equal(m.forward_tokens(x2, mask=mask), masked)


def test_drop_path_drops_whole_samples_in_training_only():
    dp = DropPath(0.5)
    x = torch.ones(1000, 4, 3)
    dp.train()
    y = dp(x)
    per_sample = y.flatten(1)
    assert set(per_sample.unique().tolist()) == {0.0, 2.0}
    assert torch.equal(per_sample.min(1).values, per_sample.max(1).values)
    assert 0.4 < (per_sample[:, 0] == 0).float().mean() < 0.6
    dp.eval()
    assert torch.equal(dp(x), x)
    with pytest.raises(ConfigError, match="drop_path"):
        DropPath(1.0)
    m = vit(drop_path=0.2).train()
    rates = [b.drop_path.p for b in m.blocks]
    assert rates == [0.0, 0.2]


# ---------------------------------------------------------------------------- predictor
def test_predictor_sees_only_context_patches():
    torch.manual_seed(0)
    enc = ViT(use_cls_token=False, **TINY).eval()
    pred = ViTPredictor(49, 32, predictor_dim=24, depth=2, num_heads=4).eval()
    g = torch.Generator().manual_seed(3)
    order = torch.stack([torch.randperm(49, generator=g) for _ in range(3)])
    ctx_idx, tgt_idx = order[:, :20], order[:, 20:28]
    x = images()

    def run(img):
        return pred(enc.forward_tokens(img, keep=ctx_idx), ctx_idx, tgt_idx)

    out = run(x)
    assert out.shape == (3, 8, 32)
    outside = ~patch_pixels(ctx_idx)
    assert torch.equal(run(torch.where(outside, torch.randn_like(x) * 5, x)), out), "non-context pixels leaked"
    # The prediction depends on every context patch and on nothing else: its input gradient is
    # non-zero on each context patch and exactly zero elsewhere.
    x_grad = x.clone().requires_grad_(True)
    run(x_grad).square().sum().backward()
    per_patch = x_grad.grad.abs().view(3, 7, 4, 7, 4).sum((2, 4)).view(3, 49)
    in_ctx = torch.zeros(3, 49, dtype=torch.bool).scatter_(1, ctx_idx, True)
    assert (per_patch[in_ctx] > 0).all() and (per_patch[~in_ctx] == 0).all()
    # Predictions depend on target *positions*: a different target set gives different outputs.
    assert not torch.allclose(pred(enc.forward_tokens(x, keep=ctx_idx), ctx_idx, order[:, 28:36]), out, atol=1e-4)


def test_predictor_config_and_index_errors():
    with pytest.raises(ConfigError, match="num_patches"):
        ViTPredictor(50, 32)
    assert ViTPredictor((4, 6), 32, predictor_dim=16, depth=1, num_heads=2).num_patches == 24
    p = ViTPredictor(49, 32, predictor_dim=16, depth=1, num_heads=2)
    with pytest.raises(ConfigError, match=r"context: must be \(B, K, 32\)"):
        p(torch.randn(2, 5, 16), torch.zeros(2, 5, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ConfigError, match="target_idx"):
        p(torch.randn(2, 5, 32), torch.zeros(2, 5, dtype=torch.long), torch.zeros(3, 3, dtype=torch.long))


# ---------------------------------------------------------------------------- CNN and heads
def test_small_cnn_shapes():
    torch.manual_seed(0)
    assert SmallCNN()(images()).shape == (3, 128)
    net = SmallCNN(in_chans=3, widths=(8, 16), out_dim=10)
    assert net.embed_dim == 10 and net(torch.randn(2, 3, 12, 12)).shape == (2, 10)
    with pytest.raises(ConfigError, match="widths"):
        SmallCNN(widths=())
    net = SmallCNN(widths=(8, 16), depths=(1, 3))
    convs = [m for m in net.features if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.stride[0]) for c in convs] == [(1, 8, 1), (8, 16, 2), (16, 16, 1), (16, 16, 1)]
    assert net(images()).shape == (3, 16)
    for bad in [(1,), (2, 0)]:
        with pytest.raises(ConfigError, match="depths"):
            SmallCNN(widths=(8, 16), depths=bad)


def test_small_cnn_channels_last_equals_contiguous_layout():
    """The default channels-last layout changes the activations' strides, not values; parameters stay contiguous (FSDP2)."""
    torch.manual_seed(0)
    fast, plain = SmallCNN(widths=(8, 16)), SmallCNN(widths=(8, 16), channels_last=False)
    plain.load_state_dict(fast.state_dict())
    assert all(p.is_contiguous() for p in fast.parameters())
    x = torch.randn(4, 1, 28, 28)
    inside = {}
    fast.features[3].register_forward_hook(lambda mod, inp, out: inside.update(fast=out))
    plain.features[3].register_forward_hook(lambda mod, inp, out: inside.update(plain=out))
    a, b = fast(x), plain(x)
    # The second convolution's output (8 channels): channels-last in one, contiguous in the other.
    assert inside["fast"].is_contiguous(memory_format=torch.channels_last) and not inside["fast"].is_contiguous()
    assert inside["plain"].is_contiguous()
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    a.square().sum().backward()
    b.square().sum().backward()
    for p_fast, p_plain in zip(fast.parameters(), plain.parameters()):
        assert p_fast.shape == p_plain.shape
        torch.testing.assert_close(p_fast.grad, p_plain.grad, rtol=1e-4, atol=1e-5)


def test_mlp_structure_and_errors():
    m = MLP(8, 16, 4, layers=3, norm="bn", last_norm=True)
    kinds = [type(x).__name__ for x in m]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d"]
    assert m[0].bias is None and m[6].bias is None and not m[7].affine
    assert m(torch.randn(5, 8)).shape == (5, 4)
    ln = MLP(8, 16, 4, layers=2, norm="ln", activation="gelu")
    assert [type(x).__name__ for x in ln] == ["Linear", "LayerNorm", "GELU", "Linear"] and ln[0].bias is not None
    assert isinstance(MLP(8, 16, 4, layers=1)[0], nn.Linear) and len(MLP(8, 16, 4, layers=1)) == 1
    with pytest.raises(ConfigError, match="norm: unknown norm 'batch'"):
        MLP(8, 16, 4, norm="batch")
    with pytest.raises(ConfigError, match="layers"):
        MLP(8, 16, 4, layers=0)
    with pytest.raises(ConfigError, match="last_norm"):
        MLP(8, 16, 4, norm=None, last_norm=True)


@pytest.mark.parametrize("norm_last_layer", [True, False])
def test_dino_head_shape_and_last_layer_norm(norm_last_layer):
    torch.manual_seed(0)
    head = DINOHead(32, out_dim=64, hidden_dim=48, bottleneck_dim=16, norm_last_layer=norm_last_layer)
    x = torch.randn(6, 32)
    assert head(x).shape == (6, 64)
    magnitude = head.last_layer.parametrizations.weight.original0
    assert magnitude.requires_grad is (not norm_last_layer)
    assert torch.allclose(head.last_layer.weight.norm(dim=1), torch.ones(64), atol=1e-5)
    assert head.last_layer.bias is None
    # Logits are cosine similarities to unit prototypes while the magnitude stays 1.
    assert head(x).abs().max() <= 1 + 1e-5
    opt = torch.optim.SGD([p for p in head.parameters() if p.requires_grad], lr=1.0)
    for _ in range(3):
        opt.zero_grad()
        head(x)[:, :5].sum().backward()
        opt.step()
    norms = head.last_layer.weight.norm(dim=1)
    if norm_last_layer:
        assert torch.allclose(norms, torch.ones(64), atol=1e-5)
    else:
        assert not torch.allclose(norms, torch.ones(64), atol=1e-3)
