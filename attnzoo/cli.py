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


def cmd_card(args):
    from attnzoo.bench.docs import print_card, write_docs

    if args.write_docs:
        changed = write_docs(args.write_docs)
        print(f"{args.write_docs}: {len(changed)} page(s) written" if changed else f"{args.write_docs}: up to date")
    elif args.name:
        print_card(args.name)
    else:
        raise ValueError("give a mixer name (attnzoo card gla) or --write-docs DIR")


def cmd_demo(args):
    from attnzoo.demo import run_demo

    run_demo()


def _zoo_mixers(text: str | None) -> list[str] | None:
    """--mixers: a comma list, or a ';' list when it holds one (so that a layer-wise hybrid written with a
    comma, Zoology's Based "base_conv,based", stays one entry: "softmax;base_conv,based;gla")."""
    if text is None:
        return None
    mixers = [m.strip() for m in text.split(";" if ";" in text else ",")]
    if not all(mixers):
        raise ValueError(f"--mixers must be a comma (or ';') list of names or patterns, got {text!r}")
    return mixers


def cmd_zoo(args):
    from attnzoo.bench.zoo import run_zoo
    from attnzoo.bench.zoo.presets import floor_note, get_preset

    compile_ = tuple(m.strip() for m in args.compile.split(",") if m.strip()) if args.compile else None
    preset = get_preset(args.preset, d_models=args.d_models, lrs=args.lrs, steps=args.steps,
                        schedule_steps=args.schedule_steps,
                        total_seconds=args.total_seconds, grid=args.grid, compile=compile_, init=args.init)
    mixers = _zoo_mixers(args.mixers)
    if note := floor_note(args.preset, args.steps):
        print(note, file=sys.stderr)
    out = args.out or f"runs/zoo_{args.preset}"
    try:
        records = run_zoo(preset=preset, out=out, mixers=mixers, task=args.task, device=args.device,
                          resume=args.resume, workers=args.workers, threads=args.threads)
    except KeyboardInterrupt as e:          # ZooInterrupted says what was kept
        print(f"attnzoo: {e or 'interrupted; run the same command again with --resume to continue'}",
              file=sys.stderr)
        return 130
    if all(r.get("accuracy") is None for r in records):
        print(f"attnzoo: error: every run failed ({len(records)} runs; the errors are in {out}/leaderboard.md)",
              file=sys.stderr)
        return 1
    return 0


def cmd_bench_ops(args):
    from attnzoo.bench.ops_cpu import run_ops_bench

    run_ops_bench(seq_lens=args.seq_lens, ops=args.ops, repeats=args.repeats, ref_max_t=args.ref_max_t,
                  threads=args.threads, out=args.out)


def cmd_cost(args):
    from attnzoo.bench.cost import print_cost_table

    print_cost_table(d_model=args.d_model, n_heads=args.n_heads, E=args.E, plot=args.plot)


def _comma_list(text, parse, example):
    """A non-empty comma list, each item read by `parse`; anything else is argparse's error."""
    try:
        items = [item.strip() for item in text.split(",")]
        if not all(items):
            raise ValueError
        return tuple(parse(item) for item in items)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list such as {example}, got {text!r}") from None


def _floats(text):
    return _comma_list(text, float, "1e-3,3e-3")


def _ints(text):
    return _comma_list(text, int, "64,128")


