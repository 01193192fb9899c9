"""legato's tests: parity against references (NVIDIA fixture, torchdiffeq, dlib), formats, bad input.

Run: python -m pytest -q test_legato.py
"""
import argparse
import collections
import math
import os
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from model import CheckpointError, Generator, GeneratorConfig, rosinality_key_map

ROOT = Path(__file__).resolve().parent
FIXTURE = ROOT.parent / 'shared' / 'fixtures' / 'stylegan2_reference_small.pt'


def tiny_cfg(**kw):
    base = dict(img_resolution=32, z_dim=32, w_dim=32, channel_base=512, channel_max=32, mapping_layers=2)
    return GeneratorConfig(**{**base, **kw})


def randomized(G, seed=0):
    """Random values everywhere (biases, noise strengths, w_avg too), so every tensor matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for k, v in G.state_dict().items():
            if not k.endswith('resample_filter'):
                v.copy_(torch.randn(v.shape, generator=g) * (0.5 if v.ndim < 2 else 1))
    return G.eval()


# -----------------------------------------------------------------------------
# model.py: parity with the official StyleGAN2-ADA generator

@pytest.fixture(scope='module')
def ref():
    if not FIXTURE.exists():
        pytest.skip(f'reference fixture not found at {FIXTURE}')
    d = torch.load(FIXTURE, weights_only=True)
    kw = d['init_kwargs']
    cfg = GeneratorConfig(img_resolution=kw['img_resolution'], z_dim=kw['z_dim'], w_dim=kw['w_dim'],
                          channel_base=kw['synthesis_kwargs']['channel_base'],
                          channel_max=kw['synthesis_kwargs']['channel_max'],
                          mapping_layers=kw['mapping_kwargs']['num_layers'],
                          mapping_lr_mul=kw['mapping_kwargs']['lr_multiplier'],
                          conv_clamp=kw['synthesis_kwargs']['conv_clamp'])
    G = Generator(cfg)
    G.load_state_dict(d['state_dict'], strict=True)
    return d, G.eval()


def test_fixture_parity(ref):
    d, G = ref
    assert list(G.state_dict()) == list(d['state_dict'])  # same names, same order as NVIDIA
    with torch.no_grad():
        ws = G.mapping(d['z'], psi=d['truncation_psi'])
        assert (ws - d['ws']).abs().max() <= 1e-4
        assert (G.mapping(d['z']) - d['ws_untruncated']).abs().max() <= 1e-4
        img = G.synthesis(d['ws'], noise_mode='const')
        assert (img - d['img']).abs().max() <= 1e-4
        img_mixed, feats = G.synthesis(d['ws_mixed'], return_features=True)
        assert (img_mixed - d['img_mixed']).abs().max() <= 1e-4
        # The fixture's block_features were recorded during its last forward, the style-mixed one (its README
        # says the `img` forward: b4/b8 agree with both, b16/b32 only with the mixed one).
        for k, v in d['block_features'].items():
            assert (feats[k] - v).abs().max() <= 1e-4, k
        # the non-fused modulated conv path is the same math
        assert (G.synthesis(d['ws'], fused=False) - d['img']).abs().max() <= 1e-4


def test_truncation_cutoff_and_noise_modes(ref):
    d, G = ref
    with torch.no_grad():
        ws = G.mapping(d['z'], psi=0.7, cutoff=3)
        assert torch.equal(ws[:, :3], d['ws'][:, :3]) and torch.equal(ws[:, 3:], d['ws_untruncated'][:, 3:])
        a = G.synthesis(d['ws'], noise_mode='none')
        b = G.synthesis(d['ws'], noise_mode='random')
    assert not torch.allclose(a, d['img']) and not torch.allclose(b, d['img'])


def test_w_avg_tracking():
    G = Generator(tiny_cfg())
    z = torch.randn(16, 32)
    with torch.no_grad():
        w = G.mapping(z)[:, 0]
        G.mapping(z, update_w_avg=True)
    assert torch.allclose(G.mapping.w_avg, (1 - G.cfg.w_avg_beta) * w.mean(0), atol=1e-6)


# -----------------------------------------------------------------------------
# model.py: checkpoint formats

def _fake_persistence_modules():
    """torch_utils.persistence and dnnlib.util look-alikes, enough to write the official pickle format."""
    mods = {n: types.ModuleType(n) for n in ('torch_utils', 'torch_utils.persistence', 'dnnlib', 'dnnlib.util')}

    def _reconstruct_persistent_obj(meta):
        raise AssertionError('never called while writing')

    class EasyDict(dict):
        pass

    _reconstruct_persistent_obj.__module__ = 'torch_utils.persistence'
    _reconstruct_persistent_obj.__qualname__ = '_reconstruct_persistent_obj'
    EasyDict.__module__, EasyDict.__qualname__ = 'dnnlib.util', 'EasyDict'
    mods['torch_utils.persistence']._reconstruct_persistent_obj = _reconstruct_persistent_obj
    mods['dnnlib.util'].EasyDict = EasyDict
    return mods, _reconstruct_persistent_obj, EasyDict


def write_official_pkl(G, path, init_kwargs, marker):
    """Pickle G like NVIDIA's persistence does: per-module records with module_src and __dict__ state.

    The embedded module_src would create `marker` if anyone executed it."""
    mods, reconstruct, EasyDict = _fake_persistence_modules()

    class Persistent:
        def __init__(self, meta):
            self.meta = meta

        def __reduce__(self):
            return reconstruct, (self.meta,)

    def record(m, kwargs=None):
        state = {'_parameters': collections.OrderedDict(m._parameters),
                 '_buffers': collections.OrderedDict(m._buffers), '_non_persistent_buffers_set': set(),
                 '_modules': collections.OrderedDict((k, record(c)) for k, c in m._modules.items() if c is not None),
                 'training': False, '_init_args': (), '_init_kwargs': EasyDict(kwargs or {})}
        for a in ('conv_clamp', 'w_avg_beta', 'resolution', 'up'):
            if hasattr(m, a):
                state[a] = getattr(m, a)
        for a in ('weight_gain', 'bias_gain'):
            if hasattr(m, a):
                state[a] = np.float64(getattr(m, a))
        if type(m).__name__ == 'SynthesisBlock':
            state['architecture'] = 'skip'
        src = f'import os\nopen({str(marker)!r}, "w").write("executed")\n'
        return Persistent({'type': 'class', 'version': 6, 'module_src': src, 'class_name': type(m).__name__,
                           'state': state})

    sys.modules.update(mods)
    try:
        kw = EasyDict({k: (EasyDict(v) if isinstance(v, dict) else v) for k, v in init_kwargs.items()})
        with open(path, 'wb') as f:
            pickle.dump({'G': None, 'D': None, 'G_ema': record(G, kw), 'training_set_kwargs': None,
                         'augment_pipe': None}, f, protocol=pickle.HIGHEST_PROTOCOL)
    finally:
        for n in mods:
            del sys.modules[n]


@pytest.mark.parametrize('cfg', [
    tiny_cfg(conv_clamp=256),                                                  # 8-layer-like ADA file, clamped
    tiny_cfg(mapping_layers=2, conv_clamp=None, num_fp16_res=2),              # ADA `auto`: 2 mapping layers, fp16
    tiny_cfg(img_resolution=64, w_dim=48, z_dim=24, channel_base=1024, channel_max=48, mapping_lr_mul=0.1),
])
def test_official_pkl_roundtrip(tmp_path, cfg):
    G = randomized(Generator(cfg))
    marker = tmp_path / 'executed.txt'
    path = tmp_path / 'net.pkl'
    kwargs = {'z_dim': cfg.z_dim, 'w_dim': cfg.w_dim, 'img_resolution': cfg.img_resolution,
              'mapping_kwargs': {'num_layers': cfg.mapping_layers},
              'synthesis_kwargs': {'channel_base': cfg.channel_base, 'num_fp16_res': cfg.num_fp16_res}}
    write_official_pkl(G, path, kwargs, marker)
    assert 'torch_utils' not in sys.modules and 'dnnlib' not in sys.modules
    H = Generator.from_checkpoint(path)
    assert not marker.exists()  # the embedded source was never executed
    assert H.cfg == cfg  # every hyper-parameter came from the file
    for k, v in G.state_dict().items():
        assert torch.equal(v, H.state_dict()[k]), k
    z = torch.randn(2, cfg.z_dim)
    with torch.no_grad():
        assert torch.equal(G(z, psi=0.5), H(z, psi=0.5))


class _Evil:
    def __reduce__(self):
        return os.system, ('echo pwned > /dev/null',)


def test_hostile_pickle_refused(tmp_path):
    path = tmp_path / 'evil.pkl'
    with open(path, 'wb') as f:
        pickle.dump({'G_ema': _Evil()}, f)
    with pytest.raises(CheckpointError, match=r'evil\.pkl.*refusing to load (posix|os)\.system'):
        Generator.from_checkpoint(path)


def to_rosinality(sd, cfg):
    """An NVIDIA state dict laid out as rosinality's g_ema (reshapes, plus its constant filter buffers)."""
    g = {}
    for nv, ro in rosinality_key_map(cfg).items():
        v = sd[nv]
        if nv.endswith('noise_strength'):
            v = v.reshape(1)
        elif nv.endswith('noise_const'):
            v = v[None, None]
        elif nv.endswith('const') or (nv.endswith('.weight') and v.ndim == 4):
            v = v[None]
        elif 'torgb.bias' in nv:
            v = v.reshape(1, -1, 1, 1)
        g[ro] = v.clone()
    g['convs.0.conv.blur.kernel'] = torch.ones(4, 4)  # constants rosinality stores; the loader ignores them
    return g


