"""
The spread tables of one person (the paper's method and person mode, the dial, the ablations), from the runs
docs/make.sh makes: mean +- standard deviation over training seeds 0, 1 and 2, and a fresh seed 3 checked against
the 95% prediction interval those three give for one more run (mean +- t_0.975,2 * sd * sqrt(1 + 1/3), at the
precision shown).

    python docs/summary.py runs/docs > docs/numbers.md
"""
import functools
import json
import math
import sys
from pathlib import Path

from scipy import stats

R = Path(sys.argv[1] if len(sys.argv) > 1 else 'runs/docs')
SPREAD, FRESH = (0, 1, 2), 3
PEOPLE = ('biden', 'collins', 'hopper')
TALLY = []  # for each number: does the fresh seed land within the prediction interval?


@functools.cache
def read(run, name='metrics.json'):
    return json.loads((R / run / name).read_text())


class Fmt:
    """How a number is shown: scale, decimals, unit."""
    def __init__(self, scale, digits, unit=''):
        self.scale, self.digits, self.unit = scale, digits, unit

    def __call__(self, v):
        return f'{round(v * self.scale, self.digits):.{self.digits}f}'

    def full(self, v):
        return self(v) + self.unit


pct, num, secs = Fmt(100, 1, '%'), Fmt(1, 3), Fmt(1, 0)


def cells(variant, get, fmt, name='metrics.json'):
    """['mean +- sd' over the spread seeds, the fresh seed's value and whether it lies in their prediction interval]."""
    vals = [get(read(f'{variant}-s{s}', name)) for s in SPREAD]
    n = len(vals)
    mean = sum(vals) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
    half = stats.t.ppf(0.975, n - 1) * sd * math.sqrt(1 + 1 / n)
    v = get(read(f'{variant}-s{FRESH}', name))
    inside = float(fmt(mean - half)) <= float(fmt(v)) <= float(fmt(mean + half))
    TALLY.append(inside)
    return [f'{fmt(mean)} +- {fmt(sd)}{fmt.unit}', f'{fmt(v)}{fmt.unit} {"in" if inside else "**out**"}']


def table(head, rows):
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    return '\n'.join(lines + ['| ' + ' | '.join(r) + ' |' for r in rows]) + '\n'


def key(*path):
    """A reader of one number: key('leak', '1', 'dlib') is m['leak']['1']['dlib'] of a metrics.json m."""
    return lambda m: functools.reduce(lambda d, k: d[k], path, m)


# the main table: the paper's method (--forget latent) and person mode (the default) side by side
before = read('person-s0')
MAIN = [  # label, before (the original generator), how to read it, format
    ('leak: samples showing Obama, dlib port', pct.full(before['leak_dlib_before']), key('leak_dlib_after'), pct),
    ('leak, dlib C++ pipeline', pct.full(before['leak_dlib_cpp_before']), key('leak_dlib_cpp_after'), pct),
    *[(f'{label} (port)', b, key('leak', '1', 'dlib', 'leak_went', who), pct) for label, b, who in [
        ('samples that showed Obama still Obama', '100%', 'obama'), ('... now Biden', '0%', 'biden'),
        ('... now nobody known', '0%', 'nobody')]],
    ('forgotten latent moved (its image before to after)', '0', key('ID'), num),
    ('forgotten latent\'s image to `obama_1`', num(before['ID_photo_before']), key('ID_photo_after'), num),
    ('held-out photos\' latents to the held-out photos', num(before['ID_heldout_photo_before']),
     key('ID_heldout_photo_after'), num),
    *[(f'{p.title()}\'s latent to his/her photo', num(before[f'retain_{p}_photo_before']),
       key(f'retain_{p}_photo_after'), num) for p in PEOPLE],
    ('kept people moved (mean of the three)', '0', key('retain_people'), num),
    *[(f'samples recognised as {p.title()} (C++)', pct.full(before[f'share_dlib_cpp_{p}_before']),
       key(f'share_dlib_cpp_{p}_after'), pct) for p in PEOPLE],
    ('faces detected (C++)', pct.full(before['leak']['1']['dlib_cpp']['face_before']), key('face_after'), pct),
    ('random samples moved (psi 1)', '0', key('retain_random'), num),
    ('FD_dlib_pre (descriptor Frechet distance to the original)', '0', key('FD_dlib_pre'), num),
    *[(f're-projection of obama_{i + 1}: distance to the photo', num(before['reproject_before'][i]),
       key('reproject_after', i), num) for i in range(3)],
    ('training time (s, the steps only)', '', key('train_wall_s'), secs),
]
print('# Spread over training seeds\n')
print(f'Made by `docs/make.sh` (`python docs/summary.py {R}`). Each number: the mean +- standard deviation over '
      f'training seeds {", ".join(map(str, SPREAD))}, then the fresh seed {FRESH} and whether it lies within the 95% '
      'prediction interval of those runs for one more run, at the precision shown ("in"), or not ("**out**"). 500 '
      'fresh samples, evaluation seed 1; dlib distances (same person < 0.6). Each run\'s own numbers: '
      f'`{R}/compare.md`. Training times depend on what else the machine was doing.\n')
print('## The paper\'s method and person mode\n')
rows = [[label, b, *cells('latent', get, fmt), *cells('person', get, fmt)] for label, b, get, fmt in MAIN]
print(table(['', 'before', 'paper\'s method (`--forget latent`, 500 steps)', f'seed {FRESH}',
             'person mode (the default)', f'seed {FRESH}'], rows))

# the dial: person mode over T
print('## The dial (person mode, `evaluate.py --sweep`)\n')
Ts = [s['T'] for s in read('person-s0', 'sweep.json')]
DIAL = [('leak, port', 'leak_dlib_after', pct), ('leak, C++', 'leak_dlib_cpp_after', pct),
        ('forgotten latent\'s image to `obama_1`', 'ID_photo_after', num), ('kept people moved', 'retain_people', num)]
rows = [[f'{T:g}', *[f'; seed {FRESH}: '.join(cells('person', key(i, k), fmt, name='sweep.json'))
                     for _, k, fmt in DIAL]] for i, T in enumerate(Ts)]
print(table(['T', *[label for label, _, _ in DIAL]], rows))

# the three ablations next to the default
print('## Ablations (`docs/make.sh`)\n')
ABL = [('leak, port', 'leak_dlib_after', pct), ('leak, C++', 'leak_dlib_cpp_after', pct),
       ('forgotten latent moved', 'ID', num), ('kept people moved', 'retain_people', num),
       ('random samples moved', 'retain_random', num), ('FD_dlib_pre', 'FD_dlib_pre', num),
       ('train time (s)', 'train_wall_s', secs)]
VARIANTS = [('the default (Euler, trajectory consistency, LeakyReLU)', 'person'), ('RK4 (`--solver rk4`)', 'rk4'),
            ('trajectory consistency off (`--w_tc 0`)', 'no-tc'), ('tanh hidden units (the patch)', 'tanh')]
rows = [[name, *[f'; seed {FRESH}: '.join(cells(v, key(k), fmt)) for _, k, fmt in ABL]] for name, v in VARIANTS]
print(table(['run', *[label for label, _, _ in ABL]], rows))
print(f'Seed {FRESH} lands within the prediction interval for {sum(TALLY)} of {len(TALLY)} numbers.')