def _grid(text):
    """"64:4,128:8" -> ((64, 4), (128, 8)); a bare length means 0 pairs (passkey, bytes)."""
    def pair(item):
        t, _, d = item.partition(":")
        return int(t), int(d) if d else 0
    return _comma_list(text, pair, "64:4,128:8")


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

    pk = sub.add_parser("card", help="a mixer's reference page (formula, shapes, state size, usage)")
    pk.add_argument("name", nargs="?", help="the registered mixer (see `attnzoo list`)")
    pk.add_argument("--write-docs", metavar="DIR", help="write DIR/index.md and DIR/mixers/<name>.md for every mixer")
    pk.set_defaults(func=cmd_card)

    pd = sub.add_parser("demo", help="the main job (what `make demo` runs)")
    pd.set_defaults(func=cmd_demo)

    pz = sub.add_parser("zoo", help="sweep mixers x d_model x lr on MQAR (Zoology); leaderboard + plot")
    pz.add_argument("--preset", default="quick", choices=["quick", "standard", "paper"])
    pz.add_argument("--mixers", help="comma list of mixers or hybrid patterns (default: every causal mixer). "
                    "Put a pattern with '+', e.g. gated_deltanet*3+softmax; separate with ';' to keep a comma "
                    "pattern whole, e.g. 'softmax;base_conv,based'")
    pz.add_argument("--task", default="mqar", choices=["mqar", "passkey", "bytes"])
    pz.add_argument("--device", default="cuda" if _cuda() else "cpu")
    pz.add_argument("--out", help="results folder (default runs/zoo_<preset>)")
    pz.add_argument("--resume", action="store_true", help="skip the runs already in <out>/results.jsonl")
    pz.add_argument("--d-models", type=_ints, help="override the preset's widths, e.g. 64,128")
    pz.add_argument("--lrs", type=_floats, help="override the preset's learning rates, e.g. 1e-3,3e-3")
    pz.add_argument("--steps", type=int, help="override the most steps per run (honoured below the preset's "
                    "floor too, with a note)")
    pz.add_argument("--schedule-steps", type=int,
                    help="the cosine schedule spans this many steps while --steps caps the training (e.g. "
                         "Zoology's 12500 under a session's budget): a run that reaches the target before the cap "
                         "is the full schedule's run, one cut at the cap a lower bound of it")
    pz.add_argument("--grid", type=_grid, help="override the (T, pairs) settings, e.g. 64:4,128:8 (passkey: 256)")
    pz.add_argument("--total-seconds", type=float, help="override the whole sweep's time budget")
    pz.add_argument("--workers", type=int,
                    help="runs at once (default: the preset's on CUDA, one per core up to 8 on a CPU)")
    pz.add_argument("--threads", type=int, help="torch CPU threads per run")
    pz.add_argument("--compile", help="comma list of mixers/patterns whose runs train under torch.compile, or 'all' "
                    "(off by default; CPU: it paid for kda, rwkv7, hgrn, gaam; benchmarks/results/compile/)")
    pz.add_argument("--init", choices=["default", "gpt2"],
                    help="override the preset's model init: default (nn.Linear's) or gpt2 (N(0, 0.02), residual "
                         "outputs / sqrt(2 n_layers): Zoology's); a results folder should hold one init")
    pz.set_defaults(func=cmd_zoo)

    pb = sub.add_parser("bench", help="speed benches")
    bsub = pb.add_subparsers(dest="bench", required=True)
    pbo = bsub.add_parser("ops", help="CPU: reference loop vs torch chunked GLA and gated delta rule")
    pbo.add_argument("--seq-lens", type=_ints, default=(512, 2048, 8192))
    pbo.add_argument("--ops", type=lambda s: tuple(s.split(",")),
                     default=("gla_vector_gate", "gla_scalar_gate", "gated_delta_rule"))
    pbo.add_argument("--repeats", type=int, default=3, help="runs of the torch path (fastest kept); reference once")
    pbo.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own)")
    pbo.add_argument("--ref-max-t", type=int, default=2048, help="largest T at which to run the reference")
    pbo.add_argument("--out", default="benchmarks/results/ops_cpu.jsonl", help="JSON lines appended here")
    pbo.set_defaults(func=cmd_bench_ops)
    pbs = bsub.add_parser("speed", help="GPU: Triton GLA and delta-rule ops vs SDPA backends and fla; ms, TFLOP/s, "
                          "memory")
    pbs.add_argument("--shapes", help="comma list of T or TxB (default: T 1k..64k with B·T = --tokens)")
    pbs.add_argument("--tokens", type=int, default=16384, help="B·T for shapes given as T alone")
    pbs.add_argument("--heads", type=int, default=16)
    pbs.add_argument("--head-dim", type=int, default=128)
    pbs.add_argument("--providers", default=None,
                     help="comma list (default: all ops that run: attnzoo_scalar, attnzoo_vector, "
                     "attnzoo_gated_delta, attnzoo_delta, sdpa_*, fla_simple_gla, fla_gla, fla_gated_delta, "
                     "fla_delta); mixer:NAME times a whole mixer, e.g. mixer:gla")
    pbs.add_argument("--modes", default="fwd,fwdbwd,decode", help="comma list of fwd, fwdbwd, decode")
    pbs.add_argument("--rounds", type=int, default=3,
                     help="interleaved timing rounds per case (providers rotated; the median is reported)")
    pbs.add_argument("--gates", default="weak", help="comma list of gate regimes for the gated ops: weak "
                     "(logsigmoid(x)/16, GLA's own), strong (logsigmoid(x)); a table row per regime")
    pbs.add_argument("--out", default="benchmarks/results/speed", help="folder for speed.jsonl/.md/.png")
    pbs.set_defaults(func=cmd_bench_speed)
    psp = bsub.add_parser("sp", help="sequence parallelism on gloo CPU processes: All-Scan vs ring vs all-gather, "
                          "time and bytes per rank against P, alpha-beta model (GPUs: benchmarks/sp_nccl.py)")
    psp.add_argument("--worlds", type=_ints, default=(1, 2, 3, 4), help="numbers of processes P, e.g. 1,2,4")
    psp.add_argument("--repeats", type=int, default=3, help="timed fwd+bwd steps per case and round (after a warm-up)")
    psp.add_argument("--rounds", type=int, default=3, help="interleaved rounds per case (the median is reported)")
    psp.add_argument("--out", default="benchmarks/results/sp", help="folder for sp.jsonl (appended), sp.md, sp.png")
    psp.set_defaults(func=cmd_bench_sp)
    pbc = bsub.add_parser("compile", help="eager vs torch.compile (inductor) step time of the zoo's models "
                          "(fwd+bwd+AdamW), per mixer")
    pbc.add_argument("--mixers", help="comma list (default: the zoo's mixers for the preset)")
    pbc.add_argument("--preset", default="quick", choices=["quick", "standard", "paper"])
    pbc.add_argument("--device", default="cuda" if _cuda() else "cpu")
    pbc.add_argument("--steps", type=int, default=5, help="timed steps per round")
    pbc.add_argument("--rounds", type=int, default=3, help="interleaved eager/compiled rounds (median reported)")
    pbc.add_argument("--threads", type=int, help="torch CPU threads")
    pbc.add_argument("--out", default="benchmarks/results/compile", help="folder for compile_<device>.jsonl/.md")
    pbc.set_defaults(func=cmd_bench_compile)
    pzt = bsub.add_parser("zoo-throughput", help="zoo training: model-steps/s, one run per process vs many models "
                          "trained as one (eager, CUDA graph)")
    pzt.add_argument("--mixers", default=",".join(_zoo_throughput_mixers()), help="comma list")
    pzt.add_argument("--d-models", type=_ints, default=(64, 256))
    pzt.add_argument("--seq-lens", type=_ints, default=(64, 256))
    pzt.add_argument("--paths", default="process,group,group_graph,group_procs",
                     help="comma list of process, group, group_graph, group_procs, group_graph_compiled")
    pzt.add_argument("--steps", type=int, default=20, help="timed steps per case (after --warmup)")
    pzt.add_argument("--warmup", type=int, default=5)
    pzt.add_argument("--group-size", type=int, default=4, help="models per group (Zoology: its 4 learning rates)")
    pzt.add_argument("--workers", type=int, default=8, help="processes sharing the device on the process path")
    pzt.add_argument("--group-workers", type=int, default=None,
                     help="group processes at once on the group_procs path (default: the preset's workers)")
    pzt.add_argument("--batch", type=int, default=None, help="default: Zoology's (512 for T <= 128, 256, 128)")
    pzt.add_argument("--device", default=None, help="default: cuda when available")
    pzt.add_argument("--out", default="runs/zoo_throughput", help="folder for throughput.jsonl (appended) and .md")
    pzt.set_defaults(func=cmd_bench_zoo_throughput)
    psc = bsub.add_parser("step-cost", help="CPU: ms per training step of each zoo model (sizes a preset's budget)")
    psc.add_argument("--preset", default="quick")
    psc.add_argument("--kwargs", choices=("preset", "example"), default="preset",
                     help="the preset's mixer_kwargs overrides, or the cards' example_kwargs alone")
    psc.add_argument("--mixers", help="comma list (default: every zoo mixer)")
    psc.add_argument("--batch-size", type=int, help="default: the preset's")
    psc.add_argument("--steps", type=int, default=8, help="timed steps (median), after two warm-up steps")
    psc.add_argument("--threads", type=int, default=1)
    psc.add_argument("--profile", action="store_true", help="also print torch.profiler's table of the steps")
    psc.set_defaults(func=cmd_bench_step_cost)

    pc = sub.add_parser("cost", help="Kinetics cost model: eFLOPs per token at L = 4k, 32k, 128k, and a plot")
    pc.add_argument("--d-model", type=int, default=2048)
    pc.add_argument("--n-heads", type=int, default=16)
    pc.add_argument("--E", type=float, default=562.5, help="FLOPs per byte moved (Kinetics: 562.5)")
    pc.add_argument("--plot", default="runs/cost_vs_context.png", help="PNG path ('' for none)")
    pc.set_defaults(func=cmd_cost)

    pr = sub.add_parser("repro", help="the papers' claims reproduced at small scale, each with a verdict")
    pr.add_argument("name", nargs="?", help="the study (see --list)")
    pr.add_argument("--list", action="store_true", help="list the studies and what each checks")
    pr.add_argument("--quick", action="store_true", help="the CPU size (<= 3 minutes on 2 cores)")
    pr.add_argument("--size", choices=["quick", "medium", "full"], default=None,
                    help="quick (= --quick), medium (a few CPU minutes) or full (the GPU size, the default)")
    pr.add_argument("--readme", metavar="ROOT", default=None,
                    help="write ROOT/README.md from every ROOT/<name>[/<label>]/summary.md and exit")
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    pr.add_argument("--out", default="runs/repro", help="folder; the study writes <out>/<name>/")
    pr.add_argument("--resume", action="store_true",
                    help="keep <out>/<name>/results.jsonl and skip the runs already in it (hybrid-ratio)")
    pr.set_defaults(func=cmd_repro)

    pli = sub.add_parser("linearize", help="swap a softmax teacher's attention for any mixer and distil it "
                         "(LoLCATs/LAWCAT stages 1 and 2)")
    pli.add_argument("--teacher", required=True, choices=["byte-lm", "minilm"])
    pli.add_argument("--student", required=True, help="comma list of mixers or patterns, e.g. lawcat,gla*3+softmax")
    pli.add_argument("--stage", default="both", choices=["1", "2", "both"])
    pli.add_argument("--size", default="cpu", choices=["test", "cpu-short", "cpu", "cpu-long", "gpu"],
                     help="cpu-short: byte-lm only (the short first CPU run); cpu-long: minilm only (4x cpu's steps)")
    pli.add_argument("--out", required=True, help="results folder (a second run resumes from its checkpoints)")
    pli.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    pli.add_argument("--seed", type=int, default=0)
    pli.add_argument("--no-scratch", action="store_true", help="byte-lm: skip the from-scratch baselines")
    pli.add_argument("--full", action="store_true", help="stage 2 fine-tunes every parameter (default: LoRA r=8)")
    pli.set_defaults(func=cmd_linearize)
    return p