def test_rosinality_roundtrip(tmp_path):
    cfg = tiny_cfg(mapping_layers=3)
    G = randomized(Generator(cfg))
    sd = G.state_dict()
    g = to_rosinality(sd, cfg)
    assert 'convs.1.conv.modulation.weight' in g and 'to_rgbs.0.bias' in g and 'noises.noise_3' in g
    torch.save({'g_ema': g, 'latent_avg': sd['mapping.w_avg'].clone()}, tmp_path / 'conv.pt')
    torch.save({'g_ema': g, 'args': argparse.Namespace(size=32, lr_mlp=0.01)}, tmp_path / 'snap.pt')
    H = Generator.from_checkpoint(tmp_path / 'conv.pt')
    assert H.cfg == cfg
    ws = torch.randn(3, G.num_ws, cfg.w_dim)
    with torch.no_grad():
        assert torch.equal(G.synthesis(ws), H.synthesis(ws))
        z = torch.randn(3, cfg.z_dim)
        assert torch.equal(G(z, psi=0.7), H(z, psi=0.7))
    S = Generator.from_checkpoint(tmp_path / 'snap.pt')  # training snapshot: no latent_avg, estimated
    with torch.no_grad():
        assert torch.equal(G.synthesis(ws), S.synthesis(ws))


