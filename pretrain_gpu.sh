#!/usr/bin/env bash
# The built-in generator's training on a lent GPU: resumes from the committed state (assets/pretrain_state.pt), trains
# for $1 seconds (default 480), and leaves the new state under $OUT in 15 MiB parts (a device run returns at most 16 MiB
# a file), with its latest sample grid. The CPU path (python pretrain.py, assets/README.md) needs none of this.
#
# Here, once:   pip download --no-deps gan-face-generate==1.1.1 -d .whl          # the teacher (MIT)
#               mkdir -p .gpu/face_recognition_models/models && touch .gpu/face_recognition_models/__init__.py
#               cp "$(python -c 'import helpers; print(helpers.model_file("dlib_face_recognition_resnet_model_v1.dat"))')" \
#                  .gpu/face_recognition_models/models/                          # dlib's network (CC0), for the anchors
# On the GPU:   device run, carry [".whl", ".gpu"], command "bash pretrain_gpu.sh 480", timeout_s 560
# Then here:    cat <files_at>/ckpt.pt.part-* > runs/pretrain/ckpt.pt && python pretrain.py   # or --export
set -euo pipefail
secs=${1:-480}
out=${OUT:-runs/pretrain-gpu-out}
mkdir -p runs/pretrain "$out"
[ -f runs/pretrain/ckpt.pt ] || cp assets/pretrain_state.pt runs/pretrain/ckpt.pt
# timeout sends SIGTERM: pretrain.py finishes its step and writes the whole state before it exits
PYTHONPATH=.gpu:${PYTHONPATH:-} timeout "$secs" python3 pretrain.py --out runs/pretrain --device cuda --batch 32 || true
split -b 15M runs/pretrain/ckpt.pt "$out/ckpt.pt.part-"
last=$(ls runs/pretrain/samples_*.png 2>/dev/null | tail -1) && cp "$last" "$out/" || true
tail -3 runs/pretrain/log.jsonl
