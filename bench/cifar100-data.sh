# Sourced by bench/cifar100-benchmark.sh: CIFAR-100 as JPEG folders, unpacked once from
# ../shared/datasets/cifar100-images.tar.gz (beside the repository, or beside the main
# checkout of a git worktree; CIFAR100_ARCHIVE overrides) into the cache;
# sets $cache and $data100 (the folder with train/ and test/, for
# data.dataset = "cifar100-folder").
cache="${PEP_FEDPT_CACHE:-$HOME/.cache/pep-fedpt}"
data100="$cache/data/cifar100"
if [ ! -d "$data100/train" ]; then
  archive="${CIFAR100_ARCHIVE:-$root/../shared/datasets/cifar100-images.tar.gz}"
  if [ -z "${CIFAR100_ARCHIVE:-}" ] && [ ! -f "$archive" ]; then
    # In a git worktree, ../shared lies beside the main checkout, not beside this one.
    common=$(git -C "$root" rev-parse --path-format=absolute --git-common-dir 2>/dev/null || true)
    [ -n "$common" ] && archive="$(dirname "$(dirname "$common")")/shared/datasets/cifar100-images.tar.gz"
  fi
  [ -f "$archive" ] || { echo "$0: no $archive (set CIFAR100_ARCHIVE)" >&2; exit 2; }
  mkdir -p "$cache/data"
  # Into a temporary folder first, so that an interrupted unpack is never taken for a
  # complete one (the check above looks only for train/).
  tmp=$(mktemp -d "$cache/data/.cifar100.XXXXXX")
  tar -xzf "$archive" -C "$tmp"
  mv "$tmp/cifar100" "$data100"
  rmdir "$tmp"
fi