def test_own_checkpoint_roundtrip(tmp_path):
    G = randomized(Generator(tiny_cfg(conv_clamp=256)))
    G.save(tmp_path / 'g.pt')
    assert not (tmp_path / 'g.pt.tmp').exists()
    H = Generator.from_checkpoint(tmp_path / 'g.pt')
    assert H.cfg == G.cfg
    z = torch.randn(2, 32)
    with torch.no_grad():
        assert torch.equal(G(z), H(z))


def test_bad_checkpoints(tmp_path):
    G = Generator(tiny_cfg())
    G.save(tmp_path / 'good.pt')
    data = (tmp_path / 'good.pt').read_bytes()
    (tmp_path / 'trunc.pt').write_bytes(data[:len(data) // 2])
    (tmp_path / 'notes.pt').write_text('hello')
    (tmp_path / 'trunc.pkl').write_bytes(pickle.dumps({'G_ema': 1})[:5])
    torch.save({'weights': torch.zeros(3)}, tmp_path / 'other.pt')
    torch.save({'config': tiny_cfg(channel_max=64).__dict__, 'state_dict': G.state_dict()}, tmp_path / 'arch.pt')
    torch.save({'g_ema': {'conv1.weight': torch.zeros(1)}}, tmp_path / 'badros.pt')
    for name in ('trunc.pt', 'notes.pt', 'trunc.pkl', 'other.pt', 'arch.pt', 'badros.pt', 'missing.pt'):
        with pytest.raises(CheckpointError) as e:
            Generator.from_checkpoint(tmp_path / name)
        msg = str(e.value)
        assert name in msg and '\n' not in msg, msg


def test_adapter_slot_is_transparent():
    G = randomized(Generator(tiny_cfg()))
    ws = torch.randn(2, G.num_ws, 32)
    with torch.no_grad():
        ref, feats = G.synthesis(ws, return_features=True)
        for b in G.synthesis.blocks()[1:]:
            b.adapter = torch.nn.Identity()
        img = G.synthesis(ws)
    assert torch.equal(ref, img) and set(feats) == {'b4', 'b8', 'b16', 'b32'}


# -----------------------------------------------------------------------------
# ode_adapter.py

import torchdiffeq  # noqa: E402

from ode_adapter import (ODEAdapter, VectorField, adapters, attach_adapters, integrate, load_adapters,  # noqa: E402
                         param_report, save_adapters, time_grid)


def live_field(channels=8, hidden=16, seed=0, dtype=torch.float32):
    """A vector field with a non-zero last layer (a trained adapter, not a fresh one)."""
    torch.manual_seed(seed)
    f = VectorField(channels, hidden).to(dtype)
    with torch.no_grad():
        f.net[2].weight.normal_(0, 0.3)
        f.net[2].bias.normal_(0, 0.1)
    return f


def adapted_tiny(seed=0):
    G = attach_adapters(randomized(Generator(tiny_cfg()), seed), hidden=16)
    return G


def test_zero_init_is_identity():
    G = adapted_tiny()
    ws = torch.randn(3, G.num_ws, 32)
    traj = {}
    with torch.no_grad():
        out = G.synthesis(ws, traj=traj)
        for b in G.synthesis.blocks():
            b.adapter = None
        ref = G.synthesis(ws)
    assert torch.equal(out, ref)
    assert sorted(traj) == ['b16', 'b32', 'b8'] and all(len(s) == 5 for s in traj.values())  # T=1.6, h=0.4
    for states in traj.values():
        for a, b in zip(states[:-1], states[1:]):
            assert torch.equal(a, b)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('solver', ['euler', 'midpoint', 'rk4'])
@pytest.mark.parametrize('T,h', [(1.6, 0.4), (1.0, 0.3), (0.5, 0.125)])
def test_solvers_match_torchdiffeq(dtype, solver, T, h):
    f = live_field(dtype=dtype)
    x = torch.randn(2, 8, 4, 4, dtype=dtype)
    out, states = integrate(f, x, T, h, solver)
    grid = torch.tensor(time_grid(T, h), dtype=dtype)
    ref = torchdiffeq.odeint(f, x, grid, method=solver, options={'grid_constructor': lambda *_: grid})
    assert len(states) == len(grid) == ref.shape[0]
    for s, r in zip(states, ref):
        assert (s - r).abs().max() <= 1e-6
    # the torchdiffeq backend gives the same states through our interface
    out2, states2 = integrate(f, x, T, h, solver, backend='torchdiffeq')
    assert (out2 - out).abs().max() <= 1e-6 and len(states2) == len(states)


@pytest.mark.parametrize('solver', ['euler', 'midpoint', 'rk4'])
def test_solver_gradients_match_odeint(solver):
    f = live_field(dtype=torch.float64)
    x = torch.randn(2, 8, 4, 4, dtype=torch.float64)
    target = torch.randn_like(x)

    def grads(run):
        f.zero_grad()
        (run() - target).square().sum().backward()
        return [p.grad.clone() for p in f.parameters()]

    ours = grads(lambda: integrate(f, x, 1.0, 0.3, solver)[0])
    grid = torch.tensor(time_grid(1.0, 0.3), dtype=torch.float64)
    ref = grads(lambda: torchdiffeq.odeint(f, x, grid, method=solver, options={'grid_constructor': lambda *_: grid})[-1])
    for a, b in zip(ours, ref):
        assert (a - b).norm() <= 1e-5 * b.norm()


@pytest.mark.parametrize('solver,order', [('euler', 1), ('midpoint', 2), ('rk4', 4)])
def test_convergence_order(solver, order):
    A = torch.tensor([[-1.0, 2.0], [-2.0, -1.0]], dtype=torch.float64)  # a damped rotation
    f = lambda t, x: x @ A.T  # noqa: E731
    x0 = torch.tensor([[1.0, 0.5]], dtype=torch.float64)
    exact = x0 @ torch.linalg.matrix_exp(A * 1.0).T
    err = [(integrate(f, x0, 1.0, h, solver)[0] - exact).norm().item() for h in (0.05, 0.025)]
    ratio = err[0] / err[1]
    assert abs(math.log2(ratio) - order) < 0.15, (solver, ratio)


def test_time_grid_is_a_continuous_dial():
    assert time_grid(1.6, 0.4) == pytest.approx([0, 0.4, 0.8, 1.2, 1.6]) and len(time_grid(1.6, 0.4)) == 5
    assert time_grid(1.0, 0.4) == pytest.approx([0, 0.4, 0.8, 1.0])
    assert time_grid(0, 0.4) == [0.0]


def test_dial_t0_is_original_and_t_changes_output():
    G = adapted_tiny()
    with torch.no_grad():
        for ad in adapters(G).values():
            ad.f.net[2].weight.normal_(0, 0.2)
    ws = torch.randn(2, G.num_ws, 32)
    with torch.no_grad():
        a0 = G.synthesis(ws, T=0)
        a1, a2 = G.synthesis(ws, T=0.8), G.synthesis(ws, T=1.6)
        for b in G.synthesis.blocks():
            b.adapter = None
        ref = G.synthesis(ws)
    assert torch.equal(a0, ref)
    assert (a1 - ref).abs().mean() < (a2 - ref).abs().mean()


def test_adaptive_and_adjoint_backends_run():
    f = live_field()
    x = torch.randn(1, 8, 4, 4)
    out, states = integrate(f, x, 1.0, 0.25, 'dopri5', backend='torchdiffeq')
    ref, _ = integrate(f, x, 1.0, 0.001, 'rk4')
    assert len(states) == 5 and (out - ref).abs().max() < 1e-4
    out_adj, _ = integrate(f, x.requires_grad_(), 1.0, 0.25, 'euler', backend='adjoint')
    out_adj.sum().backward()
    assert f.net[0].weight.grad is not None


def test_adapter_params_and_fp16_input():
    G = attach_adapters(Generator(GeneratorConfig(img_resolution=256, channel_base=32768)))
    trainable, frozen = param_report(G)
    assert trainable == 1_249_152 and frozen == 30_034_338
    assert all(p.requires_grad == ('.adapter.' in n) for n, p in G.named_parameters())
    ad = ODEAdapter(8, 16)
    y = ad(torch.randn(1, 8, 4, 4).half())
    assert y.dtype == torch.float16 and all(p.dtype == torch.float32 for p in ad.parameters())


def test_adapter_file_roundtrip_and_errors(tmp_path):
    G = adapted_tiny()
    with torch.no_grad():
        for ad in adapters(G).values():
            ad.f.net[2].weight.normal_(0, 0.2)
    save_adapters(G, tmp_path / 'a.pt')
    assert (tmp_path / 'a.pt').stat().st_size < 100_000
    H = randomized(Generator(tiny_cfg()), 0)
    load_adapters(H, tmp_path / 'a.pt')
    ws = torch.randn(2, G.num_ws, 32)
    with torch.no_grad():
        assert torch.equal(G.synthesis(ws, T=1.2), H.synthesis(ws, T=1.2))
    with pytest.raises(ValueError, match=r'a\.pt: adapters were trained for another generator .*channel_max'):
        load_adapters(Generator(tiny_cfg(channel_max=64)), tmp_path / 'a.pt')
    (tmp_path / 'junk.pt').write_text('junk')
    with pytest.raises(ValueError, match=r'junk\.pt: not an adapter file'):
        load_adapters(H, tmp_path / 'junk.pt')
    x = torch.randn(1, 8, 2, 2)
    f = live_field()
    with pytest.raises(ValueError, match='T must be'):
        integrate(f, x, -1.0, 0.4)
    for h in (0.0, -0.1):
        with pytest.raises(ValueError, match='step size h must be > 0'):
            integrate(f, x, 1.0, h)
    with pytest.raises(ValueError, match="unknown solver 'rk45'"):
        integrate(f, x, 1.0, 0.4, 'rk45')
    with pytest.raises(ValueError, match='unknown ODE backend'):
        integrate(f, x, 1.0, 0.4, 'euler', backend='jax')
