"""The experiment spec as typed, frozen pydantic models, one per section, with a one-line doc per field.

A run spec has the sections ``name``, ``seed``, ``data``, ``model``, ``train`` and ``tracking``; a sweep spec adds
``sweep``. The models check everything that can be checked without reading the corpus; checks that need the data live
in :mod:`harness.data.checks`. This module imports neither torch nor the data layer, so validation is cheap.
"""

from __future__ import annotations

import difflib
import re
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

__all__ = [
    "CheckpointSpec",
    "DataSpec",
    "EarlyStoppingSpec",
    "EvalSpec",
    "FreezeBlocks",
    "InitSpec",
    "ModelSpec",
    "ObjectiveSpec",
    "OptimizerSpec",
    "ParamRange",
    "PrunerSpec",
    "ScheduleSpec",
    "Spec",
    "SweepSpec",
    "TaskSpec",
    "TokenizerSpec",
    "TrackingSpec",
    "TrainSpec",
    "estimate_parameters",
    "is_named_corpus",
]

# Refuse models that could not possibly be allocated on a workstation, before any allocation happens.
MAX_PARAMETERS = 20_000_000_000

#: A cross-field error names the field it belongs to with this prefix; the loader moves it onto that field's path.
FIELD_MARK = re.compile(r"^@([A-Za-z0-9_.]+): (.*)$", re.S)


def _at(field: str, message: str) -> ValueError:
    """A cross-field error that belongs to ``field`` of the model being validated (see ``FIELD_MARK``)."""
    return ValueError(f"@{field}: {message}")


def is_named_corpus(corpus: str) -> bool:
    """Whether ``corpus`` names a shipped corpus (``names``, ``shakespeare/<work>``) rather than a file path."""
    return corpus == "names" or corpus.startswith("shakespeare/")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, validate_default=True)


# ----------------------------------------------------------------------------------------------------------- data


class TokenizerSpec(_Model):
    """How text becomes token ids. ``char`` alone is shorthand for ``{kind: char}``."""

    kind: Literal["char", "tiktoken"] = Field("char", description="char: one id per character seen in the corpus; tiktoken: a BPE encoding")
    encoding: str | None = Field(None, description="tiktoken encoding name, e.g. cl100k_base or o200k_base (tiktoken only)")
    path: str | None = Field(None, description="a .tiktoken BPE ranks file to load instead of a packaged one (tiktoken only)")
    compact: bool = Field(False, description="remap the token ids present in the corpus to a dense range 0..n-1 (tiktoken only)")

    @model_validator(mode="before")
    @classmethod
    def _expand(cls, value: Any) -> Any:
        return cls.expand_shorthand(value)

    @staticmethod
    def expand_shorthand(value: Any) -> Any:
        """``char`` -> ``{kind: char}``; ``tiktoken:<encoding>`` -> ``{kind: tiktoken, encoding: ...}``."""
        if isinstance(value, str):
            if value.startswith("tiktoken:"):
                return {"kind": "tiktoken", "encoding": value.split(":", 1)[1]}
            return {"kind": value}
        return value

    @model_validator(mode="after")
    def _check(self) -> TokenizerSpec:
        if self.kind == "tiktoken" and not self.encoding:
            # A ranks file holds merges only; the encoding supplies the pre-tokenizer pattern and special tokens.
            raise _at("encoding", "tiktoken needs an encoding name (cl100k_base or o200k_base), also with path: "
                                  "the ranks file holds the merges, the encoding its pattern and special tokens")
        if self.kind == "char" and (self.encoding or self.path or self.compact):
            raise _at("kind", "encoding, path and compact only apply to kind: tiktoken")
        return self


