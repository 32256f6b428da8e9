#!/usr/bin/env python3
"""Check the declared MSRV without a second toolchain.

For every feature combination we ship (all, default, none, each feature alone: see
.ci/feature_combos.py), read `cargo metadata --locked` and fail if a resolved dependency
declares a `rust-version` above ours. Two scopes are checked, both strictly:

- library: what a user of the crate compiles (normal and build edges from the crate);
- dev: everything Cargo.lock resolves for tests, examples and benches.

The whole resolve is used, on every platform, with features unified as `cargo metadata` reports
them: an over-approximation, so a pass is a pass on any target. A dependency that declares no
`rust-version` cannot be checked this way; those are counted, not failed.

Usage: python3 .ci/msrv-check.py   (from anywhere inside the crate)
"""

import json
import os
import subprocess
import sys
from collections import deque

import feature_combos

ROOT = feature_combos.ROOT


def version(text):
    parts = [int(p) for p in text.split("-")[0].split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


def metadata(flags):
    out = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--locked", *flags],
        cwd=ROOT,
        check=True,
        stdout=subprocess.PIPE,
    ).stdout
    return json.loads(out)


def reachable(meta, with_dev):
    """Package ids reachable from the root, each with its parent (for printing a path)."""
    nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
    root = meta["resolve"]["root"]
    parent = {root: None}
    queue = deque([root])
    while queue:
        here = queue.popleft()
        for dep in nodes[here]["deps"]:
            kinds = {k["kind"] for k in dep["dep_kinds"]}
            if not with_dev and kinds <= {"dev"}:
                continue
            if dep["pkg"] not in parent:
                parent[dep["pkg"]] = here
                queue.append(dep["pkg"])
    return parent


def main():
    root_pkg = feature_combos.root_package()
    if not root_pkg.get("rust_version"):
        print("msrv: Cargo.toml declares no rust-version", file=sys.stderr)
        return 1
    msrv = root_pkg["rust_version"]

    failures = 0
    for label, flags in feature_combos.combos(root_pkg):
        meta = metadata(flags)
        packages = {p["id"]: p for p in meta["packages"]}
        lib = reachable(meta, with_dev=False)
        dev = reachable(meta, with_dev=True)
        offenders = []
        unknown = 0
        for pkg_id in dev:
            if pkg_id == meta["resolve"]["root"]:
                continue
            declared = packages[pkg_id].get("rust_version")
            if not declared:
                unknown += 1
                continue
            if version(declared) > version(msrv):
                scope = "library" if pkg_id in lib else "dev"
                path, at = [], pkg_id
                while at is not None:
                    path.append(f"{packages[at]['name']} {packages[at]['version']}")
                    at = dev[at]
                offenders.append((scope, declared, " <- ".join(path)))
        status = "FAIL" if offenders else "ok"
        print(f"msrv {msrv}, {label}: {status} ({len(lib) - 1} library and "
              f"{len(dev) - len(lib)} dev-only dependencies; {unknown} declare no rust-version)")
        for scope, declared, path in sorted(offenders):
            print(f"  {scope} dependency needs Rust {declared}: {path}")
        failures += len(offenders)

    if failures:
        print(
            f"msrv: {failures} resolved dependencies need a newer Rust than {msrv}. Pin a "
            "compatible version (`cargo update -p NAME --precise VERSION`; `cargo update` with "
            "resolver = \"3\" prefers compatible versions already) or raise rust-version.",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
