"""The pure-PyTorch multi-scale deformable attention core against direct references."""
import torch

from maskclip_d2.modeling.proposals.pixel_decoder.ms_deform_attn import MSDeformAttn, multi_scale_deformable_attention


def _value_maps(shapes, batch, heads, head_dim, generator):
    """Random maps per level (B, heads, head_dim, H, W) and their flattened form (B, S, heads, head_dim)."""
    maps = [torch.randn(batch, heads, head_dim, h, w, generator=generator, dtype=torch.float64) for h, w in shapes]
    flat = torch.cat([m.flatten(3).permute(0, 3, 1, 2) for m in maps], dim=1)
    return maps, flat


def _naive_bilinear(feature, x, y):
    """feature (C, H, W) at normalised (x, y): pixel centres at (j + 0.5) / W, zeros outside."""
    _, height, width = feature.shape
    px, py = x * width - 0.5, y * height - 0.5
    x0, y0 = int(torch.floor(px)), int(torch.floor(py))
    out = torch.zeros(feature.shape[0], dtype=feature.dtype)
    for dy in (0, 1):
        for dx in (0, 1):
            xi, yi = x0 + dx, y0 + dy
            weight = (1 - abs(px - xi)) * (1 - abs(py - yi))
            if 0 <= xi < width and 0 <= yi < height:
                out += weight * feature[:, yi, xi]
    return out


def test_samples_at_pixel_centres_equal_gathering():
    g = torch.Generator().manual_seed(0)
    shapes = [(5, 7), (3, 4)]
    batch, heads, head_dim, queries, points = 2, 2, 3, 4, 3
    maps, value = _value_maps(shapes, batch, heads, head_dim, g)
    rows = [torch.randint(0, h, (batch, queries, heads, points), generator=g) for h, _ in shapes]
    cols = [torch.randint(0, w, (batch, queries, heads, points), generator=g) for _, w in shapes]
    locations = torch.stack(
        [
            torch.stack(((c.double() + 0.5) / w, (r.double() + 0.5) / h), dim=-1)
            for (h, w), r, c in zip(shapes, rows, cols)
        ],
        dim=3,
    ).double()  # (B, Q, heads, L, P, 2)
    weights = torch.rand(batch, queries, heads, len(shapes), points, generator=g, dtype=torch.float64)

    out = multi_scale_deformable_attention(value, shapes, locations, weights)

    expected = torch.zeros(batch, queries, heads, head_dim, dtype=torch.float64)
    for b in range(batch):
        for q in range(queries):
            for h in range(heads):
                for level in range(len(shapes)):
                    for p in range(points):
                        r, c = rows[level][b, q, h, p], cols[level][b, q, h, p]
                        expected[b, q, h] += weights[b, q, h, level, p] * maps[level][b, h, :, r, c]
    assert out.shape == (batch, queries, heads * head_dim)
    torch.testing.assert_close(out, expected.flatten(2))


def test_equals_naive_bilinear_loop_anywhere_including_outside():
    g = torch.Generator().manual_seed(1)
    shapes = [(4, 6), (2, 3), (1, 1)]
    batch, heads, head_dim, queries, points = 1, 2, 2, 3, 2
    maps, value = _value_maps(shapes, batch, heads, head_dim, g)
    # locations in [-0.2, 1.2]: some fall partly or wholly outside the maps
    locations = torch.rand(batch, queries, heads, len(shapes), points, 2, generator=g, dtype=torch.float64) * 1.4 - 0.2
    weights = torch.rand(batch, queries, heads, len(shapes), points, generator=g, dtype=torch.float64)

    out = multi_scale_deformable_attention(value, shapes, locations, weights)

    expected = torch.zeros(batch, queries, heads, head_dim, dtype=torch.float64)
    for q in range(queries):
        for h in range(heads):
            for level in range(len(shapes)):
                for p in range(points):
                    x, y = locations[0, q, h, level, p]
                    expected[0, q, h] += weights[0, q, h, level, p] * _naive_bilinear(maps[level][0, h], x, y)
    torch.testing.assert_close(out, expected.flatten(2))


def test_gradients_match_finite_differences():
    g = torch.Generator().manual_seed(2)
    shapes = [(3, 3), (2, 2)]
    _, value = _value_maps(shapes, 1, 1, 2, g)
    # away from pixel centres, where bilinear interpolation is not differentiable
    locations = (torch.rand(1, 2, 1, 2, 2, 2, generator=g, dtype=torch.float64) * 0.6 + 0.2)
    weights = torch.rand(1, 2, 1, 2, 2, generator=g, dtype=torch.float64)
    inputs = tuple(t.requires_grad_() for t in (value, locations, weights))
    assert torch.autograd.gradcheck(
        lambda v, loc, w: multi_scale_deformable_attention(v, shapes, loc, w), inputs
    )


def test_module_shapes_and_initial_sampling_pattern():
    torch.manual_seed(0)
    module = MSDeformAttn(d_model=16, n_levels=2, n_heads=4, n_points=3)
    shapes = [(4, 4), (2, 2)]
    src = torch.randn(2, 20, 16)
    reference = torch.rand(2, 5, 2, 2)
    out = module(torch.randn(2, 5, 16), reference, src, shapes)
    assert out.shape == (2, 5, 16)
    # Deformable DETR's start: head h looks along angle 2*pi*h/4, point p at distance p + 1
    offsets = module.sampling_offsets.bias.view(4, 2, 3, 2)
    torch.testing.assert_close(offsets[0, 0], torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]]))
    torch.testing.assert_close(offsets[1, 1], torch.tensor([[0.0, 1.0], [0.0, 2.0], [0.0, 3.0]]), atol=1e-6, rtol=0)
