"""The command line: thin typer commands over fmctr.pipeline.

stdout carries only data (predictions, --json metrics); progress, tables, warnings
and errors go to stderr. Every fmctr error becomes one `error: ...` line and exit 1.
"""

import functools
import json
import math
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Optional

from fmctr.commands import importing, lazy_rich
from fmctr.commands.importing import collector_paused

lazy_rich.install()  # before typer, whose help imports rich.markdown and rich.traceback

with collector_paused():
    import typer

from fmctr import __version__
from fmctr.errors import BadOptions, FmctrError, Interrupted

app = typer.Typer(
    name="fmctr",
    help=(
        "Click-through-rate modeling with Factorization Machines.\n\n"
        "Hash raw CTR data (CSV, TSV, Parquet, Criteo, libsvm/libffm; plain or gzip; a file or - for stdin) "
        "into sparse features, train an FM, report AUC/logloss, and write predictions as CSV."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

SCHEMA = "Schema (how columns become features)"
HASH = "Hashing"
TRAIN = "Training"


# Exit codes, as shells and sysexits(3) use them: 0 done; 1 an error in the input, the
# model or the options (one `error:` line); 2 a usage error (an unknown option, a
# missing argument); 70 a bug in fmctr; 128+N killed by signal N (130 SIGINT, 143 SIGTERM).
USAGE_ERROR = 2
INTERNAL_ERROR = 70


def _err(message: str) -> None:
    sys.stderr.write(message.rstrip("\n") + "\n")
    sys.stderr.flush()


class Stopped(BaseException):
    """SIGINT or SIGTERM: unwinds the command (not an Exception, so that nothing
    swallows it), and every temporary file and directory is removed on the way out."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _ignore_unraisable(unraisable) -> None:
    """sys.unraisablehook after a stop signal (see _Signals._handle)."""


def _compiling(frame) -> bool:
    """Whether the main thread is in numba's or llvmlite's Python code (compiling or
    loading a kernel) at `frame` or in a frame that called it."""
    folders = tuple(os.path.dirname(m.__file__) + os.sep for m in map(sys.modules.get, ("numba", "llvmlite"))
                    if m is not None and getattr(m, "__file__", None))
    while frame is not None and folders:
        if frame.f_code.co_filename.startswith(folders):
            return True
        frame = frame.f_back
    return False


def _again_soon(signum: int) -> None:
    """The signal sent to this process again in 50 ms, from a timer thread."""
    import threading

    timer = threading.Timer(0.05, os.kill, (os.getpid(), signum))
    timer.daemon = True
    timer.start()


class _Signals:
    """The one signal setup, for every command. SIGINT and SIGTERM raise Stopped in
    the main thread at once; while training asks (`requested`, between blocks) they
    only ask it to stop at the next block, where it writes a checkpoint. A second
    signal while the first is being handled is ignored, so that cleanup finishes."""

    def __init__(self):
        self.signal = 0
        self.training = False
        self.previous: dict = {}

    def requested(self) -> bool:
        self.training = True
        return self.signal != 0

    def training_done(self) -> None:
        """Back to stopping at once; a stop asked for after the last block stops now."""
        self.training = False
        if self.signal:
            raise Stopped(self.signal)

    def _handle(self, signum, frame) -> None:
        if self.signal:
            return
        if not self.training and _compiling(frame):
            # Stopped raised inside numba's compiler can leave llvmlite objects half
            # made, and one freed twice at exit aborts the process ("double free
            # detected", exit -6, seen once in CI on `tune`): the signal comes again
            # shortly, until the compiler is done.
            _again_soon(signum)
            return
        self.signal = signum
        # From here the process unwinds to its one error line. Stopped may land inside
        # a constructor (llvmlite's, while numba compiles), whose half-made object then
        # fails in its finalizer; Python would print that as "Exception ignored in ..."
        # with a traceback, whenever the object goes. Not restored: the process ends.
        sys.unraisablehook = _ignore_unraisable
        if not self.training:
            raise Stopped(signum)

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self.previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. some test runners)
                pass
        return self

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


_signals = _Signals()  # the running command's (errors_to_exit makes a new one per command)


def _occupy_closed_std_fds() -> None:
    """A closed stdin/stdout/stderr (`>&-`) is noted by Python as sys.stdout = None; put
    /dev/null on its descriptor so that no file fmctr opens later gets number 1 and
    receives what is meant for stdout."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)  # takes the lowest free number: this one


def errors_to_exit(fn):
    """The one place where typed errors and signals become an `error:` line and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        global _signals
        try:
            _occupy_closed_std_fds()
            with _Signals() as _signals:
                return fn(*args, **kwargs)
        except FmctrError as e:
            _err(f"error: {e}")
            raise typer.Exit(code=1) from None
        except Stopped as e:
            _err(f"error: interrupted by {signal.Signals(e.signum).name}")
            raise typer.Exit(code=128 + e.signum) from None
        except KeyboardInterrupt:
            _err("error: interrupted")
            raise typer.Exit(code=130) from None
        except typer.Exit:
            raise
        except BrokenPipeError:
            # The reader of our stdout went away (e.g. `| head`): stop quietly, and
            # point stdout at /dev/null so the interpreter's final flush cannot fail.
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
            raise typer.Exit(code=0) from None
        except Exception as e:
            if os.environ.get("FMCTR_DEBUG"):
                raise
            _err(f"error: unexpected {type(e).__name__}: {e} (a bug in fmctr; FMCTR_DEBUG=1 shows the traceback)")
            raise typer.Exit(code=INTERNAL_ERROR) from None

    return wrapper


def _print_data(text: str) -> None:
    """One line of data on stdout, through the output layer: a closed or failing stdout
    is an error, not a silent loss."""
    from fmctr.atomic import STDOUT, write_bytes

    write_bytes(STDOUT, (text + "\n").encode())


def _names(values: Optional[list[str]]) -> list[str]:
    """Columns may be given as `--numeric a,b --numeric c`."""
    return [n.strip() for v in values or [] for n in v.split(",") if n.strip()]


AllowMissing = Annotated[bool, typer.Option("--allow-missing-columns", help="Score data that lacks most of the model's feature columns (they count as missing in every row) instead of refusing it.")]
InputArg = Annotated[str, typer.Argument(metavar="INPUT", help="Input data file, or - for stdin (gzip is detected).", show_default=True)]
Preset = Annotated[Optional[str], typer.Option(help="Built-in schema: criteo (raw Criteo TSV) or avazu.", rich_help_panel=SCHEMA)]
SchemaFile = Annotated[Optional[Path], typer.Option("--schema", help="Schema file (TOML or JSON); see README.", rich_help_panel=SCHEMA)]
Label = Annotated[Optional[str], typer.Option(help="Label column (values 0/1 or -1/1).  [default: label]", rich_help_panel=SCHEMA)]
Categorical = Annotated[Optional[list[str]], typer.Option(metavar="COLS", help="Categorical columns (comma-separated, repeatable). Default: every column not named otherwise.", rich_help_panel=SCHEMA)]
Numeric = Annotated[Optional[list[str]], typer.Option(metavar="COLS", help="Numeric columns (comma-separated, repeatable).", rich_help_panel=SCHEMA)]
Multi = Annotated[Optional[list[str]], typer.Option(metavar="COLS", help="Multi-valued columns, e.g. genres=\"Action|Comedy\" (comma-separated, repeatable).", rich_help_panel=SCHEMA)]
Ignore = Annotated[Optional[list[str]], typer.Option(metavar="COLS", help="Columns that are not features, e.g. ids (comma-separated, repeatable).", rich_help_panel=SCHEMA)]
Sep = Annotated[Optional[str], typer.Option("--sep", help="Separator inside multi-valued columns.  [default: |]", rich_help_panel=SCHEMA)]
NumericMode = Annotated[Optional[str], typer.Option(help="How numeric columns become features: auto (fine, and a column whose training values are fractional, a measurement, also gets its value standardised as a second feature: (sign(x)*ln(1+|x|) - mean) / std over the first 65,536 training rows, clipped to +-5; stored in the model), fine (as bucket for whole numbers; a fractional value gets a bucket of its own scale, a quarter octave of |x| with its sign), bucket (the Criteo winners' rule: token floor(ln(x)^2) for x>2, a token of its own for each floor(x) up to 2, so all of [0, 1) is one token), log1p (value sign(x)*ln(1+|x|) on one index), standard (that value standardised as auto's second feature, alone on one index: no bucket), exact (fine, and two more features: the value's own token, each whole number a token of its own beside its bucket, and the standardised value fitted on whole numbers too; without --numeric-mode the held-out rows may choose it for auto's whole-number columns) or raw.  [default: auto; bucket with --preset criteo]", rich_help_panel=SCHEMA)]
RowNorm = Annotated[Optional[bool], typer.Option("--row-norm/--no-row-norm", help="With a multi-valued column: scale each row's values so that its squared norm is the training rows' mean (instance normalisation, as libffm and xLearn do; a long bag of words no longer outweighs the other fields). Stored in the model.  [default: on]", rich_help_panel=SCHEMA)]
Format = Annotated[Optional[str], typer.Option("--format", help="Input format: csv, tsv, criteo, parquet, libsvm, libffm.  [default: detected from the data]", rich_help_panel=SCHEMA)]
UserCols = Annotated[Optional[list[str]], typer.Option("--user", metavar="COLS", help="For recall: the feature columns that describe the user (comma-separated, repeatable); with --item. Other features are context and go with the user.", rich_help_panel=SCHEMA)]
ItemCols = Annotated[Optional[list[str]], typer.Option("--item", metavar="COLS", help="For recall (`fmctr recall`): the feature columns that describe the item; the first is the item id unless recall is told otherwise.", rich_help_panel=SCHEMA)]
Bits = Annotated[Optional[int], typer.Option(help="Hash space is 2^bits features.  [default: 22]", rich_help_panel=HASH)]
HashSeed = Annotated[int, typer.Option(help="Seed of the feature hash.", rich_help_panel=HASH)]
Device = Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto (CUDA when available; scoring on a GPU uses the torch model).")]
Threads = Annotated[Optional[int], typer.Option(help="CPU threads for reading, hashing and scoring.  [default: all cores]")]
TrainThreads = Annotated[Optional[int], typer.Option(help="CPU threads for reading, hashing, training and scoring.  [default: all cores]")]
ModelOpt = Annotated[Path, typer.Option("--model", "-m", help="Model file written by `fmctr train`.")]
Json = Annotated[bool, typer.Option("--json", help="Print metrics as one JSON object on stdout.")]
Force = Annotated[bool, typer.Option("--force", help="Replace an existing output that fmctr did not write (a directory that is not a hashed dataset, a file of another kind). Inputs are never written over.")]


def _spec(preset, schema_file, label, categorical, numeric, multi, ignore, sep, numeric_mode, fmt, user=None, item=None,
          row_norm=None):
    from fmctr.reading.schema import build_spec

    return build_spec(
        preset=preset,
        schema_file=schema_file,
        label=label,
        categorical=_names(categorical),
        numeric=_names(numeric),
        multi=_names(multi),
        ignore=_names(ignore),
        numeric_mode=numeric_mode,
        sep=sep,
        format=fmt,
        user=_names(user),
        item=_names(item),
        row_norm=row_norm,
    )


def _schema_flags_given(*values) -> bool:
    return any(v not in (None, [], ()) for v in values)


def _hashing(bits: Optional[int], seed: int):
    from fmctr.hashing.tokens import HashSpec

    if bits is None and seed == 0:
        return None
    from fmctr.datasets.inputs import DEFAULT_BITS

    return HashSpec(bits=DEFAULT_BITS if bits is None else bits, seed=seed).check()


def _use_threads(threads: Optional[int]) -> None:
    """Every stage's thread pool: polars and pyarrow read it at start-up, numba per call."""
    if threads is None:
        return
    if threads < 1:
        raise BadOptions(f"--threads must be at least 1, got {threads}")
    os.environ["POLARS_MAX_THREADS"] = str(threads)
    import pyarrow

    pyarrow.set_cpu_count(threads)
    pyarrow.set_io_thread_count(threads)
    from fmctr.models.runtime import set_threads

    set_threads(threads)


def _quiet(message: str) -> None:
    pass


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


@app.command()
@errors_to_exit
def preprocess(
    inputs: Annotated[Optional[list[str]], typer.Argument(metavar="INPUT", help="Input data file(s), or - for stdin (gzip is detected). Several inputs give one shard each.  [default: -]")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Hashed dataset directory to write (with several inputs: a directory of shards).")] = ...,
    preset: Preset = None,
    schema: SchemaFile = None,
    label: Label = None,
    categorical: Categorical = None,
    numeric: Numeric = None,
    multi: Multi = None,
    ignore: Ignore = None,
    sep: Sep = None,
    numeric_mode: NumericMode = None,
    row_norm: RowNorm = None,
    format: Format = None,
    user: UserCols = None,
    item: ItemCols = None,
    bits: Bits = None,
    hash_seed: HashSeed = 0,
    min_count: Annotated[Optional[int], typer.Option(metavar="N", help="Count values over every input first; values seen fewer than N times become their field's rare token. The frequent set is kept with the data, and a model trained on it keeps it.", rich_help_panel=SCHEMA)] = None,
    threads: Threads = None,
    force: Force = False,
) -> None:
    """Hash raw data once into a dataset directory (for data trained on many times)."""
    _use_threads(threads)
    from fmctr.hashing.tokens import HashSpec
    from fmctr.commands.jobs import preprocess as run
    from fmctr.datasets.inputs import DEFAULT_BITS

    spec = _spec(preset, schema, label, categorical, numeric, multi, ignore, sep, numeric_mode, format, user, item, row_norm)
    hashing = HashSpec(bits=DEFAULT_BITS if bits is None else bits, seed=hash_seed).check()
    shards = run(inputs or ["-"], output, spec=spec, hashing=hashing, min_count=min_count, force=force)
    rows = sum(ds.rows for ds in shards)
    parts = sum(len(ds.parts) for ds in shards)
    what = f"{len(shards)} shards, {parts} parts" if len(shards) > 1 else f"{parts} part(s)"
    _err(f"wrote {rows:,} rows in {what} to {output}")


@app.command("train")
@errors_to_exit
def train_cmd(
    ctx: typer.Context,
    input: Annotated[Optional[str], typer.Argument(metavar="INPUT", help="Training data file, or - for stdin (gzip is detected).  [default: -, or the checkpoint's input with --resume]")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Model file to write.  [required, except with --resume]")] = None,
    start: Annotated[Optional[Path], typer.Option("--model", "-m", help="Continue from this model (warm start): its schema, hashing, weights and optimizer state; new data, same columns.")] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Finish an interrupted run from its checkpoint; the checkpoint holds every option (give INPUT again if it was stdin).")] = None,
    checkpoint: Annotated[Optional[Path], typer.Option(help="Where SIGINT/SIGTERM and --checkpoint-every write a checkpoint.  [default: OUTPUT.ckpt]")] = None,
    checkpoint_every: Annotated[Optional[float], typer.Option(help="Also write a checkpoint every this many seconds (removed when training ends well).")] = None,
    sync_every: Annotated[int, typer.Option(help="Under torchrun: rows each rank trains between syncs, which add every rank's change to the model rows touched.")] = 1 << 13,
    valid: Annotated[Optional[str], typer.Option(help="Validation data (raw or hashed): early stopping keeps the best epoch.")] = None,
    valid_fraction: Annotated[Optional[float], typer.Option(help="Hold out this last fraction of the training rows for validation instead.")] = None,
    min_count: Annotated[Optional[int], typer.Option(metavar="N", help="Values seen fewer than N times in the training rows become their field's one rare token (counted in a first pass; the model keeps the frequent set, so eval and predict map the same way). Not for multi-valued fields.", rich_help_panel=SCHEMA)] = None,
    preset: Preset = None,
    schema: SchemaFile = None,
    label: Label = None,
    categorical: Categorical = None,
    numeric: Numeric = None,
    multi: Multi = None,
    ignore: Ignore = None,
    sep: Sep = None,
    numeric_mode: NumericMode = None,
    row_norm: RowNorm = None,
    format: Format = None,
    user: UserCols = None,
    item: ItemCols = None,
    bits: Bits = None,
    hash_seed: HashSeed = 0,
    dim: Annotated[int, typer.Option(help="Factor dimension k; 0 trains logistic regression.", rich_help_panel=TRAIN)] = 8,
    epochs: Annotated[Optional[int], typer.Option(help="Passes over the data, fixed; with validation, the most (early stopping decides).  [default: chosen on held-out rows (--holdout), at most 20]", rich_help_panel=TRAIN)] = None,
    holdout: Annotated[Optional[float], typer.Option(metavar="FRACTION", help="Without validation data or --epochs: hold out this last share of the rows, stop early on it, then train again on every row for the epochs chosen (0: hold nothing out, train 3 epochs).  [default: 0.1, at least 2,000 rows, at most 0.25]", rich_help_panel=TRAIN)] = None,
    rivals: Annotated[bool, typer.Option("--rivals/--no-rivals", "--l2-choice/--no-l2-choice", help="With --holdout: the held-out rows also choose among rivals of the defaults, each trained on them and kept only if it beats the one kept so far by more than the held-out rows' noise: no touch L2 on the factors (unless --l2-factors or --l2-all-factors is given), a tenth of the touch L2 on the linear weights (unless --l2 is), 3x the rate (unless --lr is), no factors (unless --dim is), then each whole-number numeric column's values also as tokens of their own (--numeric-mode exact; unless --numeric-mode is given; raw data only: the data is hashed again). --no-rivals keeps the defaults (one held-out run).", rich_help_panel=TRAIN)] = True,
    refit: Annotated[bool, typer.Option("--refit/--no-refit", help="With --holdout: train again on every row (--no-refit keeps the held-out run's model: one run, no rivals of the defaults tried).", rich_help_panel=TRAIN)] = True,
    refits: Annotated[int, typer.Option(metavar="N", help="With --holdout: train again on every row N times, each with a seed of its own, and merge them into one model whose logit is the mean of theirs (an FM of N times the dim): the seeds' noise averaged. 1: one refit.", rich_help_panel=TRAIN)] = 2,
    batch_size: Annotated[Optional[int], typer.Option(help="Rows per update.  [default: 4 on the cpu engine, 1024 on torch]", rich_help_panel=TRAIN)] = None,
    lr: Annotated[Optional[float], typer.Option(help="Learning rate.  [default: 0.03; 3e-4 with adam]", rich_help_panel=TRAIN)] = None,
    optimizer: Annotated[str, typer.Option(help="adagrad, adam (both lazy: only the rows a batch touches move), or ftrl (FTRL-Proximal for the linear weights, Adagrad for the factors).", rich_help_panel=TRAIN)] = "adagrad",
    l2: Annotated[Optional[float], typer.Option(help="L2 on the linear weights of the rows a batch touches, once per batch; with ftrl, FTRL's lambda2.  [default: 80/training rows; 10 with ftrl]", rich_help_panel=TRAIN)] = None,
    l2_factors: Annotated[Optional[float], typer.Option(help="L2 on the factors of the rows a batch touches, once per batch. Left unset (and --l2-all-factors at its default), the held-out rows that choose the epochs also try 0 with --l2-all-factors 1e-3, kept if better beyond their noise.  [default: 400/training rows]", rich_help_panel=TRAIN)] = None,
    l2_all: Annotated[float, typer.Option(help="L2 on every linear weight, as weight decay on the mean loss; applied sparsely, each occurrence of a feature carrying rows/count of it, so rare features are shrunk hardest.", rich_help_panel=TRAIN)] = 0.0,
    l2_all_factors: Annotated[float, typer.Option(help="The same for the factors.", rich_help_panel=TRAIN)] = 3e-4,
    l1: Annotated[float, typer.Option(help="ftrl: L1 on the linear weights (lambda1; larger values zero more weights).", rich_help_panel=TRAIN)] = 0.0,
    ftrl_alpha: Annotated[float, typer.Option(help="ftrl: learning rate alpha of the linear weights.", rich_help_panel=TRAIN)] = 0.05,
    ftrl_beta: Annotated[float, typer.Option(help="ftrl: beta (smooths the per-coordinate learning rate).", rich_help_panel=TRAIN)] = 1.0,
    init_std: Annotated[float, typer.Option(help="Scale of the factors' random initial values (uniform, this standard deviation).", rich_help_panel=TRAIN)] = 0.01,
    lr_decay: Annotated[float, typer.Option(help="With validation: multiply the learning rate by this after a check that does not improve (1: never).", rich_help_panel=TRAIN)] = 0.5,
    valid_every: Annotated[Optional[int], typer.Option(metavar="ROWS", help="With validation: check every this many training rows.  [default: once per epoch]", rich_help_panel=TRAIN)] = None,
    patience: Annotated[int, typer.Option(help="With validation: stop after this many checks without improvement.", rich_help_panel=TRAIN)] = 2,
    metric: Annotated[str, typer.Option(help="With validation: logloss or auc decides the best epoch (logloss, as in tune: it also rewards calibration, which a CTR estimate needs).", rich_help_panel=TRAIN)] = "logloss",
    seed: Annotated[int, typer.Option(help="Seed for initialisation and shuffling.", rich_help_panel=TRAIN)] = 0,
    threads: TrainThreads = None,
    engine: Annotated[str, typer.Option(help="cpu (fused kernels), torch (EmbeddingBag + autograd) or auto.", rich_help_panel=TRAIN)] = "auto",
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto (CUDA when available).", rich_help_panel=TRAIN)] = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or tables.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the training summary (the model file's training metadata) as JSON on stdout.")] = False,
    items: Annotated[Optional[str], typer.Option("--items", metavar="CATALOGUE", help="Train from positives only: INPUT is a log of positives (user columns and the item id), CATALOGUE the items (id and item features); each positive meets --negatives catalogue items drawn as negatives, drawn again every epoch. Options not given start from this mode's own defaults: dim 64, lr 0.05, init-std 0.1, no L2 but 1e-3 on the factors (README, \"Recall\").", rich_help_panel="Positives only")] = None,
    negatives: Annotated[int, typer.Option(metavar="N", help="With --items: negatives drawn per positive.", rich_help_panel="Positives only")] = 32,
    sampling: Annotated[str, typer.Option(help="With --items: uniform over the catalogue, or popularity (count^0.75).", rich_help_panel="Positives only")] = "uniform",
    pool: Annotated[int, typer.Option(metavar="M", help="With --items: each negative is the best-scored of M draws by the epoch's starting weights, the user's own positives left out (hard negatives; 1: plain draws).", rich_help_panel="Positives only")] = 4,
    loss: Annotated[str, typer.Option(help="With --items: logistic (the positive 1, its negatives 0), bpr (pairwise: the positive above each negative; cpu engine), softmax (the positive against every catalogue item, no negatives drawn; cpu engine, catalogues up to 200,000 items), als (implicit alternating least squares: every pair not a positive is a 0 of weight --unobserved, each feature's weights solved exactly in turn; cpu engine; --l2-factors is its L2, scaled by the data each feature meets) or blend (logistic, als and - catalogues up to 200,000 items, adagrad - softmax trained apart, kept as one FM scoring their weighted sum, the weights chosen on the held-out positives).", rich_help_panel="Positives only")] = "blend",  # (fmctr.training.positives.DEFAULT_LOSS: tests/test_ials.py holds them equal)
    unobserved: Annotated[Optional[float], typer.Option(metavar="W", help="With --loss als or blend: the weight of every (user, item) pair that is not a positive, against 1 for a positive.  [default: 0.5]", rich_help_panel="Positives only")] = None,
    force: Force = False,
) -> None:
    """Train an FM on raw or hashed data and write a self-contained model file.

    SIGINT (Ctrl-C) or SIGTERM during training writes a checkpoint and exits
    non-zero; `fmctr train --resume CHECKPOINT` then finishes the job."""
    _use_threads(threads)
    from fmctr.datasets import hashed as dataset
    from fmctr.models.modelfile import load, save
    from fmctr.commands.jobs import CheckpointPlan, train_model
    from fmctr.commands.progress import TrainProgress, history_table, stderr
    from fmctr.training import distributed
    from fmctr.training.config import TrainConfig
    from fmctr.training.loop import NullProgress

    schema_flags = (preset, schema, label, categorical, numeric, multi, ignore, sep, numeric_mode, format, user, item,
                    row_norm)
    if resume is not None:
        if start is not None:
            raise BadOptions("--resume and --model both give a starting point: give one of them")
        if _schema_flags_given(*schema_flags):
            raise BadOptions("--resume takes the schema from the checkpoint: give no schema options")
        from fmctr.commands.jobs import resume_job

        base, job, cfg = resume_job(resume, threads)
        input = input or job.input
        if output is None and job.output is None:
            raise BadOptions(f"{resume}: the checkpoint names no model file to write beside it "
                             f"(its output is elsewhere, or an existing file that is not a model): give -o/--output")
        output = output or Path(job.output)
        valid, valid_fraction = job.valid, job.valid_fraction
        spec = None
    else:
        base = None
        input = input or "-"
        if dataset.is_hashed(input) and _schema_flags_given(*schema_flags):
            raise BadOptions(f"{input} is already hashed: schema options apply only to raw data")
        if start is not None and _schema_flags_given(*schema_flags):
            raise BadOptions("--model takes the schema from the model: give no schema options")
        spec = _spec(*schema_flags)
        cfg = TrainConfig.from_options(
            dim=dim, epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer, l2_linear=l2,
            l2_factors=l2_factors, patience=patience, stop_metric=metric.lower(), seed=seed, threads=threads,
            engine=engine, device=device, l1=l1, init_std=init_std, l2_all_linear=l2_all, l2_all_factors=l2_all_factors, ftrl_alpha=ftrl_alpha, ftrl_beta=ftrl_beta, lr_decay=lr_decay,
            valid_every=valid_every, holdout=holdout, refit=refit, rivals=_rivals_left(ctx, rivals),
            refits=refits,
        ).check()
    if output is None:
        raise BadOptions("give the model file to write with -o/--output")
    if checkpoint_every is not None and checkpoint_every <= 0:
        raise BadOptions(f"--checkpoint-every must be a positive number of seconds, got {checkpoint_every}")
    out, ckpt = _train_outputs(output, checkpoint, inputs=[input, valid, start, resume], force=force)
    if json_out and out.stream and out.path is None:
        raise BadOptions("-o - and --json both write to stdout: give one of them")
    if checkpoint_every is not None and ckpt is None:
        raise BadOptions(f"--checkpoint-every: -o {output} is not a file, so there is no default checkpoint; give --checkpoint FILE")
    if items is not None:
        drawing = _given(ctx, {"negatives": "--negatives", "pool": "--pool", "sampling": "--sampling"})
        if drawing and loss in ("als", "softmax"):
            raise BadOptions(f"{', '.join(sorted(drawing))}: --loss {loss} draws no negatives (every catalogue item "
                             f"is in each user's loss)")
        return _train_from_positives(input, items, out, given=_given(ctx, POSITIVES_OPTIONS), spec=spec, bits=bits, hash_seed=hash_seed, cfg=cfg, quiet=quiet,
                                     json_out=json_out, negatives=negatives, sampling=sampling, loss=loss, pool=pool, unobserved=unobserved,
                                     others=(start, resume, valid, valid_fraction, min_count, distributed.launched()))
    warm = load(start) if start is not None else None
    if warm is not None and "dim" not in _given(ctx, {"dim": "dim"}):  # (a model of merged refits has 2x --dim)
        cfg = cfg.with_options(dim=warm.weights.dim)
    replicas = sync = None
    if distributed.launched():
        if resume is not None or checkpoint_every is not None:
            raise BadOptions("--resume and --checkpoint-every are for single-process training, not under torchrun")
        cfg, sync = _replica_sync(cfg, threads, sync_every)
        replicas = sync.replicas
    lead = replicas is None or replicas.rank == 0  # only rank 0 writes and talks
    show = not quiet and lead
    progress = TrainProgress() if show else NullProgress()
    stop = _signals
    try:
        with progress:
            model, result = train_model(
                input, spec=spec, hashing=_hashing(bits, hash_seed) if base is None else None, cfg=cfg,
                valid=valid, valid_fraction=valid_fraction, progress=progress, log=_err if lead else _quiet, start=warm,
                resume=base, output=str(output), sync=sync, min_count=min_count if resume is None else None,
                checkpoints=CheckpointPlan(ckpt, checkpoint_every, stop.requested if replicas is None else None),
            )
        stop.training_done()
    except Interrupted as e:
        where = (f"checkpoint written to {ckpt.name}; resume with: fmctr train --resume {ckpt.name}" if ckpt is not None
                 else f"no checkpoint (-o {output} is not a file; --checkpoint FILE keeps one)")
        _err(f"error: {e}; {where}")
        raise typer.Exit(code=128 + stop.signal) from None
    finally:
        if replicas is not None:
            replicas.close()
    if not lead:
        return
    save(model, out)
    if ckpt is not None and not ckpt.stream and (checkpoint_every is not None or resume is not None):
        ckpt.path.unlink(missing_ok=True)  # superseded by the model
    if resume is not None:
        resume.unlink(missing_ok=True)
    if show:
        if stderr.is_terminal:  # (off a terminal the epoch lines already said it)
            stderr.print(history_table(result.history, result.best_epoch))
        best = f", best epoch {result.best_epoch}" if valid or valid_fraction else ""
        stderr.print(f"wrote {output} ({result.rows:,} rows, {len(result.history)} epoch(s){best})", highlight=False)
    if json_out:
        _print_data(json.dumps(_json_safe(model.training)))


# train's options that training from positives gives defaults of its own: CLI name -> config name
POSITIVES_OPTIONS = {"dim": "dim", "lr": "lr", "init_std": "init_std", "l2": "l2_linear", "l2_factors": "l2_factors",
                     "l2_all_factors": "l2_all_factors", "refits": "refits"}


# Each rival of the defaults (fmctr.training.selection.RIVALS) and the options that, given, rule it out
RIVAL_OPTIONS = {"l2": ("l2_factors", "l2_all_factors"), "l2_linear": ("l2",), "rate": ("lr",), "linear": ("dim",),
                 "exact": ("numeric_mode",)}


def _rivals_left(ctx: typer.Context, rivals: bool) -> list[str]:
    """The rivals of the defaults whose options the command line leaves alone (even an
    option set to its default value rules its rival out)."""
    given = _given(ctx, {name: name for names in RIVAL_OPTIONS.values() for name in names})
    return [rival for rival, names in RIVAL_OPTIONS.items() if rivals and not given & set(names)]


def _given(ctx: typer.Context, names: dict[str, str]) -> frozenset[str]:
    """The config names of the options set on the command line (even to their default)."""
    return frozenset(config for option, config in names.items()
                     if ctx.get_parameter_source(option).name not in ("DEFAULT", "DEFAULT_MAP"))


def _train_from_positives(input, items, out, *, given, spec, bits, hash_seed, cfg, quiet, json_out, negatives, sampling, loss,
                          pool, unobserved, others) -> None:
    from fmctr.commands.positives import train_from_positives
    from fmctr.commands.progress import TrainProgress, stderr
    from fmctr.models.modelfile import save
    from fmctr.training.loop import NullProgress

    if any(o not in (None, False) for o in others):
        raise BadOptions("--items (training from positives) takes no --model, --resume, --valid, --valid-fraction or "
                         "--min-count, and does not run under torchrun")
    names = {"logistic": "logloss", "bpr": "BPR loss", "softmax": "softmax loss", "als": "squared loss"}
    progress = NullProgress() if quiet else TrainProgress(loss=names.get(loss, "loss"), rated=loss != "als")
    with progress:
        model, result = train_from_positives(input, items, spec=spec, hashing=_hashing(bits, hash_seed), cfg=cfg,
                                             negatives=negatives, sampling=sampling, loss=loss, pool=pool,
                                             unobserved=unobserved, progress=progress,
                                             log=_err, given=given)
    save(model, out)
    if not quiet:
        stderr.print(f"wrote {out.name} ({result.rows:,} rows a pass, {len(result.history)} epoch(s))", highlight=False)
    if json_out:
        _print_data(json.dumps(_json_safe(model.training)))


def _train_outputs(output: Path, checkpoint: Optional[Path], *, inputs: list, force: bool):
    """The model file and the checkpoint, checked before any data is read. A model
    written through a stream (-, a FIFO, /dev/null) has no default checkpoint: it would
    land beside a device."""
    from fmctr.atomic import check_output
    from fmctr.models.modelfile import MODEL_FILE

    out = check_output(output, MODEL_FILE, inputs=inputs, force=force)
    if checkpoint is None and out.stream:
        return out, None
    # The checkpoint of a resumed run may replace the one it resumes from (not an input here).
    ckpt = check_output(checkpoint or Path(f"{output}.ckpt"), MODEL_FILE, inputs=inputs[:-1], force=force)
    if not ckpt.stream and ckpt.path == out.path:
        raise BadOptions(f"--checkpoint {ckpt.name} is the model file -o {output}: give another")
    return out, ckpt


def _replica_sync(cfg, threads: int | None, sync_every: int):
    """Under torchrun: this rank's replica sync, and the cores shared among the ranks."""
    from fmctr.models.runtime import resolve_device
    from fmctr.training import distributed

    if sync_every < 1:
        raise BadOptions(f"--sync-every must be at least 1, got {sync_every}")
    if threads is None:  # share the cores among this machine's ranks
        cfg = cfg.with_options(threads=max(1, (os.cpu_count() or 1) // distributed.local_world()))
        _use_threads(cfg.threads)
    return cfg, distributed.ReplicaSync(distributed.Replicas(resolve_device(cfg.engine, cfg.device)[1]), sync_every)


@app.command()
@errors_to_exit
def tune(
    input: InputArg = "-",
    valid: Annotated[Optional[str], typer.Option(help="Validation data (raw or hashed): every trial is scored on it.  [default: the last rows of INPUT, held out as train holds them out]")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the winning model.")] = ...,
    budget: Annotated[float, typer.Option(metavar="SECONDS", help="The time to spend: no trial starts that would leave too little for the noise checks (and, without --valid, the final training).")] = 600.0,
    max_trials: Annotated[Optional[int], typer.Option(metavar="N", help="Stop the search after N trials even if time is left (the noise checks run after them).")] = None,
    metric: Annotated[str, typer.Option(help="logloss or auc on the validation data ranks the trials (and stops each one early); logloss, as train's early stopping.")] = "logloss",
    min_count: Annotated[Optional[int], typer.Option(metavar="N", help="As for train.", rich_help_panel=SCHEMA)] = None,
    preset: Preset = None,
    schema: SchemaFile = None,
    label: Label = None,
    categorical: Categorical = None,
    numeric: Numeric = None,
    multi: Multi = None,
    ignore: Ignore = None,
    sep: Sep = None,
    numeric_mode: NumericMode = None,
    row_norm: RowNorm = None,
    format: Format = None,
    bits: Bits = None,
    hash_seed: HashSeed = 0,
    optimizer: Annotated[str, typer.Option(help="The optimizer of the defaults (the search tries the others too).", rich_help_panel=TRAIN)] = "adagrad",
    seed: Annotated[int, typer.Option(help="Seed of every trial (the noise checks add seed+1, seed+2) and of the search's random moves.", rich_help_panel=TRAIN)] = 0,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads for hashing and scoring; every trial trains on one, so that it is repeatable.  [default: all cores]")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the trials and the outcome as JSON on stdout.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No table.")] = False,
    force: Force = False,
) -> None:
    """Search the rate, initial scale, dim, L2, batch size and optimizer; write the winner.

    The data is hashed once. Trials start from the defaults and move one setting at a
    time (--lr x0.1/0.3/3/10 of its default, --init-std 0.001/0.03/0.1, --dim 0/4/16/32,
    touch L2 x0/0.1/10, --l2-all-factors 0/1e-4/1e-3, --l2-all 1e-4, batch size
    x1/4, 4, 16, the other optimizers), combine the moves that helped, then keep moving
    around the best until --budget is spent. Each trial trains on one thread with the
    same seed and stops early on --valid, or without it on the last rows of INPUT.
    The defaults and the best then run with two more seeds, without --valid each on
    held-out rows of its own (the shares before the search's): the best is written
    only if it beats the defaults on each of them (with --valid: by more than the
    seeds' spread); without --valid the winner's settings train the final model on
    every row, as `fmctr train` does."""
    _use_threads(threads)
    from fmctr.atomic import check_output
    from fmctr.models.modelfile import MODEL_FILE, save
    from fmctr.commands.progress import stderr, trials_table
    from fmctr.training.config import TrainConfig
    from fmctr.commands.tune import tune as run

    out = check_output(output, MODEL_FILE, inputs=[input, valid], force=force)
    if json_out and out.stream and out.path is None:
        raise BadOptions("-o - and --json both write to stdout: give one of them")
    spec = _spec(preset, schema, label, categorical, numeric, multi, ignore, sep, numeric_mode, format, row_norm=row_norm)
    # (rivals: only the data's, which tune tries before its search, unless --numeric-mode is given)
    base = TrainConfig.from_options(optimizer=optimizer, seed=seed, rivals=[] if numeric_mode is not None else ["exact"])

    def show(trial) -> None:
        if not quiet:
            block = f" (held-out block {trial.block})" if trial.block else ""
            stderr.print(f"trial {trial.number} {trial.flags}{block}: valid AUC {trial.valid.get('auc', float('nan')):.4f}, "
                         f"logloss {trial.valid.get('logloss', float('nan')):.4f}, {trial.epochs} epochs, "
                         f"{trial.seconds:.0f}s" + (f" ({trial.error})" if trial.error else ""), highlight=False)

    outcome = run(input, valid, spec=spec, hashing=_hashing(bits, hash_seed), base=base, budget_s=budget,
                  metric=metric.lower(), min_count=min_count, max_trials=max_trials, log=_err, on_trial=show)
    outcome.model.training["tune"] = {"options": outcome.train_flags, "trials": len(outcome.trials),
                                      "winner": outcome.winner.number, "summary": outcome.summary()}
    save(outcome.model, out)
    if not quiet:
        stderr.print(trials_table(outcome.trials, outcome.winner.number))
        stderr.print(outcome.summary(), highlight=False)
        stderr.print(f"the same with train: fmctr train INPUT{' --valid VALID' if valid is not None else ''} "
                     f"{outcome.train_flags}", highlight=False)
        stderr.print(f"wrote {output}", highlight=False)
    if json_out:
        _print_data(json.dumps(_json_safe(outcome.to_json())))


@app.command("eval")
@errors_to_exit
def eval_cmd(
    input: InputArg = "-",
    model: ModelOpt = ...,
    json_out: Json = False,
    bins: Annotated[int, typer.Option(help="Bins of the calibration table (equal numbers of rows, by predicted probability).")] = 10,
    plot: Annotated[Optional[Path], typer.Option(metavar="FILE", help="Also draw the ROC curve and the calibration curve into this .png, .pdf or .svg file (needs matplotlib: pip install 'fmctr[plot]').")] = None,
    threads: Threads = None,
    device: Device = "auto",
    allow_missing: AllowMissing = False,
    format: Annotated[Optional[str], typer.Option("--format", help="Input format, if not the model's or recognisable from the data: csv, tsv, criteo, parquet, libsvm, libffm.")] = None,
    force: Force = False,
    ranking: Annotated[bool, typer.Option("--ranking", help="Recall metrics instead: each test user's top K over the whole --items catalogue against their held-out items (rows labelled 1, or every row without a label): precision, recall, NDCG, MAP and hit rate at K, MRR and AUC (definitions in the README).", rich_help_panel="Ranking")] = False,
    items: Annotated[Optional[str], typer.Option("--items", help="With --ranking: the catalogue.", rich_help_panel="Ranking")] = None,
    exclude: Annotated[Optional[str], typer.Option(metavar="SEEN", help="With --ranking: (user id, item id) pairs left out of the ranking, e.g. the training data.", rich_help_panel="Ranking")] = None,
    k: Annotated[int, typer.Option("-k", help="With --ranking: the K of the metrics.", rich_help_panel="Ranking")] = 10,
    item_id: Annotated[Optional[str], typer.Option(metavar="COL", help="With --ranking: the item id column.  [default: the model's first --item column]", rich_help_panel="Ranking")] = None,
    user_id: Annotated[Optional[str], typer.Option(metavar="COL", help="With --ranking: the user id column.  [default: the model's first --user column]", rich_help_panel="Ranking")] = None,
) -> None:
    """Report AUC, logloss, normalized entropy and calibration on labelled data.

    The calibration table cuts the rows, sorted by predicted probability, into bins
    of equal size and compares each bin's mean prediction with its observed rate.
    With --ranking: recall metrics over a catalogue instead."""
    _use_threads(threads)
    if ranking or items is not None:
        return _eval_ranking(input, model, items, exclude, k, item_id, user_id, json_out)
    from fmctr.atomic import check_output

    with collector_paused():
        from fmctr.commands.scoring import evaluate_model, load_for_scoring

    target = None
    if plot is not None:
        from fmctr.commands.plot import PLOT

        target = check_output(plot, PLOT, inputs=[input, model], force=force)
    m = load_for_scoring(model, input)
    metrics = evaluate_model(input, m, log=_err, device=device, bins=bins, plot=target, allow_missing=allow_missing,
                             format=format)
    if json_out:
        _print_data(json.dumps(_json_safe(metrics)))
        return
    from fmctr.commands.progress import metrics_table, reliability_table, stderr  # (rich: only for the tables)

    stderr.print(metrics_table(metrics))
    stderr.print(reliability_table(metrics["reliability"]))
    if plot is not None:
        stderr.print(f"wrote {plot}", highlight=False)


def _eval_ranking(input, model, items, exclude, k, item_id, user_id, json_out) -> None:
    from fmctr.commands import recall as core
    from fmctr.commands.progress import stderr
    from fmctr.models.modelfile import load

    if items is None:
        raise BadOptions("--ranking needs the catalogue: give --items")
    m = load(model, training_state=False)
    catalogue = core.load_catalogue(items, m, item_id=item_id)
    item_id = item_id or m.schema.item[0]
    user_id = user_id or (m.schema.user[0] if m.schema.user else None)
    if user_id is None:
        raise BadOptions("--ranking needs the users' id column: give --user-id")
    seen = core.seen_positions(core.read_seen(exclude, user_id, item_id), catalogue) if exclude else None
    metrics = core.evaluate_ranking(input, catalogue, m, k=k, user_id=user_id, item_id=item_id, seen=seen)
    if json_out:
        _print_data(json.dumps(_json_safe(metrics)))
        return
    names = {"precision": f"precision@{k}", "recall": f"recall@{k}", "ndcg": f"NDCG@{k}", "map": f"MAP@{k}",
             "hit_rate": f"hit rate@{k}", "mrr": "MRR", "auc": "AUC"}
    for key, name in names.items():
        stderr.print(f"{name:>14}  {metrics[key]:.4f}", highlight=False)
    stderr.print(f"{metrics['users']:,} users with held-out items, {metrics['catalogue']:,} items, "
                 f"{metrics['excluded']:,} pairs excluded", highlight=False)


@app.command()
@errors_to_exit
def predict(
    input: InputArg = "-",
    model: ModelOpt = ...,
    output: Annotated[str, typer.Option("--output", "-o", help="CSV file to write, or - for stdout.")] = "-",
    keep: Annotated[Optional[list[str]], typer.Option(metavar="COLS", help="Input columns to copy into the output before the probability (comma-separated, repeatable).")] = None,
    threads: Threads = None,
    device: Device = "auto",
    allow_missing: AllowMissing = False,
    precision: Annotated[Optional[int], typer.Option(metavar="N", help="Write probabilities with N decimal places.  [default: as many as float64 needs, up to 17 significant digits]")] = None,
    format: Annotated[Optional[str], typer.Option("--format", help="Input format, if not the model's or recognisable from the data: csv, tsv, criteo, parquet, libsvm, libffm.")] = None,
    explain: Annotated[Optional[int], typer.Option(metavar="N", help="Also write each row's logit, its N largest terms (bias, field=token, field=token*field=token) with their values, and the rest: they sum to the logit.")] = None,
    force: Force = False,
) -> None:
    """Write click probabilities as CSV, one line per input row, in input order."""
    _use_threads(threads)
    from fmctr.atomic import check_output

    with collector_paused():
        from fmctr.commands.scoring import PREDICTIONS, load_for_scoring, predict as run

    out = check_output(output, PREDICTIONS, inputs=[input, model], force=force)
    m = load_for_scoring(model, input)
    run(input, m, out, keep=_names(keep), log=_err, device=device, allow_missing=allow_missing, precision=precision,
        format=format, explain=explain)


@app.command()
@errors_to_exit
def info(
    model: Annotated[str, typer.Argument(metavar="MODEL", help="Model file (or checkpoint) written by fmctr.")],
    json_out: Json = False,
    verify: Annotated[bool, typer.Option("--verify", help="Also read the weights and check the checksum (slower on big models).")] = False,
) -> None:
    """What a model file holds: format, schema, hashing, kind, training options and history, sizes, checksum.

    Reads the header only (not the weights), so it answers at once on a model of any size."""
    from fmctr.commands.info import model_info

    found = model_info(model, verify=verify)
    if json_out:
        _print_data(json.dumps(_json_safe(found)))
        return
    from rich.console import Console

    console = Console(stderr=True, soft_wrap=not sys.stderr.isatty())
    from fmctr.commands.views import info_tables

    for table in info_tables(found):
        console.print(table)


@app.command("inspect")
@errors_to_exit
def inspect_cmd(
    model: Annotated[str, typer.Argument(metavar="MODEL", help="Model file written by fmctr.")],
    data: Annotated[Optional[str], typer.Option(metavar="FILE", help="Raw data (a file or -) read as the model reads it, to name the hashed indices and weigh features and pairs by how often they occur.")] = None,
    top: Annotated[int, typer.Option(metavar="N", help="How many features and pairs to list.")] = 20,
    rows: Annotated[int, typer.Option(metavar="N", help="Read at most N rows of --data.")] = 1_000_000,
    json_out: Annotated[bool, typer.Option("--json", help="Print everything as one JSON object on stdout.")] = False,
    plot: Annotated[Optional[Path], typer.Option(metavar="FILE", help="Draw the field x field interaction strengths as a heatmap (.png, .pdf, .svg; needs matplotlib).")] = None,
    export_text: Annotated[Optional[str], typer.Option(metavar="FILE", help="Write the weights as tab-separated text, one line per stored index, with names from --data (- for stdout).")] = None,
    threads: Threads = None,
    allow_missing: AllowMissing = False,
    format: Annotated[Optional[str], typer.Option("--format", help="Format of --data, if not the model's or recognisable.")] = None,
    force: Force = False,
) -> None:
    """The features and interactions a model leans on, by name; the field x field interaction strengths; hash-space health."""
    _use_threads(threads)
    from fmctr.atomic import check_output, writing
    from fmctr.commands import inspection
    from fmctr.models.modelfile import load

    if json_out and export_text == "-":
        raise BadOptions("--export-text - and --json both write to stdout: give one of them")
    text_out = check_output(export_text, inspection.EXPORT, inputs=[model, data], force=force) if export_text else None
    if plot is not None:
        from fmctr.commands.plot import PLOT, pyplot

        plot = check_output(plot, PLOT, inputs=[model, data], force=force)
        pyplot(plot)  # fail before reading if it cannot be drawn
    m = load(model, training_state=False)
    seen = inspection.read_data(data, m, limit=rows, log=_err, allow_missing=allow_missing, format=format) \
        if data is not None else None
    found = inspection.inspect_model(m, seen, top=top)
    if text_out is not None:
        with writing(text_out) as out:
            inspection.export_text(m, out, seen)
    if plot is not None and found.get("fields"):
        from fmctr.commands.plot import write_heatmap

        write_heatmap(plot, found["fields"]["fields"], found["fields"]["matrix"], f"{model}: field x field interactions")
    if json_out:
        _print_data(json.dumps(_json_safe(found)))
    elif export_text != "-":
        from fmctr.commands.progress import stderr
        from fmctr.commands.views import inspect_tables

        for table in inspect_tables(found):
            stderr.print(table, highlight=False)


@app.command("recall")
@errors_to_exit
def recall_cmd(
    users: Annotated[str, typer.Argument(metavar="USERS", help="Users (their user and context columns), or - for stdin.")] = "-",
    items: Annotated[Optional[str], typer.Option("--items", help="The catalogue: one row per item with the model's item columns.")] = None,
    model: ModelOpt = ...,
    k: Annotated[int, typer.Option("-k", help="Candidates per user.")] = 10,
    keep: Annotated[Optional[list[str]], typer.Option(metavar="COLS", help="User columns to copy into each candidate line (comma-separated, repeatable).")] = None,
    exclude: Annotated[Optional[str], typer.Option(metavar="SEEN", help="File of (user id, item id) pairs to leave out, e.g. the training interactions.")] = None,
    with_features: Annotated[bool, typer.Option("--with-features", help="Write each candidate's user and item feature columns, so that `fmctr predict -m RANK_MODEL` scores the output directly.")] = False,
    item_id: Annotated[Optional[str], typer.Option(metavar="COL", help="The catalogue's id column.  [default: the model's first --item column]")] = None,
    user_id: Annotated[Optional[str], typer.Option(metavar="COL", help="The users' id column, which --exclude's pairs name.  [default: the model's first --user column]")] = None,
    export_items: Annotated[Optional[Path], typer.Option(metavar="FILE", help="Instead of candidates: write the item vectors with their ids (.parquet, else CSV).")] = None,
    export_users: Annotated[Optional[Path], typer.Option(metavar="FILE", help="Instead of candidates: write the users' vectors and constants with their ids (or --keep columns).")] = None,
    output: Annotated[str, typer.Option("--output", "-o", help="CSV file to write, or - for stdout.")] = "-",
    precision: Annotated[Optional[int], typer.Option(metavar="N", help="Write scores with N decimal places.")] = None,
    threads: Threads = None,
    force: Force = False,
) -> None:
    """Each user's top-K items of the catalogue, exactly, as CSV: the --keep columns,
    the item id, rank and score (the FM's logit of the pair; sigmoid(score) is what
    predict gives). The model needs --item (and --user) from training."""
    _use_threads(threads)
    from fmctr.atomic import check_output
    from fmctr.commands import recall as core
    from fmctr.models.modelfile import load

    m = load(model, training_state=False)
    core.towers_of(m)
    item_id = item_id or m.schema.item[0]
    user_id = user_id or (m.schema.user[0] if m.schema.user else None)
    inputs = [users, items, model, exclude]
    if export_items is not None or export_users is not None:
        targets = [check_output(p, core.VECTORS, inputs=inputs, force=force) if p is not None else None
                   for p in (export_items, export_users)]
        if export_items is not None:
            if items is None:
                raise BadOptions("--export-items needs the catalogue: give --items")
            core.write_table(core.item_vectors_frame(core.load_catalogue(items, m, item_id=item_id), item_id), targets[0])
        if export_users is not None:
            ids = _names(keep) or ([user_id] if user_id else [])
            core.write_table(core.user_vectors_frame(users, m, id_columns=ids), targets[1])
        return
    if items is None:
        raise BadOptions("give the catalogue with --items")
    out = check_output(output, core.CANDIDATES, inputs=inputs, force=force)
    catalogue = core.load_catalogue(items, m, item_id=item_id, features=with_features)
    seen = None
    if exclude is not None:
        if user_id is None:
            raise BadOptions("--exclude needs the users' id column: give --user-id")
        seen = core.seen_positions(core.read_seen(exclude, user_id, item_id), catalogue)
    plan = core.RecallPlan(k, tuple(_names(keep)), user_id, seen, with_features, precision)
    core.recall(users, catalogue, m, out, plan, item_id=item_id)


def _version(value: bool) -> None:
    if value:
        print(f"fmctr {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[bool, typer.Option("--version", "-V", callback=_version, is_eager=True, help="Show the version and exit.")] = False,
) -> None:
    pass


def _plain_plan(args: list[str]):
    """The command `args` name and its keyword arguments, when fmctr.commands.plain_args
    reads them plainly: then the typer app need not be built (typer checks the command's
    parameters through pydantic, about 0.1 s, longer than a short predict's work)."""
    name = args[0] if args else None
    for command in app.registered_commands:
        if (command.name or command.callback.__name__.lower().replace("_", "-")) == name:
            from fmctr.commands import plain_args

            found = plain_args.plan(command.callback, typer.models.ArgumentInfo, typer.models.OptionInfo)
            kwargs = plain_args.parse(found, args[1:]) if found is not None else None
            return (command.callback, kwargs) if kwargs is not None else None
    return None


def _run_plain(args: list[str]) -> int | None:
    """Run a plainly given command directly, with the exit code typer would give;
    None for anything else (--help, a typo, an odd value, shell completion asking),
    which goes the usual way."""
    if any(k.startswith("_") and k.endswith("_COMPLETE") for k in os.environ):
        return None
    plain = _plain_plan(args)
    if plain is None:
        return None
    command, kwargs = plain
    try:
        code = command(**kwargs)
    except typer.Exit as e:
        return e.exit_code
    return code if isinstance(code, int) else 0


def _exit(code: int):
    """End the process with `code`. After a signal (128 + N) the command has already
    cleaned up; Python's own shutdown is skipped, since it unwinds a daemon reading
    thread that may sit inside C++ (pyarrow reading stdin), which can abort the process
    ("FATAL: exception not rethrown") instead of exiting with the signal's code."""
    if code >= 128:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError, AttributeError):  # closed, gone, or None
                pass
        os._exit(code)
    sys.exit(code)


def main() -> None:
    """Run the CLI; click's usage errors become one `error:` line and exit 2."""
    from typer._click import exceptions as click_errors  # (typer vendors click)

    importing.whole_process()
    try:
        plain = _run_plain(sys.argv[1:])
    except KeyboardInterrupt:  # before the command's own handling starts, as click's Abort below
        _err("error: interrupted")
        _exit(130)
    if plain is not None:
        _exit(plain)
    try:
        code = app(standalone_mode=False)
    except click_errors.NoArgsIsHelpError as e:
        print(e.ctx.get_help() if e.ctx else "")
        sys.exit(0)
    except click_errors.UsageError as e:
        where = f"fmctr {e.ctx.info_name} --help" if e.ctx is not None and e.ctx.parent is not None else "fmctr --help"
        _err(f"error: {e.format_message()} (see {where})")
        sys.exit(USAGE_ERROR)
    except click_errors.ClickException as e:
        _err(f"error: {e.format_message()}")
        sys.exit(1)
    except typer.Abort:
        _err("error: interrupted")
        _exit(130)
    _exit(code if isinstance(code, int) else 0)
