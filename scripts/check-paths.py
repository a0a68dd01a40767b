#!/usr/bin/env python3
"""Every file the docs and code comments point at exists: paths under the repository's folders
(`bench/results/h100-run9-full.md`, `kernels/*.cu`, a crate's own `tests/...`) and backticked file names
(`h100-session5-router.md`). Run by .ci/run; prints each dead reference and exits 1.

A path resolves when it names a tracked file or folder (globs match tracked files), from the repository's root
or from any folder above the file that names it (a crate's `tests/...`). Names the GPU runner makes count as
existing: what scripts/stage-gpu.sh puts in `gpu-bundle/` and what scripts/gpu-run.sh writes to its results
folder. Not checked: bench/results/ (run records kept as they came back, naming that session's own scripts),
the fixtures and fuzz corpus (data), CUTLASS's `include/cutlass` and `include/cute`, and `shared/` (the
project's shared folder beside the checkout, where the model contract lives).
"""
import fnmatch
import os
import re
import subprocess
import sys

ROOTS = ("bench", "kernels", "scripts", "ops", "reference-model", "reference", "tests", "include", "fuzz", "docs",
         ".ci", "gpu-bundle")
PATH = re.compile(r"(?<![\w./$-])((?:%s)/[\w./*{}-]*[\w*}])" % "|".join(re.escape(r) for r in ROOTS))
NAME = re.compile(r"`([\w.-]+\.(?:md|txt|jsonl|json|log|rs|cu|cuh|h|py|sh|toml|csv|png|xz))`")
SKIP_FILES = ("bench/results/", "reference-model/fixtures/", "fuzz/corpus/")
EXTERNAL = ("include/cutlass", "include/cute")
TEXT = (".md", ".rs", ".cu", ".cuh", ".h", ".py", ".sh", ".toml", ".c")


def made_by_the_runner(root):
    """Names under gpu-bundle/ (stage-gpu.sh) and in the runner's results folder (gpu-run.sh)."""
    names = set()
    for script, var in (("scripts/stage-gpu.sh", "bundle"), ("scripts/gpu-run.sh", "out"),
                        ("scripts/gpu-run.sh", "here")):
        with open(os.path.join(root, script)) as f:
            text = f.read()
        names |= set(re.findall(r"\$%s/([\w./-]+)" % var, text))
        names |= set(re.findall(r"\$\{%s\}/([\w./-]+)" % var, text))
    return names


def main():
    root = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True,
                          check=True).stdout.strip()
    os.chdir(root)
    tracked = subprocess.run(["git", "ls-files"], capture_output=True, text=True, check=True).stdout.split()
    files = set(tracked)
    folders = {os.path.dirname(f) for f in tracked}
    folders |= {p for f in folders for p in [f[:i] for i in range(len(f)) if f[i] == "/"]}
    basenames = {os.path.basename(f) for f in tracked}
    runner = made_by_the_runner(root)
    bundle = {"gpu-bundle/" + n for n in runner} | {"gpu-bundle/bin", "gpu-bundle/results"}

    def exists(ref, where):
        ref = ref.rstrip("/")
        if ref.startswith(EXTERNAL) or ref in bundle or ref.startswith("gpu-bundle/bin/"):
            return True
        base = os.path.dirname(where)
        bases = [""]
        while base:
            bases.append(base + "/")
            base = os.path.dirname(base)
        for b in bases:
            p = os.path.normpath(b + ref)
            if p in files or p in folders:
                return True
            if any(c in p for c in "*{"):
                pattern = re.sub(r"\{([^}]*)\}", lambda m: "[" + m.group(1).replace(",", "") + "]", p)
                if any(fnmatch.fnmatch(f, pattern) for f in tracked):
                    return True
        return False

    dead = []
    for f in tracked:
        if f.startswith(SKIP_FILES) or not (f.endswith(TEXT) or f == ".ci/run"):
            continue
        with open(f, errors="replace") as fh:
            lines = fh.read().splitlines()
        for n, line in enumerate(lines, 1):
            for m in PATH.finditer(line):
                ref = m.group(1).rstrip(".,:;")
                if not exists(ref, f):
                    dead.append(f"{f}:{n}: {ref}")
            for m in NAME.finditer(line):
                name = m.group(1)
                if "/" not in name and name not in basenames and name not in runner:
                    dead.append(f"{f}:{n}: {name}")
    for d in dead:
        print(f"dead reference: {d}")
    if dead:
        sys.exit(1)
    print(f"check-paths: every reference resolves ({len(tracked)} tracked files)")


if __name__ == "__main__":
    main()
