# Sourced by bench/cifar10.sh and bench/benchmark.sh: CIFAR-10 as JPEG folders, unpacked
# once from ../shared/datasets/cifar10-jpeg.tar.gz (CIFAR10_ARCHIVE overrides) into the
# cache; sets $cache and $data (the folder with train/ and test/).
cache="${PEP_FEDPT_CACHE:-$HOME/.cache/pep-fedpt}"
data="$cache/data/cifar10"
if [ ! -d "$data/train" ]; then
  archive="${CIFAR10_ARCHIVE:-$root/../shared/datasets/cifar10-jpeg.tar.gz}"
  [ -f "$archive" ] || { echo "$0: no $archive (set CIFAR10_ARCHIVE)" >&2; exit 2; }
  mkdir -p "$cache/data"
  tar -xzf "$archive" -C "$cache/data"
fi