def cmd_linearize(args):
    from attnzoo.distill.run import linearize

    students = [s.strip() for s in args.student.split(",")]
    if not all(students):
        raise ValueError(f"--student must be a comma list of names or patterns, got {args.student!r}")
    linearize(teacher=args.teacher, students=students, stage=args.stage, size=args.size, out=args.out,
              device=args.device or ("cuda" if _cuda() else "cpu"), seed=args.seed, scratch=not args.no_scratch,
              lora=not args.full)
    print(f"written: {args.out}/results.jsonl, summary.md, loss.png")
    return 0


def cmd_repro(args):
    from attnzoo.repro import list_studies, run_study

    if args.readme:
        from attnzoo.repro.readme import write_readme

        print(f"written: {write_readme(args.readme)}")
        return 0
    studies = list_studies()
    if args.list or not args.name:
        for name, mod in sorted(studies.items()):
            print(f"{name:14s} {mod.PAPER}")
            for c in mod.CLAIMS:
                print(f"{'':14s}   - {c}")
        return 0
    device = args.device or ("cuda" if _cuda() else "cpu")
    size = args.size or ("quick" if args.quick else "full")
    claims = run_study(args.name, out=args.out, size=size, seed=args.seed, device=device, resume=args.resume)
    for c in claims:
        print(f"{c.verdict:15s} {c.claim}: paper {c.paper}, ours {c.ours}")
    print(f"written: {args.out}/{args.name}/summary.md")
    return 0


