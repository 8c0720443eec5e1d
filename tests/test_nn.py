"""Module machinery: parameter discovery and PyTorch-style names, state dicts, modes,
casting; and the shared helpers (rng, dtype checks, default initialisation)."""
import numpy as np
import pytest

from tinydiff import Tensor
from tinydiff.nn import (Conv2d, Dropout, Embedding, GroupNorm, Linear, Module, ModuleList, Parameter,
                         SelfAttention2d, Sequential, SiLU, Upsample)

# every test runs twice: on the fast kernels and inside td.plain() (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("layer_path")


class Block(Module):
    def __init__(self, rng):
        super().__init__()
        self.norm = GroupNorm(2, 4)
        self.lin = Linear(4, 4, rng=rng)
        self.drop = Dropout(0.5, rng=rng)

    def forward(self, x):
        return self.drop(self.lin(self.norm(x)))


class Net(Module):
    def __init__(self, seed=0):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.embed = Linear(3, 4, rng=rng)
        self.blocks = ModuleList([Block(rng), Block(rng)])
        self.scale = Parameter(np.ones(4, np.float32))      # own parameter, assigned after the children

    def forward(self, x):
        h = self.embed(x)
        for block in self.blocks:
            h = h + block(h)
        return h * self.scale


# ---------------------------------------------------------------- names and discovery
def test_parameter_names_follow_pytorch():
    names = [n for n, _ in Net().named_parameters()]
    assert names == ["scale", "embed.weight", "embed.bias",
                     "blocks.0.norm.weight", "blocks.0.norm.bias", "blocks.0.lin.weight", "blocks.0.lin.bias",
                     "blocks.1.norm.weight", "blocks.1.norm.bias", "blocks.1.lin.weight", "blocks.1.lin.bias"]
    seq = Sequential(Linear(2, 3), SiLU(), Linear(3, 1))
    assert [n for n, _ in seq.named_parameters()] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert list(seq.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]


def test_parameters_are_listed_once_when_shared():
    lin = Linear(2, 2)
    seq = Sequential(lin, lin)
    assert len(seq.parameters()) == 2
    assert list(seq.state_dict()) == ["0.weight", "0.bias", "1.weight", "1.bias"]   # as PyTorch
    assert seq.num_parameters() == 6


def test_plain_list_of_modules_is_rejected_with_a_pointer_to_modulelist():
    class Bad(Module):
        def __init__(self):
            super().__init__()
            self.layers = [Linear(2, 2)]

    with pytest.raises(TypeError, match="ModuleList"):
        Bad()


def test_subclass_without_super_init_still_works():
    class NoInit(Module):
        def __init__(self):
            self.lin = Linear(2, 2)

    m = NoInit()
    assert m.training and len(m.parameters()) == 2
    m.eval()
    assert not m.lin.training


def test_sequential_and_modulelist_behave_like_lists():
    seq = Sequential(Linear(2, 3), SiLU())
    assert len(seq) == 2 and isinstance(seq[1], SiLU) and isinstance(seq[:1], Sequential)
    x = np.ones((5, 2), np.float32)
    np.testing.assert_array_equal(seq(x).data, seq[1](seq[0](x)).data)
    ml = ModuleList().append(Linear(1, 1)).extend([SiLU()])
    assert [type(m).__name__ for m in ml] == ["Linear", "SiLU"]
    with pytest.raises(TypeError, match="holds Modules"):
        ml.append(3)
    with pytest.raises(NotImplementedError, match="ModuleList"):
        ml(x)


def test_repr_shows_the_tree():
    text = repr(Net())
    assert "(blocks): ModuleList(" in text and "(0): Block(" in text and "in_features=4" in text


# ---------------------------------------------------------------- state dicts
def test_state_dict_holds_copies():
    net = Net()
    sd = net.state_dict()
    sd["embed.weight"][...] = 123.0
    assert not np.any(net.embed.weight.data == 123.0)
    assert all(isinstance(v, np.ndarray) for v in sd.values())


