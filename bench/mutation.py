"""Mutation testing of the core modules with mutmut 3, each against the fast tests that
cover it; prints one table row per module and the diff of every surviving mutant.

    .venv/bin/python bench/mutation.py                 # every module below
    .venv/bin/python bench/mutation.py normalization contrastive --diffs
    .venv/bin/python bench/mutation.py diffusion --sample 40     # a reproducible estimate
    .venv/bin/python bench/mutation.py vector_quantizer --only 'atomskill_jax.*reinit*'

Each module runs in its own throwaway copy of the repository (the git-tracked and
untracked-but-not-ignored files of the work tree, as they are now): mutmut 3 writes a
`mutants/` tree into its working directory, and the work tree may be edited meanwhile.

How it is made to work with JAX and TensorFlow (see `_MUTMUT_CONFIG`):
- `process_isolation = "forkserver"`: pytest runs only in a fork server, never in the
  process that forks it, and `forkserver_warmup = "collect"` imports the test modules
  there once. Forking after JAX/TF have started threads risks a deadlock, but only
  collection (no computation) happens before the fork. A fork of a process that ran the
  stats pass would also inherit its jit caches, and a traced mutant would never be
  re-traced: the fork server does not run tests, so every mutant traces afresh.
- The copy's `mutants/` comes first on PYTHONPATH (and exists before the start, so the
  import system does not cache it as missing): the editable install in .venv maps
  `atomskill_jax` to the work tree, but its finder runs after sys.path. mutmut's
  "forced fail" step then proves the tests import the mutated copy: it aborts the run if
  the tests still pass when every mutated function raises.
- A persistent JAX compilation cache shared by the mutants of a run: each mutant is a
  fresh process, and recompiling every small eager op per mutant dominated the time
  (about 2.5x). Entries are keyed by the compiled program, so a mutated function still
  compiles afresh.
- One worker by default (`--jobs`): the machine is shared.

Score = (killed + timeout) / (mutants - skipped). A survivor is a change no test
noticed; judge each (equivalent? logging or error text only?) or add a test.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# name -> (module to mutate, the fast tests that cover it)
MODULES = {
    "normalization": ("atomskill_jax/data/normalization.py", ["tests/test_data_normalization.py"]),
    "traj_transforms": ("atomskill_jax/data/traj_transforms.py",
                        ["tests/test_data_transforms.py"]),
    "contrastive": ("atomskill_jax/methods/atomskill/contrastive.py",
                    ["tests/test_model_components.py", "tests/test_model_losses.py"]),
    "vector_quantizer": ("atomskill_jax/models/vector_quantizer.py",
                         ["tests/test_model_components.py", "tests/test_model_losses.py"]),
    "atomskill_policy": ("atomskill_jax/methods/atomskill/policy.py",
                         ["tests/test_policy_reference.py", "tests/test_policy_runtime.py"]),
    "chaining": ("atomskill_jax/policies/chaining.py", ["tests/test_policy_chaining.py"]),
    "calibration": ("atomskill_jax/methods/atomskill/calibration.py", ["tests/test_policy_calibration.py"]),
    "diffusion": ("atomskill_jax/models/diffusion.py",
                  ["tests/test_model_components.py", "tests/test_model_sampler_ddim.py",
                   "tests/test_model_ddim_clip.py", "tests/test_model_sampler_loss.py",
                   "tests/test_model_sampler_labels.py", "tests/test_model_sampler_skill.py"]),
    "optimizer": ("atomskill_jax/training/optimizer.py", ["tests/test_train_optimizer.py"]),
    "train_state": ("atomskill_jax/training/train_state.py",
                    ["tests/test_train_step.py", "tests/test_train_sampler_init.py"]),
    "checkpoints": ("atomskill_jax/training/checkpoints.py",
                    ["tests/test_train_resume.py", "tests/test_train_refusals.py",
                     "tests/test_train_faults.py", "tests/test_train_sampler_init.py"]),
}
COLUMNS = ("mutants", "killed", "survived", "timeout", "suspicious", "no tests", "skipped")

_MUTMUT_CONFIG = """
[tool.mutmut]
source_paths = ["atomskill_jax/"]
only_mutate = [{module}]
also_copy = ["tests/", "configs/", "data_builders/"]
pytest_add_cli_args_test_selection = [{tests}]
pytest_add_cli_args = ["-p", "no:cacheprovider", "--durations=0", "-W", "ignore::DeprecationWarning"]
process_isolation = "forkserver"
forkserver_warmup = "collect"
use_git_change_detection = false
"""


def _copy_tree(dest: Path) -> None:
    """The work tree's tracked and untracked-not-ignored files, as they are on disk."""
    listing = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             cwd=REPO, check=True, capture_output=True).stdout.decode()
    for rel in filter(None, listing.split("\0")):
        src = REPO / rel
        if src.is_file():  # deleted-but-tracked files are skipped
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def _configure(copy: Path, module: str, tests: list[str]) -> None:
    pyproject = copy / "pyproject.toml"
    text = pyproject.read_text()
    if "[tool.mutmut]" in text:
        raise SystemExit(f"{REPO / 'pyproject.toml'} already has a [tool.mutmut] table; this "
                         "runner writes its own per module: remove that table")
    quote = lambda items: ", ".join(json.dumps(i) for i in items)  # noqa: E731
    pyproject.write_text(text + _MUTMUT_CONFIG.format(module=quote([module]), tests=quote(tests)))
    (copy / "mutants").mkdir()


