#!/usr/bin/env python3
"""The feature combinations we ship, one set of cargo flags per line.

All features, default features, no default features, and each feature alone, read from
Cargo.toml through `cargo metadata`. Used by .ci/run (clippy for each) and .ci/msrv-check.py.
"""

import json
import os
import subprocess

ROOT = os.path.realpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def root_package():
    out = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--no-deps", "--locked"],
        cwd=ROOT,
        check=True,
        stdout=subprocess.PIPE,
    ).stdout
    manifest = os.path.join(ROOT, "Cargo.toml")
    return next(p for p in json.loads(out)["packages"] if p["manifest_path"] == manifest)


def combos(package):
    """(label, flags) pairs."""
    features = sorted(f for f in package["features"] if f != "default")
    found = [("all features", ["--all-features"]), ("default features", [])]
    found.append(("no default features", ["--no-default-features"]))
    found += [(f"only `{f}`", ["--no-default-features", "--features", f]) for f in features]
    return found


if __name__ == "__main__":
    for _, flags in combos(root_package()):
        print(" ".join(flags))