def cmd_bench_step_cost(args):
    from attnzoo.bench.step_cost import run_step_cost

    run_step_cost(preset=args.preset, kwargs=args.kwargs, mixers=args.mixers.split(",") if args.mixers else None,
                  batch_size=args.batch_size, steps=args.steps, threads=args.threads, profile=args.profile)


def cmd_bench_compile(args):
    from attnzoo.bench.compile_bench import run_compile_bench

    mixers = [m.strip() for m in args.mixers.split(",")] if args.mixers else None
    run_compile_bench(mixers, preset=args.preset, device=args.device, steps=args.steps, rounds=args.rounds,
                      threads=args.threads, out=args.out)


def cmd_bench_sp(args):
    from attnzoo.bench.sp import run_sp_bench

    run_sp_bench(args.worlds, out=args.out, plan={"repeats": args.repeats, "rounds": args.rounds})


def _zoo_throughput_mixers():
    from attnzoo.bench.zoo.throughput import DEFAULT_MIXERS

    return DEFAULT_MIXERS


def cmd_bench_zoo_throughput(args):
    from attnzoo.bench.zoo.throughput import run_throughput

    run_throughput(mixers=[m for m in args.mixers.split(",") if m], d_models=args.d_models, seq_lens=args.seq_lens,
                   paths=tuple(p for p in args.paths.split(",") if p), steps=args.steps, warmup=args.warmup,
                   group_size=args.group_size, workers=args.workers, batch=args.batch,
                   group_workers=args.group_workers,
                   device=args.device or ("cuda" if _cuda() else "cpu"), out=args.out)
    with open(f"{args.out}/throughput.md", encoding="utf-8") as f:
        print(f.read())


def cmd_bench_speed(args):
    from attnzoo.bench.speed import PROVIDERS, default_shapes, parse_shapes, run_speed

    shapes = (parse_shapes(args.shapes, H=args.heads, D=args.head_dim, tokens=args.tokens) if args.shapes
              else default_shapes(tokens=args.tokens, H=args.heads, D=args.head_dim))
    providers = tuple(args.providers.split(",")) if args.providers else PROVIDERS
    _, md = run_speed(shapes, args.out, providers=providers, modes=tuple(args.modes.split(",")), rounds=args.rounds,
                      gates=tuple(g.strip() for g in args.gates.split(",") if g.strip()))
    print(md)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except ValueError as e:
        print(f"attnzoo: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