def _statuses(copy: Path, module: str) -> dict[str, str]:
    """mutant name -> status, read from mutmut's per-file result file."""
    from mutmut.stats import status_by_exit_code

    meta = copy / "mutants" / (module + ".meta")
    if not meta.exists():
        raise SystemExit(f"mutmut wrote no results for {module} ({meta} missing): see its "
                         "output above")
    codes = json.loads(meta.read_text())["exit_code_by_key"]
    return {name: status_by_exit_code[code] for name, code in codes.items()}


def _row(statuses: dict[str, str]) -> dict[str, int | str]:
    counts = {c: sum(s == c for s in statuses.values()) for c in COLUMNS[1:]}
    counts["mutants"] = len(statuses)
    tested = counts["mutants"] - counts["skipped"]
    score = (counts["killed"] + counts["timeout"]) / tested if tested else float("nan")
    return {**counts, "score": f"{100 * score:.1f}%"}


_LIST_MUTANTS = """
import sys
from pathlib import Path
from mutmut.mutation.file_mutation import mutate_file_contents
from mutmut.utils.format_utils import get_mutant_name
module = sys.argv[1]
for m in mutate_file_contents(module, Path(module).read_text()).mutant_names:
    print(get_mutant_name(Path(module), m))
"""


def mutant_names(copy: Path, module: str) -> list[str]:
    """Every mutant mutmut makes of `module` (its own generator, run in the configured copy:
    mutmut reads its configuration from the working directory)."""
    out = subprocess.run([sys.executable, "-c", _LIST_MUTANTS, module], cwd=copy, check=True,
                         capture_output=True, text=True).stdout
    return sorted(out.split())


def sample_mutants(copy: Path, module: str, size: int, seed: int) -> list[str]:
    """A reproducible random sample: the same one before and after a change of tests."""
    import random

    names = mutant_names(copy, module)
    return sorted(random.Random(seed).sample(names, min(size, len(names))))


