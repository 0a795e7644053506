#!/usr/bin/env bash
# Prepare ImageNet-1k (ILSVRC2012) as the tfds ArrayRecord dataset `imagenet2012` that mim_jax reads
# (data.name='imagenet2012', data.data_dir=OUT). No TensorFlow needed on either path.
#
# From the raw ILSVRC tarballs (ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar, ILSVRC2012_devkit_t12.tar.gz,
# or a val labels CSV such as LOC_val_solution.csv instead of the devkit):
#   launch/prepare_imagenet.sh --from-tars DIR_WITH_TARS --out DATA_DIR [--work SCRATCH] [--workers N]
#     1. extracts train (1000 class tars, in parallel) and val into SCRATCH/{train,val_flat}
#     2. sorts val into SCRATCH/val/<wnid>/ with the devkit labels (hard links)
#     3. python -m mim_jax.data.prepare --src SCRATCH --out DATA_DIR --name imagenet2012 --stats imagenet
#        -> DATA_DIR/imagenet2012/5.1.0 with splits train (1,281,167) and validation (50,000), labels in
#           sorted-wnid order and the features of tfds's imagenet2012; a report lists any skipped file.
#   Needs ~150 GB for the extracted JPEGs plus ~145 GB for the dataset; SCRATCH can be deleted afterwards.
#
# From a tfds-prepared TFRecord ImageNet (e.g. ~/tensorflow_datasets/imagenet2012/5.1.0 built with TensorFlow):
#   launch/prepare_imagenet.sh --from-tfds TFDS_DATA_DIR --out DATA_DIR [--workers N]
#     copies the serialized examples into ArrayRecord shards (no decoding):
#     python -m mim_jax.data.tfrecord_to_array_record --src TFDS_DATA_DIR/imagenet2012/5.1.0 \
#         --out DATA_DIR/imagenet2012/5.1.0
#
# Every step is idempotent: re-running skips what is already done.
set -euo pipefail

usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }

MODE="" SRC="" OUT="" WORK="" WORKERS="$(nproc 2>/dev/null || echo 8)" VERSION="5.1.0"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --from-tars) MODE=tars; SRC="$2"; shift 2 ;;
    --from-tfds) MODE=tfds; SRC="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --work) WORK="$2"; shift 2 ;;
    --workers) WORKERS="$2"; shift 2 ;;
    --tfds-version) VERSION="$2"; shift 2 ;;
    -h|--help) usage 0 ;;
    *) echo "unknown argument: $1" >&2; usage ;;
  esac
done
[[ -n "$MODE" && -n "$SRC" && -n "$OUT" ]] || usage
PY="${PYTHON:-python}"

if [[ "$MODE" == tfds ]]; then
  IN="$SRC/imagenet2012/$VERSION"
  [[ -f "$IN/dataset_info.json" ]] || { echo "error: $IN/dataset_info.json not found (is --from-tfds the tfds data dir?)" >&2; exit 2; }
  exec "$PY" -m mim_jax.data.tfrecord_to_array_record --src "$IN" --out "$OUT/imagenet2012/$VERSION" --workers "$WORKERS"
fi

TRAIN_TAR="$SRC/ILSVRC2012_img_train.tar"
VAL_TAR="$SRC/ILSVRC2012_img_val.tar"
LABELS="${IMAGENET_VAL_LABELS:-}"
if [[ -z "$LABELS" ]]; then
  for cand in "$SRC/ILSVRC2012_devkit_t12.tar.gz" "$SRC/ILSVRC2012_devkit_t12" "$SRC/LOC_val_solution.csv"; do
    [[ -e "$cand" ]] && { LABELS="$cand"; break; }
  done
fi
for f in "$TRAIN_TAR" "$VAL_TAR"; do [[ -f "$f" ]] || { echo "error: $f not found" >&2; exit 2; }; done
[[ -n "$LABELS" ]] || { echo "error: no devkit (ILSVRC2012_devkit_t12.tar.gz) or LOC_val_solution.csv in $SRC; set IMAGENET_VAL_LABELS" >&2; exit 2; }
WORK="${WORK:-$OUT/imagenet2012_extracted}"
mkdir -p "$WORK/train" "$WORK/val_flat" "$WORK/val"

if [[ ! -f "$WORK/.train_done" ]]; then
  echo "extracting $TRAIN_TAR (class tars) ..."
  mkdir -p "$WORK/train_tars"
  tar -xf "$TRAIN_TAR" -C "$WORK/train_tars"
  # One class tar per job; each extracts into train/<wnid>/ and is deleted when done.
  find "$WORK/train_tars" -name 'n*.tar' -print0 | xargs -0 -P "$WORKERS" -I{} sh -c \
    'c=$(basename "{}" .tar); mkdir -p "'"$WORK"'/train/$c" && tar -xf "{}" -C "'"$WORK"'/train/$c" && rm "{}"'
  rmdir "$WORK/train_tars"
  touch "$WORK/.train_done"
fi
if [[ ! -f "$WORK/.val_flat_done" ]]; then
  echo "extracting $VAL_TAR ..."
  tar -xf "$VAL_TAR" -C "$WORK/val_flat"
  touch "$WORK/.val_flat_done"
fi
if [[ ! -f "$WORK/.val_done" ]]; then
  "$PY" -m mim_jax.data.imagenet sort-val --val "$WORK/val_flat" --labels "$LABELS" --out "$WORK/val"
  touch "$WORK/.val_done"
fi
# Only train/ and val/ may sit beside each other for the converter's train/ + val/ layout.
mkdir -p "$WORK/src"
ln -sfn "$WORK/train" "$WORK/src/train"
ln -sfn "$WORK/val" "$WORK/src/val"
# Version 5.1.0 with tfds's features (image, label, file_name) and label order, so that
# tfds.data_source('imagenet2012', data_dir=OUT) reads it through tfds's own imagenet2012 builder too.
"$PY" -m mim_jax.data.prepare --src "$WORK/src" --out "$OUT" --name imagenet2012 --version "$VERSION" \
  --stats imagenet --val-fraction 0 --workers "$WORKERS"
echo "done: data.name='imagenet2012', data.data_dir='$OUT'  (you may delete $WORK)"
