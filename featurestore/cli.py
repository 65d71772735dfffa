"""`python -m featurestore`: inspect, read, export, index, verify and snapshot a store.

Every command opens the store read-only, so it is safe while a writer is writing. The store is a
local folder; `export --out` and `index --out` also take URIs (s3://bucket/key, gs://), with
credentials and endpoint from the standard AWS/GCS variables, never from the command line.
Exit codes: 0 ok, 1 `verify` found problems, 2 a usage or store error (one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from featurestore.errors import StoreError
from featurestore.store import Store
from featurestore.uri import UriError

EPILOG = """examples:
  python -m featurestore info runs/demo/store
  python -m featurestore get runs/demo/store --view image/vgg16@1 42 43
  python -m featurestore export runs/demo/store --view image/vgg16@1 --out ic.parquet
  python -m featurestore export runs/demo/store --view image/vgg16@1 --out s3://bucket/features/ic.parquet
  python -m featurestore index runs/demo/store --view image/vgg16@1 --out ic_index --kind flat
  python -m featurestore verify runs/demo/store
  python -m featurestore snapshot runs/demo/store backups/store-2026-11-23
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m featurestore", description=__doc__.split("\n\n")[0],
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    s = sub.add_parser("info", help="views, counts, errors by reason, metadata")
    s.add_argument("store", help="store folder")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s = sub.add_parser("get", help="print the values stored for some ids")
    s.add_argument("store", help="store folder")
    s.add_argument("--view", required=True, help="view name, e.g. image/vgg16@1")
    s.add_argument("ids", nargs="+", type=int, metavar="ID", help="int64 ids")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s = sub.add_parser("export", help="write a view to Parquet (id int64 + vector list<float>, or record fields)")
    s.add_argument("store", help="store folder")
    s.add_argument("--view", required=True, help="view name")
    s.add_argument("--out", required=True, help="output .parquet file: a path or a URI (s3://bucket/key)")
    s.add_argument("--batch-size", type=int, default=65536, help="rows per row group / scan batch")
    s = sub.add_parser("index", help="build a faiss index (flat or IVF) with its id mapping (needs faiss)")
    s.add_argument("store", help="store folder")
    s.add_argument("--view", required=True, help="vector view name")
    s.add_argument("--out", required=True, help="output folder or URI prefix: index.faiss, ids.npy, index.json")
    s.add_argument("--kind", choices=("flat", "ivf", "auto"), default="auto",
                   help="flat (exact) or ivf (approximate, for large views); auto: ivf from 100k rows")
    s.add_argument("--metric", choices=("ip", "l2"), default="ip", help="inner product or L2")
    s.add_argument("--nlist", type=int, default=0, help="IVF lists (0: ~4*sqrt(rows))")
    s = sub.add_parser("verify", help="check every value's size, counts, digests and the header; exit 1 on problems")
    s.add_argument("store", help="store folder")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s = sub.add_parser("snapshot", help="compact consistent copy of the store (safe while writing)")
    s.add_argument("store", help="store folder")
    s.add_argument("dest", help="new or empty destination folder")
    return p


def _info(store: Store, as_json: bool) -> int:
    info = store.info()
    if as_json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return 0
    print(f"store {info['path']}  ({info['file_bytes'] / 2**20:.1f} MiB on disk)")
    if not info["views"]:
        print("  no views")
    for name, v in info["views"].items():
        shape = f"dim={v['dim']} {v['dtype']}" if v["kind"] == "vector" else \
            "record " + ", ".join(f"{f[0]}:{f[1]}[{f[2]}]" for f in v["fields"])
        print(f"  {name:32s} {v['count']:>12,d} rows  {shape}  errors={v['errors']}")
        print(f"    producer: {json.dumps(v['producer'], sort_keys=True)}  created {v['created']}")
        for reason, c in sorted(v["errors_by_reason"].items(), key=lambda x: -x[1])[:10]:
            print(f"    error {c:>8,d}  {reason}")
    return 0


def _get(store: Store, view: str, ids: list[int], as_json: bool) -> int:
    vals, found = store.reader(view).get_many(ids)
    rows = []
    for i, ok, v in zip(ids, found.tolist(), vals):
        if not ok:
            rows.append({"id": i, "found": False})
        elif vals.dtype.names:
            rows.append({"id": i, "found": True, **{f: np.asarray(v[f]).tolist() for f in vals.dtype.names}})
        else:
            rows.append({"id": i, "found": True, "vector": np.asarray(v).tolist()})
    if as_json:
        print(json.dumps(rows))
    else:
        for r in rows:
            print(r["id"], "missing" if not r["found"] else
                  " ".join(f"{k}={v}" for k, v in r.items() if k not in ("id", "found")))
    return 0


def _verify(store: Store, as_json: bool) -> int:
    problems = store.verify()
    if as_json:
        print(json.dumps({"ok": not problems, "problems": problems}, indent=2))
    elif problems:
        for p in problems:
            print(f"PROBLEM {p}")
        print(f"{len(problems)} problem(s) in {store.path}")
    else:
        views = store.list_views()
        print(f"ok: {store.path} ({len(views)} views, every value checked)")
    return 1 if problems else 0


def run(args: argparse.Namespace) -> int:
    """Execute one parsed command; returns the exit code."""
    if args.cmd == "verify":
        try:
            store = Store.open(args.store, readonly=True)
        except StoreError as e:          # a store that does not even open is a verify failure
            print(json.dumps({"ok": False, "problems": [str(e)]}) if args.json else f"PROBLEM {e}")
            return 1
        with store:
            return _verify(store, args.json)
    with Store.open(args.store, readonly=True) as store:
        if args.cmd == "info":
            return _info(store, args.json)
        if args.cmd == "get":
            return _get(store, args.view, args.ids, args.json)
        if args.cmd == "snapshot":
            print(store.snapshot(args.dest))
            return 0
        from featurestore.export import build_index, export_parquet

        reader = store.reader(args.view)
        if args.cmd == "export":
            n = export_parquet(reader, args.out, batch_size=args.batch_size)
            print(f"wrote {n} rows of {args.view} to {args.out}")
            return 0
        if args.cmd == "index":
            meta: dict[str, Any] = build_index(reader, args.out, kind=args.kind, metric=args.metric,
                                               nlist=args.nlist)
            print(f"wrote {meta['kind']} index of {meta['count']} vectors to {args.out}")
            return 0
    raise AssertionError(args.cmd)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return run(args)
    except (StoreError, UriError, FileNotFoundError, PermissionError) as e:
        print(f"featurestore {args.cmd}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
