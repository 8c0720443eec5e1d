"""The same state dict in tinydiff and in PyTorch gives the same outputs, gradients and
optimizer steps. Skipped unless torch imports (e.g. run with a Python that has torch)."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as TF  # noqa: E402

from tinydiff import Tensor  # noqa: E402
from tinydiff import nn, optim  # noqa: E402

# every test runs twice: on the fast kernels and inside td.plain() (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("layer_path")


def to_torch(module, torch_module):
    torch_module.load_state_dict({k: torch.from_numpy(v) for k, v in module.state_dict().items()})
    return torch_module


def compare(ours, theirs, x, atol=1e-5):
    """Forward values and the gradients of sum(y * g) w.r.t. input and every parameter."""
    rng = np.random.default_rng(99)
    xt = Tensor(x, requires_grad=True)
    y = ours(xt)
    x_torch = torch.from_numpy(x.copy()).requires_grad_()
    y_torch = theirs(x_torch)
    np.testing.assert_allclose(y.data, y_torch.detach().numpy(), atol=atol, rtol=1e-4)
    g = rng.standard_normal(y.shape).astype(np.float32)
    y.backward(g)
    y_torch.backward(torch.from_numpy(g))
    np.testing.assert_allclose(xt.grad, x_torch.grad.numpy(), atol=atol, rtol=1e-4)
    theirs_named = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        np.testing.assert_allclose(p.grad, theirs_named[name].grad.numpy(), atol=atol, rtol=1e-4, err_msg=name)


def test_linear():
    ours = nn.Linear(5, 3, rng=np.random.default_rng(0))
    compare(ours, to_torch(ours, torch.nn.Linear(5, 3)), np.random.default_rng(1).standard_normal((4, 5), np.float32))


@pytest.mark.parametrize("kernel,stride,padding", [(1, 1, 0), (3, 1, 1), (3, 2, 1), (3, 2, 0), (3, 1, 2), (1, 2, 2)])
def test_conv2d(kernel, stride, padding):
    ours = nn.Conv2d(3, 5, kernel, stride, padding, rng=np.random.default_rng(0))
    theirs = to_torch(ours, torch.nn.Conv2d(3, 5, kernel, stride, padding))
    compare(ours, theirs, np.random.default_rng(1).standard_normal((2, 3, 9, 8), np.float32))


def test_groupnorm_with_random_affine():
    ours = nn.GroupNorm(4, 8)
    ours.weight.data[...] = np.random.default_rng(2).standard_normal(8)
    ours.bias.data[...] = np.random.default_rng(3).standard_normal(8)
    compare(ours, to_torch(ours, torch.nn.GroupNorm(4, 8)), np.random.default_rng(1).standard_normal((2, 8, 5, 3), np.float32))


def test_attention_block_against_torch_ops():
    ours = nn.SelfAttention2d(8, num_groups=4, rng=np.random.default_rng(0))
    norm, qkv, proj = torch.nn.GroupNorm(4, 8), torch.nn.Conv2d(8, 24, 1), torch.nn.Conv2d(8, 8, 1)
    theirs = to_torch(ours, torch.nn.ModuleDict({"norm": norm, "qkv": qkv, "proj": proj}))

    def block(x):
        B, C, H, W = x.shape
        q, k, v = qkv(norm(x)).reshape(B, 3 * C, H * W).chunk(3, dim=1)
        a = torch.softmax(q.transpose(1, 2) @ k / C ** 0.5, dim=-1)          # [B, N, N]
        return x + proj((v @ a.transpose(1, 2)).reshape(B, C, H, W))

    theirs.forward = block
    compare(ours, theirs, np.random.default_rng(1).standard_normal((2, 8, 4, 3), np.float32))


def test_embedding_upsample_and_timestep_embedding():
    emb = nn.Embedding(10, 4, rng=np.random.default_rng(0))
    labels = np.array([3, 3, 9, 0])
    torch_emb = to_torch(emb, torch.nn.Embedding(10, 4))
    np.testing.assert_array_equal(emb(labels).data, torch_emb(torch.from_numpy(labels)).detach().numpy())
    x = np.random.default_rng(1).standard_normal((2, 3, 4, 5), np.float32)
    np.testing.assert_array_equal(nn.Upsample(2)(x).data,
                                  TF.interpolate(torch.from_numpy(x), scale_factor=2, mode="nearest").numpy())
    t = torch.tensor([0, 5, 999], dtype=torch.float64)                 # improved-diffusion's formula
    freqs = torch.exp(-np.log(10000) * torch.arange(32, dtype=torch.float64) / 32)
    want = torch.cat([torch.sin(t[:, None] * freqs), torch.cos(t[:, None] * freqs)], dim=-1)
    np.testing.assert_allclose(nn.timestep_embedding(np.array([0, 5, 999]), 64), want.numpy(), atol=1e-6)


@pytest.mark.parametrize("ours_cls,torch_cls,kw", [
    (optim.SGD, torch.optim.SGD, dict(lr=0.1, momentum=0.9, weight_decay=0.01)),
    (optim.Adam, torch.optim.Adam, dict(lr=1e-2, weight_decay=0.1)),
    (optim.AdamW, torch.optim.AdamW, dict(lr=1e-2, weight_decay=0.1)),
])
def test_optimizer_steps(ours_cls, torch_cls, kw):
    rng = np.random.default_rng(0)
    p0 = rng.standard_normal((3, 4)).astype(np.float32)
    ours = nn.Parameter(p0.copy())
    theirs = torch.nn.Parameter(torch.from_numpy(p0.copy()))
    opt, topt = ours_cls([ours], **kw), torch_cls([theirs], **kw)
    for _ in range(10):
        g = rng.standard_normal(p0.shape).astype(np.float32)
        ours.grad, theirs.grad = g, torch.from_numpy(g.copy())
        opt.step()
        topt.step()
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours.data, theirs.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_clip_grad_norm():
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal(s).astype(np.float32) for s in [(3, 4), (5,)]]
    ours = [nn.Parameter(np.zeros_like(g)) for g in grads]
    theirs = [torch.nn.Parameter(torch.zeros(g.shape)) for g in grads]
    for p, q, g in zip(ours, theirs, grads):
        p.grad, q.grad = g.copy(), torch.from_numpy(g.copy())
    total = optim.clip_grad_norm(ours, 0.5)
    assert total == pytest.approx(float(torch.nn.utils.clip_grad_norm_(theirs, 0.5)), rel=1e-6)
    for p, q in zip(ours, theirs):
        np.testing.assert_allclose(p.grad, q.grad.numpy(), rtol=1e-6)


def test_unet_matches_torch_twin():
    """MNIST-UNET (fast kernels: Winograd, phase convolutions, fused GroupNorm+SiLU, channels-last)
    against bench/bench_unet.py's PyTorch twin loaded with the same state dict: outputs and
    every parameter's gradient agree to float32 tolerance."""
    import importlib.util
    import pathlib
    path = pathlib.Path(__file__).resolve().parents[1] / "bench" / "bench_unet.py"
    spec = importlib.util.spec_from_file_location("bench_unet", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    errors = bench.check(batch=2)
    assert errors["output"] < 1e-5 and errors["worst_parameter_gradient"] < 1e-4, errors
