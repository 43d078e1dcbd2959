"""The `rls3` command: run / generate / eval / convert / report / scenes.

    rls3 run                                   # quick preset, SAC, lite VLM; writes a report
    rls3 run --agent random --budget-from runs/quick__sac__0__...   # the equal-budget baseline
    rls3 run --resume runs/quick__sac__0__...  # continue a killed or interrupted run
    rls3 run --preset paper-clip --set loop.iterations=30 --set vlm.device=cuda
    rls3 generate [--preset P]                 # the fixed validation and test sets
    rls3 eval CHECKPOINT DATASET_DIR [--json FILE]  # a VLM checkpoint (or run) on a dataset
    rls3 convert negclip.pth models/negclip    # an OpenAI-CLIP / open_clip file -> a folder
    rls3 report RUN_DIR [RUN_DIR ...] [--out DIR] [--baseline NAME=EVAL.json ...]
    rls3 scenes [--out scenes.png] [--layouts 3]

Bad input ends with exit code 2 and a one-line message; Ctrl-C with exit code 130 (a run stays
resumable); a scene worker or a data-parallel process that died or stalled with exit code 1 and a
one-line message naming it (the run stays resumable).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from rls3.backends import BackendSpec, CliOption, available_backends, backend_specs
from rls3.config import AGENTS, PRESETS, Config, ConfigError, preset

log = logging.getLogger("rls3.cli")
EXIT_FAILED = 1          # a worker or data-parallel process failed (the run stays resumable)
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_UNITY = 3           # the Unity bridge failed (the run stays resumable)


class UsageError(Exception):
    """Bad command-line input (reported in one line, exit code 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="start from this preset (default: quick, or the preset named in --config)")
    p.add_argument("--config", type=Path, help="YAML file with config values (any subset)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one value, e.g. --set loop.eta=0.3 (repeatable)")
    p.add_argument("--seed", type=int, help="run seed")
    p.add_argument("--backend", help=f"scene backend ({', '.join(available_backends())})")
    for spec in backend_specs():   # each backend's own flags, --<backend>-<flag>
        if spec.cli_options:
            group = p.add_argument_group(f"{spec.title or spec.name} (--backend {spec.name})")
            for o in spec.cli_options:
                if o.type is None:
                    group.add_argument(_flag(spec, o), action="store_true", help=o.help)
                else:
                    group.add_argument(_flag(spec, o), type=o.type, metavar=o.metavar,
                                       help=o.help)


def _flag(spec: BackendSpec, option: CliOption) -> str:
    return f"--{spec.name}-{option.flag}"