def run_module(name: str, *, jobs: int, keep: bool, diffs: bool, log, tests=None,
               only=(), sample=0, seed=0) -> dict:
    module, default_tests = MODULES[name]
    tests = list(tests or default_tests)
    missing = [t for t in tests if not (REPO / t).exists()]
    tests = [t for t in tests if t not in missing]
    if not tests:
        raise SystemExit(f"{name}: none of its test files exist ({', '.join(missing)})")
    copy = Path(tempfile.mkdtemp(prefix=f"mutation-{name}-"))
    try:
        _copy_tree(copy)
        _configure(copy, module, tests)
        if sample:
            only = tuple(only) + tuple(sample_mutants(copy, module, sample, seed))
        env = {**os.environ, "PYTHONPATH": str(copy / "mutants"), "JAX_PLATFORMS": "cpu",
               "JAX_COMPILATION_CACHE_DIR": str(copy / "jax-cache"),
               "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
               "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
               "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "",
               # fewer threads per mutant: the machine is shared
               "XLA_FLAGS": (os.environ.get("XLA_FLAGS", "")
                             + " --xla_cpu_multi_thread_eigen=false").strip()}
        mutmut = Path(sys.executable).parent / "mutmut"
        log.write(f"== {name}: {module} against {' '.join(tests)} (copy {copy})\n")
        log.flush()
        proc = subprocess.run([str(mutmut), "run", "--max-children", str(jobs), *only], cwd=copy,
                              env=env, stdout=log, stderr=subprocess.STDOUT)
        if proc.returncode != 0:
            raise SystemExit(f"{name}: mutmut exited {proc.returncode}; its output is in "
                             f"{log.name}" + (f" (copy kept at {copy})" if keep else ""))
        statuses = _statuses(copy, module)
        if only:  # the others were not run: leave them out of the counts
            statuses = {k: v for k, v in statuses.items()
                        if any(fnmatch.fnmatchcase(k, p) for p in only)}
        survivors = sorted(k for k, s in statuses.items() if s not in ("killed", "timeout"))
        shown = {}
        for key in survivors if diffs else ():
            out = subprocess.run([str(mutmut), "show", key], cwd=copy, env=env,
                                 capture_output=True, text=True).stdout
            # only the changed lines: the whole function's context is noise in a table
            shown[key] = "\n".join(line for line in out.splitlines()
                                   if line[:1] in "-+" and line[:3] not in ("---", "+++"))
        return {"name": name, "row": _row(statuses), "survivors": survivors, "diffs": shown,
                "statuses": statuses, "missing_tests": missing}
    finally:
        if not keep:
            shutil.rmtree(copy, ignore_errors=True)


def _print_table(results: list[dict]) -> None:
    header = ("module",) + COLUMNS + ("score",)
    rows = [(r["name"],) + tuple(str(r["row"][c]) for c in COLUMNS + ("score",)) for r in results]
    widths = [max(len(x) for x in col) for col in zip(header, *rows)]
    for line in [header, tuple("-" * w for w in widths)] + rows:
        print("  ".join(x.ljust(w) for x, w in zip(line, widths)))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", metavar="MODULE",
                        help=f"any of {', '.join(MODULES)} (default: all)")
    parser.add_argument("--jobs", type=int, default=1, help="mutants tested at once")
    parser.add_argument("--tests", default=None,
                        help="comma-separated test files instead of the module's own (one module)")
    parser.add_argument("--sample", type=int, default=0, metavar="N",
                        help="run a random sample of N mutants per module (a quick estimate)")
    parser.add_argument("--seed", type=int, default=0, help="seed of --sample")
    parser.add_argument("--only", nargs="+", default=(), metavar="MUTANT",
                        help="run only these mutants (names or globs, as listed by a run)")
    parser.add_argument("--diffs", action="store_true", help="print each survivor's diff")
    parser.add_argument("--keep", action="store_true", help="keep the copies (to rerun mutmut)")
    parser.add_argument("--log", default=None,
                        help="file for mutmut's own output (default: a temp file, path printed)")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args(argv)
    names = args.modules or list(MODULES)
    unknown = [n for n in names if n not in MODULES]
    if unknown:
        parser.error(f"unknown module {', '.join(unknown)}; choose from {', '.join(MODULES)}")
    log_path = args.log or tempfile.mkstemp(prefix="mutation-", suffix=".log")[1]
    if args.tests and len(names) != 1:
        parser.error("--tests needs exactly one module")
    print(f"mutmut output: {log_path}", flush=True)
    results = []
    with open(log_path, "a") as log:
        for name in names:
            results.append(run_module(name, jobs=args.jobs, keep=args.keep, diffs=args.diffs,
                                      log=log, only=tuple(args.only),
                                      sample=args.sample, seed=args.seed,
                                      tests=args.tests.split(",") if args.tests else None))
            r = results[-1]
            print(f"{name}: {r['row']['score']} ({r['row']['killed']}/{r['row']['mutants']} killed)"
                  + (f"; test files missing: {', '.join(r['missing_tests'])}"
                     if r["missing_tests"] else ""), flush=True)
            _print_survivors(r, args.diffs)
            if args.json:  # after each module: a long run interrupted keeps what it found
                Path(args.json).write_text(json.dumps(results, indent=1))
    print()
    _print_table(results)


def _print_survivors(r: dict, diffs: bool) -> None:
    for key in r["survivors"]:
        print(f"  {r['statuses'][key]:<10} {key}")
        if diffs:
            print("    " + r["diffs"][key].replace("\n", "\n    "))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
