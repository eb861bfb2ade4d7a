"""`atomskill export`: a trained workdir's policy as a self-contained directory that loads
with jax and numpy alone (export/writer.py, export/loader.py).

    atomskill export --workdir=W --out=P [--step=S] [--platforms=cpu,cuda] \
        [--option epsilon=0.3 --option requery_every=4]

`--option` sets the method's runtime options (AtomSkill: epsilon, requery_every,
ensemble_m, num_steps, ...) recorded as the exported defaults; those the functions
compile in (AtomSkill's num_steps, guidance) are fixed from then on, the others can be
overridden when loading.
"""

from __future__ import annotations

import json
import sys


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="export a workdir's policy (jax.export + safetensors)")
    p.add_argument("--workdir", required=True, help="training workdir (atomskill train)")
    p.add_argument("--out", required=True, help="policy directory to write")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--platforms", default="cpu,cuda",
                   help="comma-separated jax.export platforms (default cpu,cuda)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a runtime option (value parsed as JSON, else a string); repeatable")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")


def parse_options(items) -> dict:
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--option {item!r}: expected KEY=VALUE")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def run(args) -> int:
    from atomskill_jax.export import writer

    platforms = tuple(p for p in args.platforms.split(",") if p)
    manifest = writer.export_workdir(args.workdir, args.out, step=args.step,
                                     options=parse_options(args.option), platforms=platforms,
                                     overwrite=args.overwrite)
    print(f"exported {manifest['method']} policy {manifest['policy']!r} (checkpoint step "
          f"{manifest['source']['step']}, {manifest['params']['count']:,} parameters, "
          f"functions {', '.join(manifest['functions'])} for {', '.join(platforms)})")
    print(f"policy: {args.out}")
    return 0


