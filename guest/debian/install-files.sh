#!/bin/sh
# Copies the tree $1 into the target root $2: directories made as needed, every file owned by root
# with its mode from the source (executables stay executable).
set -eu
src="$1"
root="$2"
(cd "$src" && find . -type d) | while read -r d; do mkdir -p "$root/$d"; done
(cd "$src" && find . -type f) | while read -r f; do
  install -o root -g root -m "$(stat -c %a "$src/$f")" "$src/$f" "$root/$f"
done