def _backend_flags(args: argparse.Namespace, cfg: Config) -> dict[str, Any]:
    """`backend.options` set by a backend's own flags (ConfigError when they are not the run's
    backend's)."""
    for spec in backend_specs():
        given = {}
        for o in spec.cli_options:
            value = getattr(args, _flag(spec, o)[2:].replace("-", "_"), None)
            if value is not None and value is not False:
                given[o.key] = True if o.type is None else value
        if given:
            if (getattr(args, "backend", None) or cfg.backend.name) != spec.name:
                raise ConfigError(f"--{spec.name}-* options need --backend {spec.name}")
            return {**cfg.backend.options, **given}
    return {}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="rls3", description="RL-based synthetic sample selection for "
                     "spatial reasoning in vision-language models (RLS3).")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings only, no progress")
    common = _Parser(add_help=False)  # -v/-q also after the command (a parent: never parses)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="debug logging")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="warnings only, no progress")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def add(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, parents=[common])

    p = add("run", "run RLS3 (Algorithm 1) and write a report")
    _add_config_args(p)
    p.add_argument("--agent", help=f"data-generation agent ({', '.join(AGENTS)})")
    p.add_argument("--vlm", help="VLM adapter name (see rls3.vlm.available_vlms)")
    p.add_argument("--workers", type=int, metavar="N",
                   help="scene worker processes collecting in parallel (env.workers; default 1: "
                        "in this process)")
    p.add_argument("--budget-from", type=Path, metavar="RUN_DIR",
                   help="stop once as many samples were generated as RUN_DIR generated")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue this run directory")
    p.add_argument("--run-dir", type=Path, help="use this (new) run directory")
    p.add_argument("--no-report", action="store_true", help="do not write the report at the end")

    p = add("generate", "generate the fixed validation and test sets")
    _add_config_args(p)
    p.add_argument("--split", choices=["val", "test", "both"], default="both")
    p.add_argument("--force", action="store_true", help="regenerate existing sets")

    p = add("eval", "evaluate a VLM checkpoint on a dataset")
    p.add_argument("checkpoint", type=Path, metavar="CHECKPOINT",
                   help="a VLM folder, a run checkpoint folder, a run directory (its best VLM) "
                   "or an OpenAI-CLIP / open_clip .pt/.pth/.safetensors file (clip adapter)")
    p.add_argument("dataset", type=Path, metavar="DATASET_DIR")
    p.add_argument("--vlm", help="adapter name (default: the one recorded in the checkpoint; "
                   "clip for a state-dict file)")
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: CUDA when present)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--json", type=Path, metavar="FILE",
                   help="also write the metrics as JSON (what `rls3 report --baseline` reads)")

    p = add("convert", "convert an OpenAI-CLIP / open_clip ViT checkpoint (e.g. NegCLIP) to a "
            "transformers CLIP folder the clip adapter loads")
    p.add_argument("checkpoint", type=Path, metavar="CKPT",
                   help=".pt/.pth/.bin/.safetensors file (or a folder holding one)")
    p.add_argument("out", type=Path, metavar="OUT_DIR", help="new folder to write")
    p.add_argument("--activation", choices=["quick_gelu", "gelu"], default="quick_gelu",
                   help="MLP activation (the file does not say): quick_gelu for OpenAI's and "
                   "NegCLIP's models (default), gelu for open_clip models trained without "
                   "-quickgelu (e.g. LAION's)")
    p.add_argument("--vision-heads", type=int, metavar="N",
                   help="image-tower attention heads (default: width // 64, as OpenAI's)")
    p.add_argument("--text-heads", type=int, metavar="N",
                   help="text-tower attention heads (default: width // 64)")

    p = add("report", "write the markdown/plot report of one or more runs")
    p.add_argument("runs", type=Path, nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", type=Path, help="output folder (default: RUN_DIR/report for one "
                   "run, ./report for several)")
    p.add_argument("--baseline", action="append", default=[], metavar="NAME=EVAL.json",
                   help="a reference model's `rls3 eval --json` metrics, drawn as a line in "
                   "Fig. 5 and a row of the per-term table (repeatable)")

    p = add("value", "what a run's saved data is worth: a fresh VLM trained on it at the loop's "
                     "compute, or the loop's fine-tuning replayed on it (--schedule)")
    p.add_argument("run", type=Path, metavar="RUN_DIR")
    p.add_argument("--schedule", action="store_true",
                   help="replay the loop's fine-tuning iteration by iteration (with --set "
                        "loop.KEY=VALUE changes) instead of training one fresh VLM on all data")
    p.add_argument("--iterations", type=int, metavar="N", help="use iterations 1..N only")
    p.add_argument("--passes", type=int, metavar="N",
                   help="sample passes of the fresh VLM (default: what the loop spent)")
    p.add_argument("--data-dir", help="fixed sets from this folder (default: the run's data.dir)")
    p.add_argument("--test-size", type=int, help="test-set size (default: the run's)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="with --schedule: change a loop.*, vlm.cache_dtype or vlm.options.* "
                        "value, e.g. loop.finetune.shrink=0.5 or vlm.cache_dtype=null")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the result as JSON")

    p = add("scenes", "contact sheet of the simulator's scenes")
    p.add_argument("--out", type=Path, default=Path("scenes.png"))
    p.add_argument("--layouts", type=int, default=1, help="random layouts per scene")
    p.add_argument("--size", type=int, default=256, help="tile size in pixels")
    p.add_argument("--split", choices=["train", "test", "all"], default="all")
    p.add_argument("--seed", type=int, default=0)
    return parser


# ------------------------------------------------------------------------------------ helpers
def resolve_config(args: argparse.Namespace) -> Config:
    """preset -> --config YAML -> flags -> --set overrides."""
    name = args.preset
    if args.config is not None:
        cfg = Config.from_yaml(args.config, base=preset(name) if name else None)
        if name is None and cfg.preset == "custom":
            cfg = Config.from_yaml(args.config, base=preset("quick"))
    else:
        cfg = preset(name or "quick")
    flags: dict[str, Any] = {}
    if args.seed is not None:
        flags["seed"] = args.seed
    if getattr(args, "backend", None):
        flags["backend.name"] = args.backend
    options = _backend_flags(args, cfg)
    if options:
        flags["backend.options"] = options
    if getattr(args, "agent", None):
        flags["agent.name"] = args.agent
    if getattr(args, "vlm", None):
        flags["vlm.name"] = args.vlm
    if getattr(args, "workers", None) is not None:
        flags["env.workers"] = args.workers
    if flags:
        cfg = cfg.override(flags)
    if args.overrides:
        cfg = cfg.override(args.overrides)
    return cfg


class _TqdmHandler(logging.StreamHandler):
    """Console log lines that do not break tqdm progress bars."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm.auto import tqdm

            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname).1s %(name)s: %(message)s",
                                           "%H:%M:%S"))
    handler.setLevel(level)  # the console; a run's run.log still gets INFO
    root = logging.getLogger("rls3")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


# ------------------------------------------------------------------------------------ commands
def _sigterm_as_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _data_parallel() -> Any:
    """The process group of a multi-process launch (torchrun / accelerate launch), or None."""
    from rls3.vlm.distributed import init_data_parallel

    try:
        return init_data_parallel()
    except ValueError as e:
        raise UsageError(str(e)) from None


def cmd_run(args: argparse.Namespace) -> int:
    import signal

    from rls3 import loop, rundir
    from rls3.vlm import launch

    # `kill` ends a run like Ctrl-C: the last finished iteration stays resumable either way
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)

    parallel = _data_parallel()
    if parallel is not None:
        # every process checks the launch against the config, so a mismatch ends them all with
        # the same clear error before any of them waits for another
        cfg = (rundir.load_run_config(args.resume, resume=True) if args.resume is not None
               and args.resume.is_dir() else resolve_config(args))
        launch.check_launch(cfg, parallel)
    if parallel is not None and not parallel.is_main:
        # the scene, the agent and the run directory belong to the main process; this one runs
        # the main process's VLM calls on its share of each batch
        launch.serve_vlm(parallel)
        parallel.close()
        return 0
    # on an error the main process exits non-zero and the launcher ends the others (they may be
    # inside a collective call the main process abandoned: a stop message could not reach them)
    result = _start_or_resume(args, loop, parallel)
    if parallel is not None:
        from rls3.vlm.distributed import stop_serving

        stop_serving(parallel)
        parallel.close()
    from rls3.report import run_answer, summary_line

    final = result.final
    print(f"run {result.run_dir}: {result.iterations} iterations ({result.stop_reason}), "
          f"{final.get('cum_steps', 0)} generated samples, {final.get('cum_valid', 0)} valid; "
          + summary_line(run_answer(result.run_dir, result.records)))
    if not args.no_report:
        from rls3.report import write_report

        path = write_report([result.run_dir], result.run_dir / "report")
        print(f"report: {path}")
    return 0


def _start_or_resume(args: argparse.Namespace, loop: Any, parallel: Any) -> Any:
    """`rls3 run`'s loop (on the main process of a multi-process launch)."""
    if args.resume is not None:
        given = [f for f, v in (("--preset", args.preset), ("--config", args.config),
                                ("--set", args.overrides), ("--seed", args.seed),
                                ("--backend", args.backend), ("--agent", args.agent),
                                ("--vlm", args.vlm), ("--budget-from", args.budget_from),
                                ("--workers", args.workers is not None),
                                ("--run-dir", args.run_dir)) if v]
        if given:
            raise UsageError(f"--resume continues a run with its own config; drop "
                             f"{', '.join(given)}")
        if not args.resume.is_dir():
            what = "is a file, not a folder" if args.resume.exists() else "does not exist"
            raise UsageError(f"run directory {str(args.resume)!r} {what}")
        return loop.resume(args.resume, progress=False if args.quiet else None,
                           parallel=parallel)
    cfg = resolve_config(args)
    if args.budget_from is not None:
        if not args.budget_from.is_dir():
            raise UsageError(f"--budget-from: run directory {str(args.budget_from)!r} "
                             f"does not exist")
        from rls3.rundir import resolve_budget

        cfg = resolve_budget(cfg.override({"loop.budget": 0,
                                           "loop.budget_from": str(args.budget_from)}))
        print(f"budget: {cfg.loop.budget} generated samples ({cfg.loop.budget_unit}) from "
              f"{args.budget_from}")
    if args.quiet:
        cfg = cfg.override({"progress": False})
    return loop.run(cfg, run_dir=args.run_dir, parallel=parallel)


def cmd_generate(args: argparse.Namespace) -> int:
    from rls3.data import prepare_fixed_sets

    cfg = resolve_config(args)
    splits = [s for s in ("val", "test") if args.split in (s, "both")]
    sizes = {"val": cfg.data.val_size, "test": cfg.data.test_size}
    for split, folder, existed in prepare_fixed_sets(cfg, splits, force=args.force,
                                                     progress=not args.quiet):
        print(f"{split}: {folder} ({sizes[split]} samples{', already there' if existed else ''})")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from rls3.data import read_dataset
    from rls3.vlm import build_vlm

    for what, p in (("checkpoint", args.checkpoint), ("dataset", args.dataset)):
        if not p.exists():
            raise UsageError(f"{what} {str(p)!r} does not exist")
    if args.json is not None and not args.json.parent.is_dir():
        raise UsageError(f"--json: folder {str(args.json.parent)!r} does not exist")
    folder, name = _eval_checkpoint(args)
    samples = read_dataset(args.dataset, progress=not args.quiet)
    kw: dict[str, Any] = {}
    if args.device:
        kw["device"] = args.device
    if args.batch_size:
        kw["batch_size"] = args.batch_size
    parallel = _data_parallel()    # every process evaluates its share; the main one prints
    if parallel is not None and parallel.device.type == "cuda" and not args.device:
        kw["device"] = str(parallel.device)
    try:
        vlm = build_vlm(name, weights=str(folder), progress=not args.quiet, **kw)
    except (ValueError, OSError) as e:
        raise UsageError(f"cannot load VLM {name!r} from {str(folder)!r}: {e}") from e
    if parallel is not None:
        vlm.distribute(parallel)
    m = vlm.evaluate(samples).to_dict()
    if parallel is not None:
        parallel.close()
        if not parallel.is_main:
            return 0
    _print_eval(args, folder, name, m)
    return 0


def _eval_checkpoint(args: argparse.Namespace) -> tuple[Path, Any]:
    """`eval`'s model: the weights folder (or state-dict file) and the VLM name to build."""
    from rls3.rundir import vlm_checkpoint
    from rls3.vlm import get_vlm_spec
    from rls3.vlm.common import read_meta
    from rls3.vlm.openai_clip import is_state_dict_source

    if is_state_dict_source(args.checkpoint):      # converted in memory by the clip adapter
        folder, name = args.checkpoint, args.vlm or "clip"
        try:
            adapter = get_vlm_spec(name).adapter
        except ValueError as e:
            raise UsageError(str(e)) from None
        if adapter != "clip":
            raise UsageError(f"{str(folder)!r} is a state-dict file, which only the clip "
                             f"adapter loads; --vlm {name!r} is a {adapter!r} model")
    else:
        folder = vlm_checkpoint(args.checkpoint)
        try:
            meta = read_meta(folder)
        except (ValueError, FileNotFoundError) as e:
            raise UsageError(str(e)) from e
        name = args.vlm or meta.get("name") or meta.get("kind")
    return folder, name


def _print_eval(args: argparse.Namespace, folder: Path, name: Any, m: dict[str, Any]) -> None:
    """`eval`'s metrics `m` on stdout, and into `--json` when given."""
    from rls3.atomic import atomic_write

    print(f"{name} ({folder}) on {args.dataset} ({m['n']} samples)")
    print(f"  score  {m['score']:.4f}" + (f"   loss {m['loss']:.4f}" if m.get("loss") is not None
                                          else ""))
    for t, v in m["per_term"].items():
        print(f"  term {t:<10} {v:.4f}")
    for c, v in m["per_complexity"].items():
        print(f"  complexity {c}  {v:.4f}")
    if args.json:
        record = {**m, "vlm": name, "checkpoint": str(Path(folder).resolve()),
                  "dataset": str(args.dataset.resolve())}
        atomic_write(args.json, json.dumps(record, indent=2))
        print(f"metrics: {args.json}")


def cmd_convert(args: argparse.Namespace) -> int:
    from rls3.vlm.openai_clip import save_converted

    if not args.checkpoint.exists():
        raise UsageError(f"checkpoint {str(args.checkpoint)!r} does not exist")
    for flag, v in (("--vision-heads", args.vision_heads), ("--text-heads", args.text_heads)):
        if v is not None and v < 1:
            raise UsageError(f"{flag} must be an integer >= 1, got {v}")
    try:
        out, arch = save_converted(args.checkpoint, args.out, activation=args.activation,
                                   vision_heads=args.vision_heads, text_heads=args.text_heads,
                                   progress=not args.quiet)
    except (ValueError, OSError) as e:        # CheckpointError is a ValueError
        raise UsageError(str(e)) from e
    print(f"converted {args.checkpoint} ({arch.describe()}, {args.activation}) -> {out}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from rls3.rundir import check_run_dir
    from rls3.report import read_baseline, write_report

    for d in args.runs:
        check_run_dir(d)
        if not (Path(d) / "metrics.jsonl").is_file():
            raise UsageError(f"run {str(d)!r} has no metrics.jsonl yet: nothing to report (it "
                             f"has not finished its first evaluation)")
    try:
        baselines = [read_baseline(spec) for spec in args.baseline]
    except ValueError as e:
        raise UsageError(str(e)) from None
    names = [b.name for b in baselines]
    if len(set(names)) != len(names):
        raise UsageError(f"--baseline names must differ, got {names}")
    out = args.out or (args.runs[0] / "report" if len(args.runs) == 1 else Path("report"))
    print(f"report: {write_report(args.runs, out, baselines=baselines)}")
    return 0


def cmd_value(args: argparse.Namespace) -> int:
    from rls3.preflight import check_vlm
    from rls3.rundir import check_run_dir, load_run_config
    from rls3.value import dataset_value, replay_schedule

    check_run_dir(args.run)
    for flag, v in (("--passes", args.passes), ("--iterations", args.iterations),
                    ("--test-size", args.test_size)):
        if v is not None and v < 1:
            raise UsageError(f"{flag} must be >= 1, got {v}")
    if args.overrides and not args.schedule:
        raise UsageError("--set changes the replayed schedule: use it with --schedule")
    bad = [o for o in args.overrides
           if not o.strip().startswith(("loop.", "vlm.options", "vlm.cache_dtype"))]
    if bad:
        raise UsageError(f"--set {bad[0]!r}: only loop.*, vlm.cache_dtype and vlm.options.* "
                         f"values can change in a replay")
    common = {"iterations": args.iterations, "data_dir": args.data_dir,
              "test_size": args.test_size, "progress": not args.quiet}
    if args.schedule:
        changed = load_run_config(args.run).override(args.overrides)
        check_vlm(changed)
        res = replay_schedule(args.run, loop=changed.loop, vlm_config=changed.vlm, **common)
        print(f"schedule replayed on {args.run}: iteration, val, test (the loop's test)")
        for point, loop_test in zip(res["curve"][1:], res["loop_test"], strict=False):
            print(f"  {point['iteration']:>3}  {point['val']['score']:.4f}  "
                  f"{point['test']['score']:.4f}  ({loop_test:.4f})")
    else:
        res = dataset_value(args.run, passes=args.passes, **common)
        print(f"dataset value of {args.run}: {res['samples']} samples, {res['units']} "
              f"epochs/steps ({res['sample_passes']} sample passes; the loop spent "
              f"{res['loop_sample_passes']})")
        print(f"  val {res['val']['score']:.4f}  test {res['test']['score']:.4f}  "
              f"(the loop's final test {res['loop_final_test']:.4f})")
    if args.json:
        from rls3.atomic import atomic_write

        atomic_write(args.json, json.dumps(res, indent=1))
    return 0


def cmd_scenes(args: argparse.Namespace) -> int:
    if args.layouts < 1 or args.size < 32:
        raise UsageError(f"--layouts must be >= 1 and --size >= 32, got {args.layouts}, "
                         f"{args.size}")
    from rls3.sim import list_scenes
    from rls3.sim.sheet import contact_sheet

    scenes = None if args.split == "all" else list(list_scenes(args.split))
    img = contact_sheet(scenes, layouts=args.layouts, size=args.size, seed=args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    img.save(args.out)
    print(f"scenes: {args.out} ({img.width}x{img.height})")
    return 0


#: errors of parallel processes that end a command with one line (module, class): looked up only
#: in modules the command loaded, so `rls3 report` never imports torch to catch them
PROCESS_ERRORS = (("rls3.workers", "WorkerError"),
                  ("rls3.pretraining", "PretrainingError"),
                  ("rls3.vlm.distributed", "CollectiveTimeoutError"))


def _process_errors() -> tuple[type[BaseException], ...]:
    """The `PROCESS_ERRORS` classes of the modules loaded so far (one not loaded raised none)."""
    return tuple(getattr(sys.modules[m], name) for m, name in PROCESS_ERRORS if m in sys.modules)


COMMANDS = {"run": cmd_run, "generate": cmd_generate, "eval": cmd_eval, "convert": cmd_convert,
            "report": cmd_report, "value": cmd_value, "scenes": cmd_scenes}


#: commands that take part in a multi-process launch (the others would run N times over)
MULTI_PROCESS_COMMANDS = ("run", "eval")


def _check_multi_process(command: str) -> None:
    """UsageError when a command that is not data-parallel is launched as several processes."""
    from rls3.runtime import launched_world_size  # torch-free: `rls3 report` never loads torch

    try:
        world = launched_world_size()
    except ValueError as e:
        raise UsageError(str(e)) from None
    if world > 1 and command not in MULTI_PROCESS_COMMANDS:
        raise UsageError(f"`rls3 {command}` runs in one process, but {world} were launched "
                         f"(WORLD_SIZE={world}); only {' and '.join(MULTI_PROCESS_COMMANDS)} "
                         f"take part in torchrun / accelerate launch")


def main(argv: Sequence[str] | None = None) -> int:
    """The `rls3` console entry; run as a program (argv None) it first re-executes itself under
    tcmalloc (`rls3.runtime`). A process of a multi-process launch run as a program ends with
    `os._exit` once its command has returned and its output is flushed: at interpreter teardown
    gloo's threads abort a finished process now and then ("terminate called without an active
    exception", SIGABRT), which the launcher reports as the failure of a run that completed."""
    code = _main(argv)
    if argv is None and _world_size() > 1:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _world_size() -> int:
    from rls3.runtime import launched_world_size

    try:
        return launched_world_size()
    except ValueError:
        return 1


def _main(argv: Sequence[str] | None) -> int:
    from rls3 import runtime

    try:
        # only the real entry re-executes: a caller passing argv (tests, scripts) keeps its process
        alloc = runtime.ensure() if argv is None else runtime.status()
    except runtime.AllocatorError as e:
        print(f"rls3: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args)
    if alloc.note:
        log.warning("%s", alloc.note)
    if args.quiet or not sys.stderr.isatty():
        # transformers' own bars ("Loading weights", "Writing model shards") read this when
        # first imported; rls3's bars print plain lines when stderr is not a terminal
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from rls3.bridges.errors import UnityBridgeError
    from rls3.data import DatasetError
    from rls3.rundir import RunDirError

    try:
        _check_multi_process(args.command)
        return COMMANDS[args.command](args)
    except (UsageError, ConfigError, DatasetError, RunDirError) as e:
        print(f"rls3 {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except UnityBridgeError as e:   # one line, not two chained tracebacks
        hint = (" (the run keeps its last finished iteration; continue it with rls3 run "
                "--resume RUN_DIR once Unity works again)") if args.command == "run" else ""
        print(f"rls3 {args.command}: Unity bridge error ({type(e).__name__}): {e}{hint}",
              file=sys.stderr)
        return EXIT_UNITY
    except _process_errors() as e:
        hint = (" (the run keeps its last finished iteration; continue it with rls3 run "
                "--resume RUN_DIR)") if args.command == "run" else ""
        print(f"rls3 {args.command}: error: {e}{hint}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        hint = ""
        if args.command == "run":
            hint = (" (the run keeps its last finished iteration; continue it with "
                    "rls3 run --resume RUN_DIR)")
        print(f"rls3 {args.command}: interrupted{hint}", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
