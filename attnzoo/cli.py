"""The `attnzoo` command: wires the library's jobs together (no logic of its own)."""

from __future__ import annotations

import argparse
import sys

import attnzoo


def cmd_list(args):
    from attnzoo.bench.table import markdown_table, print_registry, update_readme

    if args.update_readme:
        changed = update_readme(args.update_readme)
        print(f"{args.update_readme}: {'updated' if changed else 'already up to date'}")
    elif args.markdown:
        print(markdown_table(args.seq_len, args.d_model, args.n_heads))
    else:
        print_registry(args.seq_len, args.d_model, args.n_heads)


def cmd_demo(args):
    from attnzoo.demo import run_demo

    run_demo()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="attnzoo", description=__doc__)
    p.add_argument("--version", action="version", version=f"attnzoo {attnzoo.__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    pl = sub.add_parser("list", help="print the registered mixers")
    pl.add_argument("--seq-len", type=int, default=2048, help="T at which to report state size")
    pl.add_argument("--d-model", type=int, default=512)
    pl.add_argument("--n-heads", type=int, default=8)
    pl.add_argument("--markdown", action="store_true", help="print the README feature table")
    pl.add_argument("--update-readme", metavar="PATH", help="rewrite the generated table in PATH")
    pl.set_defaults(func=cmd_list)

    pd = sub.add_parser("demo", help="the main job (what `make demo` runs)")
    pd.set_defaults(func=cmd_demo)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except ValueError as e:
        print(f"attnzoo: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
