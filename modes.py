"""
Who fresh samples were, as a viewer sees them, on a generator made by pretrain.py, which keeps each training photo's
latent: per photo, its samples' share, how far they moved and who each judge calls them before and after.

    python evaluate.py runs/obama_1-ode --modes    # modes.json, modes.png
"""
from pathlib import Path

import torch

from data import save_grid
from helpers import CheckpointError, in_repo, load, table, write_json
from judges import Judge, eval_latents, make_panel, seeds
from model import generate
from ode_adapter import load_run


def modes(run, args, device, k=6):
    """Who fresh samples were as a viewer sees them, on a generator made by pretrain.py (the built-in one), which
    keeps each training photo's latent: a sample is drawn from the photo whose image is nearest in pixels. Per photo:
    its samples' share, how far they moved (mean absolute pixel change) and who each judge calls them before and
    after -> modes.json, modes.png (k pairs before | after a row, one row per photo). At 64 px the judges split some
    of a person's samples between people (docs/person-mode.md); this says whose they were."""
    G_s, G_u, s_kw, meta = load_run(run, device, args.ckpt)
    gen = args.ckpt or in_repo(meta['args']['ckpt'])
    try:
        pre = load(gen, 'a generator checkpoint').get('pretrain') or {}
    except (CheckpointError, AttributeError):
        pre = {}
    if not isinstance(pre.get('anchors'), torch.Tensor) or len(pre.get('anchor_names', ())) != len(pre['anchors']):
        raise ValueError(f"--modes: {gen} keeps no training photos' latents (generators made by pretrain.py do, "
                         'such as the built-in assets/generator.pt)')
    names = list(pre['anchor_names'])
    ws = eval_latents(G_s, args.n, seeds(args)[0])
    before, after = generate(G_s, ws, s_kw), generate(G_u, ws, {})
    photo = torch.cdist(before.flatten(1), generate(G_s, G_s.mapping(pre['anchors'].to(device)), s_kw).flatten(1)).argmin(1)
    panel = make_panel(meta, G_s, s_kw, Judge(args, device, G_s.cfg.framing), args)
    eb, ea = panel.drawn(G_s, ws, s_kw, 'modes, before'), panel.drawn(G_u, ws, {}, 'modes, after')
    who_is = lambda e: {n: (e == i).float().mean().item()  # noqa: E731 - recognise's indices, -1 nobody
                        for i, n in [*enumerate(panel.names), (-1, 'nobody')]}
    rows, pairs = {}, []
    for i, name in enumerate(names):
        s = photo == i
        rows[name] = {'share': s.float().mean().item(), 'moved': (after[s] - before[s]).abs().mean().item(),  # NaN: none
                      **{j: {'before': who_is(panel.recognise(j, eb[j][s])[0]),
                             'after': who_is(panel.recognise(j, ea[j][s])[0])} for j in panel.rules}}
        idx = s.nonzero().squeeze(1)[:k]
        pairs.append(torch.cat([torch.stack([before[idx], after[idx]], 1).flatten(0, 1),
                                -torch.ones(2 * (k - len(idx)), *before.shape[1:], device=device)]))
    out = {'n': args.n, 'seed': seeds(args)[0], 'psi': 0.7, 'people': panel.names, 'photos': rows}
    write_json(out, Path(run) / 'modes.json')
    grid = torch.cat(pairs)
    save_grid(torch.nn.functional.interpolate(grid, scale_factor=max(1, 192 // grid.shape[-1]), mode='bilinear'),
              Path(run) / 'modes.png', nrow=2 * k)
    person = panel.names[0]
    print(table([{'photo': n, 'share': r['share'], 'moved': r['moved'],
                  **{f'{j} {person} before': r[j]['before'][person] for j in panel.rules},
                  **{f'{j} {person} after': r[j]['after'][person] for j in panel.rules}} for n, r in rows.items()],
                ['photo', 'share', 'moved', *(f'{j} {person} {w}' for w in ('before', 'after') for j in panel.rules)]))
    print(f'wrote {run}/modes.json, {run}/modes.png (one row per training photo, pairs before | after)')
    return out
