#!/usr/bin/env bash
# Fails early, naming the problem and the fix, when the filesystem that will hold the build has
# less than the given number of GiB free: a build that runs out of space half an hour in fails
# with a compiler error that says nothing about what to do.
#   scripts/check-disk.sh GIB [PATH]
set -euo pipefail
need=${1:?usage: check-disk.sh GIB [PATH]}
path=${2:-.}
# The directory may not exist yet (a first build): look at the nearest existing parent.
while [ ! -e "$path" ]; do path=$(dirname "$path"); done
free_kib=$(df -Pk "$path" | awk 'NR == 2 {print $4}')
free_gib=$(( free_kib / 1024 / 1024 ))
if [ "$free_gib" -lt "$need" ]; then
  echo "check-disk: only ${free_gib} GiB free on the filesystem of $path; this step needs about ${need} GiB." >&2
  echo "check-disk: free space (old cargo target directories are the usual culprits: cargo clean) and run again." >&2
  exit 1
fi
