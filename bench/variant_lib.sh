# Shared by run_variants.sh and profile_device.sh (sourced): a variant's tree
# and its installation. `root` is the repository root.

# variant_tree NAME: prints the tree of variant NAME: the repository itself for
# "main", else a copy with docs/experiments patches applied ("a+b": a, then b).
# Fails when a patch is missing or does not apply.
variant_tree() {
  local name=$1 tree part
  if [ "$name" = main ]; then
    echo "$root"
    return
  fi
  tree=$(mktemp -d)
  cp -r "$root"/. "$tree"
  for part in ${name//+/ }; do
    [ -e "$root/docs/experiments/$part.patch" ] && (cd "$tree" && patch -p1 -s <"$root/docs/experiments/$part.patch") \
      || return 1
  done
  echo "$tree"
}

# install_tree TREE: installs TREE (no dependencies) into a scratch folder and
# prints that folder, for PYTHONPATH; fails when the install does.
install_tree() {
  local site
  site=$(mktemp -d)
  python3 -m pip install -q --no-deps --no-build-isolation --no-index --target "$site" "$1" >/dev/null 2>&1 || return 1
  echo "$site"
}