def test_state_dict_round_trips_exactly_including_through_npz(tmp_path):
    a, b = Net(seed=1), Net(seed=2)
    x = np.random.default_rng(0).standard_normal((3, 3)).astype(np.float32)
    a.eval(), b.eval()
    assert not np.allclose(a(x).data, b(x).data)
    np.savez(tmp_path / "ckpt.npz", **a.state_dict())
    with np.load(tmp_path / "ckpt.npz", allow_pickle=False) as f:
        missing, unexpected = b.load_state_dict(f)
    assert missing == [] and unexpected == []
    for (name, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        np.testing.assert_array_equal(va, vb, err_msg=name)
        assert va.dtype == vb.dtype
    np.testing.assert_array_equal(a(x).data, b(x).data)


def test_load_state_dict_lists_every_offending_key_and_loads_nothing():
    net = Net()
    before = net.state_dict()
    sd = Net(seed=5).state_dict()
    del sd["blocks.1.lin.bias"], sd["scale"]
    sd["blocks.7.lin.bias"] = np.zeros(4, np.float32)
    sd["embed.weight"] = np.zeros((4, 2), np.float32)
    with pytest.raises(ValueError) as info:
        net.load_state_dict(sd)
    msg = str(info.value)
    for key in ["blocks.1.lin.bias", "scale", "blocks.7.lin.bias", "embed.weight", "(4, 2)", "(4, 3)"]:
        assert key in msg
    assert "missing" in msg and "unexpected" in msg and "shape" in msg
    for name, value in net.state_dict().items():                # a failed load changes nothing
        np.testing.assert_array_equal(value, before[name])


def test_load_state_dict_non_strict_reports_and_loads_the_rest():
    net, other = Net(seed=0), Net(seed=3)
    sd = other.state_dict()
    del sd["scale"]
    sd["extra"] = np.zeros(2)
    missing, unexpected = net.load_state_dict(sd, strict=False)
    assert missing == ["scale"] and unexpected == ["extra"]
    np.testing.assert_array_equal(net.embed.weight.data, other.embed.weight.data)
    sd["embed.bias"] = np.zeros(7)
    with pytest.raises(ValueError, match="embed.bias"):     # shape mismatches are never allowed
        net.load_state_dict(sd, strict=False)


def test_load_state_dict_casts_to_the_parameter_dtype_in_place():
    lin = Linear(2, 2)
    weight_array = lin.weight.data
    lin.load_state_dict({"weight": np.full((2, 2), 0.5), "bias": np.zeros(2)})   # float64 values
    assert lin.weight.data is weight_array and lin.weight.dtype == np.float32
    assert np.all(lin.weight.data == 0.5)


# ---------------------------------------------------------------- modes, grads, casting
def test_train_eval_reach_every_descendant():
    net = Net()
    assert all(m.training for m in net.modules())
    assert net.eval() is net
    assert not any(m.training for m in net.modules())
    net.train()
    assert net.blocks[1].drop.training


def test_zero_grad_clears_every_parameter():
    net = Net()
    net(np.ones((2, 3), np.float32)).sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())


def test_astype_float64_casts_everything_and_forward_follows():
    net = Net().eval()
    x = np.ones((2, 3), np.float32)
    y32 = net(x).data
    assert net.astype(np.float64) is net
    assert all(p.dtype == np.float64 for p in net.parameters())
    y64 = net(x.astype(np.float64))
    assert y64.dtype == np.float64
    np.testing.assert_allclose(y64.data, y32, rtol=1e-5, atol=1e-6)
    with pytest.raises(TypeError, match="dtype"):
        net.astype(np.int32)


def test_astype_recomputes_the_time_embedding_table_in_the_new_dtype():
    """A UNet built in float32 and cast to float64 equals one built in float64 with the same
    weights: the sinusoidal table is recomputed, not float32 values cast up (which differ by ~1e-8)."""
    import tinydiff as td
    built32 = td.models.UNet(base_channels=8, channel_mults=(1, 2), zero_init_out=False, rng=np.random.default_rng(0))
    t = np.array([3, 500, 999])
    built32.embed(t)                                         # fills the float32 table first
    cast = built32.astype(np.float64)
    built64 = td.models.UNet(base_channels=8, channel_mults=(1, 2), zero_init_out=False, rng=np.random.default_rng(0),
                             dtype=np.float64)
    built64.load_state_dict(cast.state_dict())
    assert cast.time_pos(t).dtype == np.float64
    np.testing.assert_array_equal(cast.embed(t).data, built64.embed(t).data)


@pytest.mark.parametrize("make", [
    lambda **kw: Linear(3, 2, **kw), lambda **kw: Conv2d(2, 3, 3, **kw), lambda **kw: Embedding(4, 3, **kw),
    lambda **kw: GroupNorm(2, 4, **kw), lambda **kw: SelfAttention2d(4, num_groups=2, **kw)])
def test_layers_take_rng_and_dtype_and_check_them(make):
    a = make(rng=np.random.default_rng(7))
    b = make(rng=np.random.default_rng(7))
    for (name, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        np.testing.assert_array_equal(va, vb, err_msg=name)        # same seed, same weights
        assert va.dtype == np.float32                               # float32 by default
    assert all(p.dtype == np.float64 for p in make(dtype=np.float64).parameters())
    make()                                                          # rng=None: a fresh unseeded generator
    with pytest.raises(TypeError, match="rng"):
        make(rng=np.random.RandomState(0))
    with pytest.raises(TypeError, match="dtype"):
        make(dtype=np.int64)


def test_parameters_require_grad_and_plain_tensors_are_not_parameters():
    class WithBuffer(Module):
        def __init__(self):
            super().__init__()
            self.w = Parameter(np.zeros(2))
            self.cache = Tensor(np.zeros(3))

    m = WithBuffer()
    assert [n for n, _ in m.named_parameters()] == ["w"]
    assert m.w.requires_grad and repr(m.w).startswith("Parameter(")


def test_no_float64_creeps_into_a_float32_forward_graph():
    """A float64 input is cast at the first layer; every node of the graph stays float32."""
    rng = np.random.default_rng(0)

    class Tiny(Module):
        def __init__(self):
            super().__init__()
            self.conv = Conv2d(3, 4, 3, padding=1, rng=rng)
            self.norm = GroupNorm(2, 4)
            self.attn = SelfAttention2d(4, num_groups=2, rng=rng)
            self.up = Upsample(2)
            self.drop = Dropout(0.1, rng=rng)
            self.head = Linear(8, 2, rng=rng)

        def forward(self, x):
            h = self.attn(SiLU()(self.norm(self.conv(x))))
            return self.head(self.drop(self.up(h)))

    y = Tiny()(rng.standard_normal((2, 3, 4, 4)))                 # float64 input
    seen, stack = set(), [y]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        assert node.dtype == np.float32, f"{node.shape} is {node.dtype}"
        stack.extend(node._parents)
    assert len(seen) > 30
    y.sum().backward()