class DataSpec(_Model):
    """Where the text comes from and how it is cut into training examples."""

    corpus: str | None = Field(None, description="a shipped corpus (shakespeare/<work>, names), or a UTF-8 text file, a folder of .txt/.txt.gz files or a glob (task lm)")
    max_chars: int | None = Field(None, ge=1, description="keep only this many leading characters of the corpus")
    tokenizer: TokenizerSpec = Field(TokenizerSpec(), description="char, or tiktoken with an encoding")
    sampling: Literal["windows", "random", "documents"] = Field(
        "windows", description="windows: every sliding window once per epoch; random: random windows each step; documents: one document per example"
    )
    delimiter: str = Field("\n", min_length=1, description="documents sampling: the literal between documents: a newline (one per line), "
                           "two for paragraphs, or e.g. <|endoftext|>; blank documents are skipped")
    stride: int = Field(1, ge=1, le=1_000_000, description="distance between window starts (windows sampling)")
    seq_len: int = Field(ge=2, le=65_536, description="tokens per training example (the model's context length)")
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="fraction of the corpus (its tail) held out for validation; 0 disables val")
    packing: Literal["pad", "pack"] = Field(
        "pad", description="documents sampling: pad each document to seq_len, or pack documents into one stream, separated by BOS "
        "(char) or the encoding's <|endoftext|> (tiktoken)"
    )

    @field_validator("corpus")
    @classmethod
    def _corpus_not_empty(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must name a shipped corpus or a file path")
        return value


# ----------------------------------------------------------------------------------------------------------- model


class ModelSpec(_Model):
    """GPT shape: pre-LN blocks of causal self-attention and an MLP."""

    d_model: int = Field(ge=1, le=65_536, description="embedding width")
    n_heads: int = Field(ge=1, le=1024, description="attention heads; must divide d_model")
    n_layers: int = Field(ge=1, le=1024, description="transformer blocks")
    d_ff: int = Field(ge=1, le=1_048_576, description="hidden width of each block's MLP")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout probability on embeddings, attention and MLP outputs")
    tie_weights: bool = Field(False, description="share the token embedding with the output head")
    bias: bool = Field(True, description="use biases in linear layers and layer norms")

    # Cross-field checks are field validators on the later field (reading earlier ones from info.data), so they
    # still run, and are reported together, when some other field of the section is invalid.
    @field_validator("n_heads")
    @classmethod
    def _divides(cls, n_heads: int, info: ValidationInfo) -> int:
        d_model = info.data.get("d_model")
        if d_model is not None and d_model % n_heads:
            raise ValueError(f"must divide d_model ({d_model} is not divisible by {n_heads})")
        return n_heads


# ----------------------------------------------------------------------------------------------------------- train


class OptimizerSpec(_Model):
    """The optimizer and its settings."""

    name: Literal["adamw", "adam", "sgd"] = Field("adamw", description="adamw, adam or sgd")
    lr: float = Field(gt=0.0, le=100.0, description="peak learning rate")
    weight_decay: float = Field(0.0, ge=0.0, le=10.0, description="weight decay (decoupled for adamw, L2 for adam and sgd)")
    betas: tuple[Annotated[float, Field(ge=0.0, lt=1.0)], Annotated[float, Field(ge=0.0, lt=1.0)]] = Field(
        (0.9, 0.999), description="Adam moment decay rates"
    )
    eps: float = Field(1e-8, gt=0.0, le=1.0, description="Adam denominator epsilon")
    momentum: float = Field(0.0, ge=0.0, lt=1.0, description="SGD momentum (sgd only)")
    implementation: Literal["auto", "foreach", "fused"] = Field(
        "auto", description="torch's update kernels: foreach, or fused (faster, rounds differently); auto: fused on "
        "CUDA, foreach elsewhere (the README's CPU figures are foreach's)"
    )


class ScheduleSpec(_Model):
    """How the learning rate moves over the run."""

    name: Literal["constant", "linear", "warmup_cosine"] = Field(
        "constant", description="constant; linear decay to min_lr; warmup_cosine: linear warmup then cosine decay to min_lr"
    )
    warmup_steps: int = Field(0, ge=0, description="steps of linear warmup from lr/warmup_steps to lr")
    min_lr: float = Field(0.0, ge=0.0, description="learning rate at the end of the decay")


class EvalSpec(_Model):
    """When and how much to evaluate. Neither every_steps nor every_epochs: once per epoch, or 10 times per run."""

    every_steps: int | None = Field(None, ge=1, description="evaluate every N optimizer steps")
    every_epochs: int | None = Field(None, ge=1, description="evaluate at the end of every N epochs")
    batches: int = Field(10, ge=1, le=100_000, description="batches per split per evaluation (capped at the windows available)")

    @model_validator(mode="after")
    def _check(self) -> EvalSpec:
        if self.every_steps is not None and self.every_epochs is not None:
            raise _at("every_steps", "set every_steps or every_epochs, not both")
        return self


class EarlyStoppingSpec(_Model):
    """Stop when the metric has not improved for ``patience`` evaluations."""

    metric: Literal["val/loss", "train/loss_eval", "val/accuracy"] = Field(
        "val/loss", description="the evaluated metric to watch (losses: lower is better; val/accuracy, task classify: higher is better)"
    )
    patience: int = Field(ge=1, le=1_000_000, description="evaluations without improvement before stopping")
    min_delta: float = Field(0.0, ge=0.0, description="an improvement must beat the best value by more than this")
    restore_best: bool = Field(True, description="load the best weights back before the run ends")


class CheckpointSpec(_Model):
    """Periodic checkpoints. best.pt and last.pt are always kept."""

    every_steps: int | None = Field(None, ge=1, description="write a periodic checkpoint every N steps")
    every_epochs: int | None = Field(None, ge=1, description="write a periodic checkpoint every N epochs")
    keep: int | None = Field(None, ge=1, description="keep only the newest N periodic checkpoints (null keeps all)")


class TrainSpec(_Model):
    """The optimisation loop."""

    epochs: int | None = Field(None, ge=1, le=1_000_000, description="passes over the training windows (set epochs or max_steps)")
    max_steps: int | None = Field(None, ge=1, le=100_000_000, description="optimizer steps (set epochs or max_steps)")
    batch_size: int = Field(ge=1, le=1_000_000, description="examples per optimizer step")
    optimizer: OptimizerSpec = Field(description="optimizer name and settings")
    schedule: ScheduleSpec = Field(ScheduleSpec(), description="learning-rate schedule")
    clip_grad_norm: float | None = Field(None, gt=0.0, description="clip the global gradient norm to this; null = no clipping (the norm is logged either way)")
    eval: EvalSpec = Field(EvalSpec(), description="evaluation cadence and size")
    early_stopping: EarlyStoppingSpec | None = Field(None, description="stop when the watched metric stops improving")
    checkpoint: CheckpointSpec = Field(CheckpointSpec(), description="periodic checkpoint cadence")
    device: Literal["auto", "cpu", "cuda", "mps"] = Field("auto", description="auto picks cuda, then mps, then cpu")
    precision: Literal["fp32", "bf16", "auto"] = Field(
        "fp32", description="bf16: forward and loss under bf16 autocast; auto: bf16 where the device has native bf16 matmuls, else fp32"
    )
    threads: int | None = Field(None, ge=1, le=1024, description="torch intra-op threads (null: torch's default)")

    @field_validator("max_steps")
    @classmethod
    def _one_length(cls, max_steps: int | None, info: ValidationInfo) -> int | None:
        if "epochs" in info.data and (info.data["epochs"] is None) == (max_steps is None):
            raise ValueError("set exactly one of train.epochs or train.max_steps" + (", not both" if max_steps is not None else ""))
        return max_steps

    @field_validator("schedule")
    @classmethod
    def _floor_below_peak(cls, schedule: ScheduleSpec, info: ValidationInfo) -> ScheduleSpec:
        opt = info.data.get("optimizer")
        if opt is not None and schedule.min_lr > opt.lr:
            raise _at("min_lr", f"must not exceed optimizer.lr ({schedule.min_lr} > {opt.lr})")
        return schedule

    @field_validator("eval", "checkpoint")
    @classmethod
    def _epoch_cadence_needs_epochs(cls, value: EvalSpec | CheckpointSpec, info: ValidationInfo) -> Any:
        if info.data.get("max_steps") is not None and value.every_epochs is not None:
            raise _at("every_epochs", "needs train.epochs; with max_steps use every_steps")
        return value


# ----------------------------------------------------------------------------------------------------------- tracking


class TrackingSpec(_Model):
    """Where and how the run is recorded. The tracking URI comes from MLFLOW_TRACKING_URI or the project default."""

    experiment: str | None = Field(None, min_length=1, description="MLflow experiment name (default: the spec name)")
    run_name: str | None = Field(None, min_length=1, description="MLflow run name (default: the spec name)")
    tags: dict[str, str] = Field(default_factory=dict, description="extra MLflow tags")
    sample_tokens: int = Field(200, ge=0, le=100_000, description="tokens of text sampled from the final model (0 = none)")
    sample_prompt: str | None = Field(None, description="prompt for that sample (default: the corpus's first characters)")
    log_checkpoints: bool = Field(True, description="upload checkpoints as MLflow artifacts")


# ----------------------------------------------------------------------------------------------------------- sweep


class ParamRange(_Model):
    """A search space for one swept path: choices, an int range or a float range."""

    choices: list[Any] | None = Field(None, min_length=1, description="categorical values")
    int: tuple[builtins_int, builtins_int] | None = Field(None, description="[low, high] inclusive integer range")  # type: ignore[valid-type]
    float: tuple[builtins_float, builtins_float] | None = Field(None, description="[low, high] float range")  # type: ignore[valid-type]
    log: bool = Field(False, description="sample on a log scale (int and float ranges)")
    step: builtins_float | None = Field(None, gt=0, description="discretisation step (int and float ranges)")  # type: ignore[valid-type]

    @model_validator(mode="after")
    def _check(self) -> ParamRange:
        kinds = [k for k in ("choices", "int", "float") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("give exactly one of choices, int: [low, high] or float: [low, high]")
        rng = self.int if self.int is not None else self.float
        if rng is not None:
            low, high = rng
            if low > high:
                raise ValueError(f"range is inverted: low {low} > high {high}")
            if self.log and low <= 0:
                raise ValueError(f"a log range needs low > 0 (got {low})")
            if self.log and self.step is not None:
                raise ValueError("log and step cannot be combined")
            if self.int is not None and self.step is not None and not float(self.step).is_integer():
                raise ValueError(f"an int range needs a whole-number step (got {self.step})")
        elif self.log or self.step is not None:
            raise ValueError("log and step only apply to int and float ranges")
        return self

    def endpoints(self) -> list[Any]:
        """Values that every suggestion lies between (or is one of): checked against the schema before a trial runs."""
        if self.choices is not None:
            return list(self.choices)
        return list(self.int if self.int is not None else self.float)  # type: ignore[arg-type]


OBJECTIVE_METRICS = ("val/loss", "val/accuracy", "train/loss_eval", "train/loss", "train/loss_epoch")


class ObjectiveSpec(_Model):
    """What a trial is scored by."""

    metric: str = Field("val/loss", description="a logged metric: val/loss, val/accuracy (classify), train/loss_eval, train/loss or "
                        "train/loss_epoch")

    @field_validator("metric")
    @classmethod
    def _logged(cls, metric: str) -> str:
        if metric not in OBJECTIVE_METRICS:
            close = difflib.get_close_matches(metric, OBJECTIVE_METRICS, n=1)
            hint = f"; did you mean {close[0]}?" if close else f" (one of {', '.join(OBJECTIVE_METRICS)})"
            raise ValueError(f"'{metric}' is not a metric a run logs{hint}")
        return metric
    direction: Literal["minimize", "maximize"] = Field("minimize", description="minimize or maximize")
    summary: Literal["best", "last"] = Field("best", description="score a trial by the best or the last value of the metric")


class PrunerSpec(_Model):
    """Optuna pruner. A bare name (``median``) is shorthand for ``{name: median}``."""

    name: Literal["none", "median", "successive_halving", "hyperband", "percentile", "paired"] = Field(
        "none", description="which pruner; paired (with repeats): stop a configuration whose seeds are clearly worse than the best's")
    n_startup_trials: int = Field(5, ge=0, description="median/percentile: trials that finish before any pruning")
    n_warmup_steps: int = Field(0, ge=0, description="median/percentile: steps before a trial can be pruned")
    percentile: float = Field(50.0, gt=0, lt=100, description="percentile pruner: the percentile to keep")
    min_resource: int | Literal["auto"] = Field("auto", description="successive_halving/hyperband: minimum steps")
    reduction_factor: int = Field(3, ge=2, description="successive_halving/hyperband: reduction factor")
    p_threshold: float = Field(0.05, gt=0, lt=1, description="paired: the chance of stopping any configuration when none differs, over every look (spent across them)")

    @model_validator(mode="before")
    @classmethod
    def _expand(cls, value: Any) -> Any:
        return cls.expand_shorthand(value)

    @staticmethod
    def expand_shorthand(value: Any) -> Any:
        """``median`` -> ``{name: median}``."""
        return {"name": value} if isinstance(value, str) else value


class SweepSpec(_Model):
    """A study over the run spec: each trial overrides the swept paths and runs the result."""

    sampler: Literal["grid", "random", "tpe", "cmaes", "qmc"] = Field("grid", description="grid, random, tpe, cmaes or qmc")
    seed: int | None = Field(None, ge=0, description="sampler seed (default: the spec seed); each trial draws from it and its own number, so workers never collide")
    params: dict[str, Union[list[Any], ParamRange]] = Field(
        {}, description="dotted run-spec path -> a list (grid values) or a range; empty with repeats: one configuration, repeated")
    repeats: int | None = Field(None, ge=1, le=1000, description="seed runs per configuration, under the seeds seed, seed+1, ... (the same for every configuration; unset: 1)")
    seeds: list[int] | None = Field(None, min_length=1, max_length=1000, description="the seeds each configuration runs under, instead of repeats")
    objective: ObjectiveSpec = Field(ObjectiveSpec(), description="the metric a trial is scored by")
    pruner: PrunerSpec = Field(PrunerSpec(), description="stop unpromising trials early")
    n_trials: int | None = Field(None, ge=1, le=1_000_000, description="trials (with repeats: configurations) to finish (a grid defaults to its size)")
    workers: int = Field(1, ge=1, le=256, description="worker processes on this machine sharing the study; unset: chosen from the trials' size (1 for short trials)")
    storage: str | None = Field(None, description="Optuna storage URL (default: a SQLite file under studies/)")
    timeout_s: float | None = Field(None, gt=0, description="stop starting trials after this many seconds")

    @model_validator(mode="after")
    def _check(self) -> SweepSpec:
        if self.repeats is not None and self.seeds is not None:
            raise _at("seeds", "give repeats or seeds, not both (seeds fixes the list; repeats counts up from the spec's seed)")
        if self.seeds is not None:
            if any(s < 0 for s in self.seeds):
                raise _at("seeds", f"seeds must be ≥ 0 (got {self.seeds})")
            dup = sorted({s for s in self.seeds if self.seeds.count(s) > 1})
            if dup:
                raise _at("seeds", f"duplicate seeds {dup}: each seed run must differ")
        repeated = self.repeated
        if "seed" in self.params and repeated:
            raise _at("params.seed", "the seed is what repeats vary: sweep other paths, and list the seeds in sweep.seeds")
        if not self.params and not repeated:
            raise _at("params", "must sweep at least one path (or repeat one configuration: repeats: N)")
        if not self.params and self.sampler != "grid":
            raise _at("sampler", f"a repeated run without params has one configuration; the {self.sampler} sampler has nothing to pick")
        if self.pruner.name == "paired" and self.n_seeds < 2:
            raise _at("pruner.name", "the paired rule compares configurations seed by seed: set repeats: N (N ≥ 2) or seeds")
        if repeated and self.pruner.name not in ("none", "paired"):
            raise _at("pruner.name", f"{self.pruner.name} compares single runs step by step; with repeats a configuration is "
                                     "stopped by the paired rule across its seeds: use pruner: paired (or none)")
        for path, space in self.params.items():
            if isinstance(space, list):
                if not space:
                    raise _at(f"params.{path}", "an empty grid: give at least one value")
                if len({repr(v) for v in space}) != len(space):
                    raise _at(f"params.{path}", f"duplicate grid values in {space}")
            elif self.sampler == "grid" and space.choices is None:
                raise _at(f"params.{path}", "the grid sampler needs a list of values or choices, not a range")
        return self

    @property
    def n_seeds(self) -> int:
        """Seed runs per configuration."""
        return len(self.seeds) if self.seeds is not None else (self.repeats or 1)

    def seed_list(self, seed: int) -> list[int]:
        """The seeds every configuration runs under: ``seeds``, else ``seed, seed+1, ...`` (``repeats`` of them)."""
        return list(self.seeds) if self.seeds is not None else [seed + i for i in range(self.n_seeds)]

    @property
    def repeated(self) -> bool:
        """Each configuration runs under several seeds (or an explicit seed list)."""
        return self.n_seeds > 1 or self.seeds is not None

    def grid_size(self) -> int:
        size = 1
        for space in self.params.values():
            size *= len(space) if isinstance(space, list) else len(space.choices or [])
        return size


# ----------------------------------------------------------------------------------------------------------- finetuning


class InitSpec(_Model):
    """Start from a trained model's weights instead of random ones (its tokenizer and shape come with it)."""

    model_config = ConfigDict(serialize_by_alias=True)

    source: str = Field(alias="from", min_length=1, description="a run id (or a unique prefix), a sweep's parent run id (its best "
                        "trial), an experiment name (its best finished run), an MLflow model URI (models:/<id>), or a path to a .pt checkpoint")
    checkpoint: Literal["best", "last"] = Field("best", description="which of the source run's checkpoints")


class FreezeBlocks(_Model):
    """Train the head, the final layer norm and the last ``last_n_blocks`` transformer blocks; freeze the rest."""

    last_n_blocks: int = Field(ge=0, le=1024, description="transformer blocks (counted from the top) that keep training")


DEFAULT_TEMPLATE = "Instruction: {instruction}\n{input_line}Response: "
SHIPPED_DATASETS = ("names_by_sex", "play_lines", "play_instruct")  # built by harness.data.datasets


class TaskSpec(_Model):
    """What the model learns. ``classify`` alone is shorthand for ``{kind: classify}``."""

    kind: Literal["lm", "classify", "instruct"] = Field(
        "lm", description="lm: the next token of a corpus; classify: a label per text, from the last token's hidden state; "
        "instruct: the responses of instruction/response pairs (prompt tokens are not graded)"
    )
    dataset: str | None = Field(None, description="classify/instruct: a shipped dataset (names_by_sex, play_lines, play_instruct) "
                                "or a path to a .csv, .tsv or .jsonl file")
    text_field: str = Field("text", min_length=1, description="classify: the column (or JSON key) holding the text")
    label_field: str = Field("label", min_length=1, description="classify: the column (or JSON key) holding the label")
    template: str = Field(DEFAULT_TEMPLATE, description="instruct: the prompt before each response; {instruction} and {input_line} "
                          "(the input and a newline, or nothing) are filled in")
    freeze: Literal["all_but_head", "none"] | FreezeBlocks | None = Field(
        None, description="all_but_head, none, or {last_n_blocks: k}; default: all_but_head for classify with init, else none"
    )

    @model_validator(mode="before")
    @classmethod
    def _expand(cls, value: Any) -> Any:
        return cls.expand_shorthand(value)

    @staticmethod
    def expand_shorthand(value: Any) -> Any:
        """``classify`` -> ``{kind: classify}``."""
        return {"kind": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check(self) -> TaskSpec:
        if self.kind == "lm" and self.dataset is not None:
            raise _at("dataset", "task lm trains on data.corpus; a dataset is for classify and instruct")
        if self.kind != "lm" and self.dataset is None:
            raise _at("dataset", f"task {self.kind} needs a dataset (a shipped one or a .csv/.tsv/.jsonl file)")
        if self.kind == "instruct" and "{instruction}" not in self.template:
            raise _at("template", "must contain {instruction}")
        return self

    @property
    def dataset_is_shipped(self) -> bool:
        return self.dataset in SHIPPED_DATASETS



# ----------------------------------------------------------------------------------------------------------- spec


class Spec(_Model):
    """One experiment. With a ``sweep`` section it is a sweep over copies of itself."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$", description="experiment name: letters, digits, _ . -")
    seed: int = Field(1337, ge=0, lt=2**63, description="seed for weights, dropout and batch order")
    init: InitSpec | None = Field(None, description="start from a trained run's weights (finetuning); absent: random weights")
    task: TaskSpec = Field(TaskSpec(), description="what is learned: lm, classify or instruct")
    data: DataSpec = Field(description="corpus, tokenizer, split and sampling")
    model: ModelSpec | None = Field(None, description="GPT shape (required unless init gives it)")
    train: TrainSpec = Field(description="optimisation loop")
    tracking: TrackingSpec = Field(TrackingSpec(), description="MLflow experiment, run name and tags")
    sweep: SweepSpec | None = Field(None, description="Optuna sweep over this spec (absent for a single run)")

    @field_validator("data")
    @classmethod
    def _data_fits_the_task(cls, data: DataSpec, info: ValidationInfo) -> DataSpec:
        task = info.data.get("task")
        if task is None or task.kind == "lm":
            if data.corpus is None:
                raise _at("corpus", "required field is missing (task lm trains on a corpus)")
            if data.delimiter != "\n" and data.sampling != "documents":
                raise _at("delimiter", "only applies to sampling: documents")
            return data
        # classify/instruct: one example per dataset row; the corpus options do not apply
        for name in ("corpus", "max_chars", "sampling", "stride", "packing", "delimiter"):
            if getattr(data, name) != DataSpec.model_fields[name].default:
                raise _at(name, f"does not apply to task {task.kind} (its examples are the rows of task.dataset)")
        return data

    @field_validator("model")
    @classmethod
    def _allocatable(cls, model: ModelSpec | None, info: ValidationInfo) -> ModelSpec | None:
        if model is None:
            if "init" in info.data and info.data["init"] is None:
                raise ValueError("required field is missing (only a spec with init takes its shape from the source run)")
            return model
        data = info.data.get("data")
        n_params = estimate_parameters(model, vocab_size=256, seq_len=data.seq_len if data is not None else 1)
        if n_params > MAX_PARAMETERS:
            raise ValueError(f"about {n_params:.3g} parameters before the vocabulary; at most {MAX_PARAMETERS:.0e} are allowed")
        return model

    @field_validator("sweep")
    @classmethod
    def _objective_is_measured(cls, sweep: SweepSpec | None, info: ValidationInfo) -> SweepSpec | None:
        data, task = info.data.get("data"), info.data.get("task")
        metric = sweep.objective.metric if sweep is not None else None
        if metric is None:
            return sweep
        if metric.startswith("val/") and data is not None and data.val_fraction == 0:
            raise _at("objective.metric", f"{metric} needs data.val_fraction > 0")
        if metric == "val/accuracy" and task is not None and task.kind != "classify":
            raise _at("objective.metric", "val/accuracy is measured for task classify only")
        return sweep

    @field_validator("train")
    @classmethod
    def _watched_metric_exists(cls, train: TrainSpec, info: ValidationInfo) -> TrainSpec:
        data, task = info.data.get("data"), info.data.get("task")
        es = train.early_stopping
        if es is None:
            return train
        if es.metric.startswith("val/") and data is not None and data.val_fraction == 0:
            raise _at("early_stopping.metric", f"{es.metric} needs data.val_fraction > 0 (or watch train/loss_eval)")
        if es.metric == "val/accuracy" and task is not None and task.kind != "classify":
            raise _at("early_stopping.metric", "val/accuracy is measured for task classify only")
        return train

    @property
    def experiment(self) -> str:
        return self.tracking.experiment or self.name

    @property
    def freezing(self) -> str | FreezeBlocks:
        """What stays frozen: task.freeze, else the default (a classifier on a pretrained body trains only its head)."""
        if self.task.freeze is not None:
            return self.task.freeze
        return "all_but_head" if self.task.kind == "classify" and self.init is not None else "none"

    @property
    def is_sweep(self) -> bool:
        return self.sweep is not None


builtins_int = int
builtins_float = float
ParamRange.model_rebuild()
SweepSpec.model_rebuild()
Spec.model_rebuild()


def estimate_parameters(model: ModelSpec, *, vocab_size: int, seq_len: int) -> int:
    """Parameter count of the GPT that ``model`` describes (exact for the shipped architecture)."""
    d, f, n, b = model.d_model, model.d_ff, model.n_layers, int(model.bias)
    per_block = 2 * (d + b * d) + (3 * d * d + b * 3 * d) + (d * d + b * d) + (d * f + b * f) + (f * d + b * d)
    embed = vocab_size * d + seq_len * d
    head = 0 if model.tie_weights else vocab_size * d
    return embed + n * per_block + (d + b * d) + head
