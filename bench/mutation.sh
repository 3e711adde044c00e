#!/usr/bin/env bash
# Mutation testing of vecmig's core and checker with mutmut 3 (pip install 'mutmut>=3.8'):
# on demand or nightly, never in CI (docs/zoo.md has the figures and the survivors).
#
#   bench/mutation.sh harness/history/liveness.py tests/test_checker.py
#   bench/mutation.sh harness/history tests/test_checker.py tests/test_properties.py
#
# The first argument is what to mutate (a file or folder under harness/), the rest the tests
# that judge the mutants. mutmut names a mutant after the module its file path spells
# (harness.history.checker), but the package imports it as vecmig.harness.history.checker, so
# a mutant would never switch on. The script therefore runs mutmut in a scratch copy of the
# repository laid out as installed, harness/ moved to vecmig/harness/, and leaves the results
# there ($WORK, default /tmp/vecmig-mutation): `cd $WORK && mutmut results`, `mutmut show NAME`.
#
# CHILDREN (default 1) is mutmut's --max-children. MUTANTS, a space-separated list of mutant
# names or globs, runs only those: a shard of a large file in its own $WORK, so that two
# processes can share one file's mutants (`MUTANTS='*ǁ_Judgeǁjudge_*' WORK=/tmp/b ...`).
set -euo pipefail
target=${1:?what to mutate, e.g. harness/history}
shift
[ "$#" -gt 0 ] || set -- tests/test_checker.py
case "$target" in harness/*) ;; *) echo "mutate something under harness/" >&2; exit 2 ;; esac
root=$(cd "$(dirname "$0")/.." && pwd)
work=${WORK:-/tmp/vecmig-mutation}
children=${CHILDREN:-1}
rm -rf "$work"
mkdir -p "$work"
git -C "$root" ls-files -z | (cd "$root" && xargs -0 cp --parents -t "$work")
cd "$work"
mv harness vecmig/harness
{
  echo
  echo "[tool.mutmut]"
  echo "source_paths = [\"vecmig/$target\"]"
  echo 'also_copy = ["vecmig", "sim", "loadtests", "scenarios", "tests", "docs"]'
  printf 'pytest_add_cli_args_test_selection = [%s]\n' "$(printf '"%s", ' "$@" | sed 's/, $//')"
  echo 'pytest_add_cli_args = ["-p", "no:cacheprovider", "-x", "-q"]'
} >> pyproject.toml
# mutmut puts mutants/ first on sys.path itself, ahead of any installed vecmig. Do not set
# PYTHONPATH: with it, mutmut 3.8.1 attributes no test to any mutant ("could not find any test
# case for any mutant").
unset PYTHONPATH
read -r -a only <<< "${MUTANTS:-}"
time mutmut run --max-children "$children" "${only[@]}"
mutmut results > results.txt || true
echo "results: $work/results.txt"
