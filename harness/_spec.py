"""The experiment spec: typed, frozen, validated models loaded from YAML.

A run spec has the sections ``name``, ``seed``, ``data``, ``model``, ``train`` and ``tracking``; a sweep spec adds
``sweep``. Every problem is collected and raised once as a :class:`SpecError` whose issues name the file, the dotted
field path and what was expected. This module never imports torch, so validation is cheap.
"""

from __future__ import annotations

import copy
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from harness._errors import Issue, SpecError

__all__ = [
    "CheckpointSpec",
    "DataSpec",
    "EarlyStoppingSpec",
    "EvalSpec",
    "ModelSpec",
    "ObjectiveSpec",
    "OptimizerSpec",
    "ParamRange",
    "PrunerSpec",
    "ScheduleSpec",
    "Spec",
    "SweepSpec",
    "TokenizerSpec",
    "TrackingSpec",
    "TrainSpec",
    "apply_overrides",
    "field_paths",
    "load_spec",
    "parse_overrides",
    "read_yaml",
    "spec_from_dict",
    "spec_to_dict",
]

# A spec file larger than this is not a spec; refuse it before parsing.
MAX_SPEC_BYTES = 1_000_000
# YAML aliases are legitimate in small numbers; thousands of them are an alias bomb.
MAX_YAML_ALIASES = 100
# A few dozen aliases can still expand to billions of values ("billion laughs"): cap the size with aliases expanded.
MAX_YAML_NODES = 100_000
# Refuse models that could not possibly be allocated on a workstation, before any allocation happens.
MAX_PARAMETERS = 20_000_000_000

_FIELD_MARK = re.compile(r"^@([A-Za-z0-9_.]+): (.*)$", re.S)


def _at(field: str, message: str) -> ValueError:
    """A cross-field error that belongs to ``field`` of the model being validated (see ``_issues_from``)."""
    return ValueError(f"@{field}: {message}")


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
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value.startswith("tiktoken:"):
                return {"kind": "tiktoken", "encoding": value.split(":", 1)[1]}
            return {"kind": value}
        return value

    @model_validator(mode="after")
    def _check(self) -> TokenizerSpec:
        if self.kind == "tiktoken" and not (self.encoding or self.path):
            raise _at("encoding", "tiktoken needs an encoding name (cl100k_base, o200k_base) or a path to a ranks file")
        if self.kind == "char" and (self.encoding or self.path or self.compact):
            raise _at("kind", "encoding, path and compact only apply to kind: tiktoken")
        return self


class DataSpec(_Model):
    """Where the text comes from and how it is cut into training examples."""

    corpus: str = Field(description="a shipped corpus (shakespeare/<work>, names) or a path to a UTF-8 text file")
    max_chars: int | None = Field(None, ge=1, description="keep only this many leading characters of the corpus")
    tokenizer: TokenizerSpec = Field(TokenizerSpec(), description="char, or tiktoken with an encoding")
    sampling: Literal["windows", "random", "documents"] = Field(
        "windows", description="windows: every sliding window once per epoch; random: random windows each step; documents: one line per example"
    )
    stride: int = Field(1, ge=1, le=1_000_000, description="distance between window starts (windows sampling)")
    seq_len: int = Field(ge=2, le=65_536, description="tokens per training example (the model's context length)")
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="fraction of the corpus (its tail) held out for validation; 0 disables val")
    packing: Literal["pad", "pack"] = Field(
        "pad", description="documents sampling: pad each document to seq_len, or pack documents into one BOS-separated stream"
    )

    @field_validator("corpus")
    @classmethod
    def _corpus_not_empty(cls, value: str) -> str:
        if not value.strip():
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

    metric: Literal["val/loss", "train/loss_eval"] = Field("val/loss", description="the evaluated metric to watch (lower is better)")
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
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16 runs forward and loss under bf16 autocast")
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
        elif self.log or self.step is not None:
            raise ValueError("log and step only apply to int and float ranges")
        return self

    def endpoints(self) -> list[Any]:
        """Values that every suggestion lies between (or is one of): checked against the schema before a trial runs."""
        if self.choices is not None:
            return list(self.choices)
        return list(self.int if self.int is not None else self.float)  # type: ignore[arg-type]


class ObjectiveSpec(_Model):
    """What a trial is scored by."""

    metric: str = Field("val/loss", description="a logged metric, e.g. val/loss or train/loss_eval")
    direction: Literal["minimize", "maximize"] = Field("minimize", description="minimize or maximize")
    summary: Literal["best", "last"] = Field("best", description="score a trial by the best or the last value of the metric")


class PrunerSpec(_Model):
    """Optuna pruner. A bare name (``median``) is shorthand for ``{name: median}``."""

    name: Literal["none", "median", "successive_halving", "hyperband", "percentile"] = Field("none", description="which pruner")
    n_startup_trials: int = Field(5, ge=0, description="median/percentile: trials that finish before any pruning")
    n_warmup_steps: int = Field(0, ge=0, description="median/percentile: steps before a trial can be pruned")
    percentile: float = Field(50.0, gt=0, lt=100, description="percentile pruner: the percentile to keep")
    min_resource: int | Literal["auto"] = Field("auto", description="successive_halving/hyperband: minimum steps")
    reduction_factor: int = Field(3, ge=2, description="successive_halving/hyperband: reduction factor")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value


class SweepSpec(_Model):
    """A study over the run spec: each trial overrides the swept paths and runs the result."""

    sampler: Literal["grid", "random", "tpe", "cmaes", "qmc"] = Field("grid", description="grid, random, tpe, cmaes or qmc")
    seed: int | None = Field(None, ge=0, description="sampler seed (default: the spec seed)")
    params: dict[str, Union[list[Any], ParamRange]] = Field(description="dotted run-spec path -> a list (grid values) or a range")
    objective: ObjectiveSpec = Field(ObjectiveSpec(), description="the metric a trial is scored by")
    pruner: PrunerSpec = Field(PrunerSpec(), description="stop unpromising trials early")
    n_trials: int | None = Field(None, ge=1, le=1_000_000, description="trials to finish (a grid defaults to its size)")
    workers: int = Field(1, ge=1, le=256, description="worker processes on this machine sharing the study")
    storage: str | None = Field(None, description="Optuna storage URL (default: a SQLite file under studies/)")
    timeout_s: float | None = Field(None, gt=0, description="stop starting trials after this many seconds")

    @model_validator(mode="after")
    def _check(self) -> SweepSpec:
        if not self.params:
            raise _at("params", "must sweep at least one path")
        for path, space in self.params.items():
            if isinstance(space, list):
                if not space:
                    raise _at(f"params.{path}", "an empty grid: give at least one value")
                if len({repr(v) for v in space}) != len(space):
                    raise _at(f"params.{path}", f"duplicate grid values in {space}")
            elif self.sampler == "grid" and space.choices is None:
                raise _at(f"params.{path}", "the grid sampler needs a list of values or choices, not a range")
        return self

    def grid_size(self) -> int:
        size = 1
        for space in self.params.values():
            size *= len(space) if isinstance(space, list) else len(space.choices or [])
        return size


# ----------------------------------------------------------------------------------------------------------- spec


class Spec(_Model):
    """One experiment. With a ``sweep`` section it is a sweep over copies of itself."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$", description="experiment name: letters, digits, _ . -")
    seed: int = Field(1337, ge=0, lt=2**63, description="seed for weights, dropout and batch order")
    data: DataSpec = Field(description="corpus, tokenizer, split and sampling")
    model: ModelSpec = Field(description="GPT shape")
    train: TrainSpec = Field(description="optimisation loop")
    tracking: TrackingSpec = Field(TrackingSpec(), description="MLflow experiment, run name and tags")
    sweep: SweepSpec | None = Field(None, description="Optuna sweep over this spec (absent for a single run)")

    @field_validator("data")
    @classmethod
    def _documents_need_char(cls, data: DataSpec) -> DataSpec:
        if data.sampling == "documents" and data.tokenizer.kind != "char":
            raise _at("tokenizer", "documents sampling uses the char tokenizer (it reserves a BOS id)")
        return data

    @field_validator("model")
    @classmethod
    def _allocatable(cls, model: ModelSpec, info: ValidationInfo) -> ModelSpec:
        data = info.data.get("data")
        n_params = estimate_parameters(model, vocab_size=256, seq_len=data.seq_len if data is not None else 1)
        if n_params > MAX_PARAMETERS:
            raise ValueError(f"about {n_params:.3g} parameters before the vocabulary; at most {MAX_PARAMETERS:.0e} are allowed")
        return model

    @field_validator("train")
    @classmethod
    def _val_for_early_stopping(cls, train: TrainSpec, info: ValidationInfo) -> TrainSpec:
        data = info.data.get("data")
        es = train.early_stopping
        if es is not None and es.metric == "val/loss" and data is not None and data.val_fraction == 0:
            raise _at("early_stopping.metric", "val/loss needs data.val_fraction > 0 (or watch train/loss_eval)")
        return train

    @property
    def experiment(self) -> str:
        return self.tracking.experiment or self.name

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


# ----------------------------------------------------------------------------------------------------------- paths


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    """The BaseModel inside ``X``, ``X | None`` or a union with it, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(annotation):
            inner = _inner_model(arg)
            if inner is not None and inner is not ParamRange:
                return inner
    return None


def field_paths(model: type[BaseModel] = Spec, prefix: str = "") -> dict[str, Any]:
    """Every settable dotted path of the schema mapped to its annotation (nested models included)."""
    paths: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        paths[path] = info.annotation
        inner = _inner_model(info.annotation)
        if inner is not None and path != "sweep.params":
            paths.update(field_paths(inner, prefix=path + "."))
    return paths


def _check_path(path: str, *, allow_sweep: bool = True) -> str | None:
    """None when ``path`` is a valid dotted field path, else the message to show (with the closest valid path)."""
    paths = field_paths()
    if path in paths and (allow_sweep or not path.startswith("sweep")):
        return None
    # tracking.tags.<anything> is free-form.
    if path.startswith("tracking.tags.") and len(path) > len("tracking.tags."):
        return None
    candidates = [p for p in paths if allow_sweep or not p.startswith("sweep")]
    close = _closest(path, candidates)
    hint = f"; did you mean {close}?" if close else ""
    return f"unknown field path '{path}'{hint}"


def _closest(path: str, candidates: list[str]) -> str | None:
    """The valid path a typo most likely meant: a sibling with a similar name, else a similar full path."""
    parent, _, leaf = path.rpartition(".")
    siblings = {c.rpartition(".")[2]: c for c in candidates if c.rpartition(".")[0] == parent}
    if siblings:
        close = difflib.get_close_matches(leaf, list(siblings), n=1, cutoff=0.6)
        return siblings[close[0]] if close else None
    close = difflib.get_close_matches(path, candidates, n=1, cutoff=0.6)
    return close[0] if close else None


# ----------------------------------------------------------------------------------------------------------- YAML


class _SafeLoader(yaml.SafeLoader):
    """SafeLoader that refuses alias bombs: it counts aliases while composing."""

    def __init__(self, stream: Any):
        super().__init__(stream)
        self._aliases = 0

    def compose_node(self, parent: Any, index: Any) -> Any:  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_YAML_ALIASES:
                raise yaml.YAMLError(f"more than {MAX_YAML_ALIASES} YAML aliases; refusing a possible alias bomb")
        return super().compose_node(parent, index)


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file safely. Raises SpecError naming the file (and line) on any problem."""
    name = str(path)
    p = Path(path)
    try:
        size = p.stat().st_size
    except OSError as exc:
        raise SpecError([Issue(name, "", f"cannot read spec file: {exc.strerror or exc}")]) from None
    if p.is_dir():
        raise SpecError([Issue(name, "", "is a directory, expected a YAML spec file")])
    if size > MAX_SPEC_BYTES:
        raise SpecError([Issue(name, "", f"spec file is {size} bytes; a spec is at most {MAX_SPEC_BYTES} bytes")])
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError([Issue(name, "", f"not UTF-8 text ({exc.reason} at byte {exc.start})")]) from None
    return parse_yaml(text, file=name)


def _duplicate_keys(node: Any, path: str = "", seen: set[int] | None = None) -> list[tuple[str, Any]]:
    """(dotted path, mark) of every key that appears twice in one mapping. YAML keeps the last silently."""
    seen = set() if seen is None else seen
    if id(node) in seen:  # an alias to a node already walked (aliases may even be recursive)
        return []
    seen.add(id(node))
    out: list[tuple[str, Any]] = []
    if isinstance(node, yaml.MappingNode):
        keys: set[str] = set()
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            sub = f"{path}.{key}" if path else str(key)
            if key is not None and key != "<<":
                if key in keys:
                    out.append((sub, key_node.start_mark))
                keys.add(key)
            out += _duplicate_keys(value_node, sub, seen)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            out += _duplicate_keys(item, path, seen)
    return out


def _expanded_size(node: Any, memo: dict[int, int], path: set[int]) -> int:
    """How many values the document holds once every alias is expanded (memoised, so it costs one pass)."""
    key = id(node)
    if key in memo:
        return memo[key]
    if key in path:
        raise yaml.YAMLError("a YAML alias refers to a node that contains it (a recursive structure); a spec cannot hold one")
    path.add(key)
    if isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, memo, path) + _expanded_size(v, memo, path) for k, v in node.value)
    elif isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(item, memo, path) for item in node.value)
    else:
        size = 1
    path.discard(key)
    memo[key] = size
    if size > MAX_YAML_NODES:
        raise yaml.YAMLError(f"the aliases in this YAML expand to more than {MAX_YAML_NODES} values; refusing a possible alias bomb")
    return size


def parse_yaml(text: str, *, file: str | None) -> Any:
    loader = _SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            _expanded_size(node, {}, set())
        duplicates = _duplicate_keys(node) if node is not None else []
        if duplicates:
            raise SpecError([Issue(file, path, f"duplicate key (line {mark.line + 1}); YAML would silently keep only the last one")
                             for path, mark in duplicates])
        return loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = exc.problem or str(exc)
        if "\t" in text and "tab" in problem.lower() or "found character '\\t'" in problem:
            problem += "; YAML indentation must use spaces, not tabs"
        raise SpecError([Issue(file, "", f"invalid YAML{where}: {problem}")]) from None
    except yaml.YAMLError as exc:
        raise SpecError([Issue(file, "", f"invalid YAML: {exc}")]) from None
    except RecursionError:
        raise SpecError([Issue(file, "", "invalid YAML: nested too deeply")]) from None
    finally:
        loader.dispose()


# ----------------------------------------------------------------------------------------------------------- overrides


def parse_overrides(items: list[str] | tuple[str, ...] | None) -> list[tuple[str, Any]]:
    """``["a.b=1", ...]`` -> ``[("a.b", 1), ...]`` with values parsed as YAML scalars. Bad items raise SpecError."""
    parsed: list[tuple[str, Any]] = []
    issues: list[Issue] = []
    for item in items or ():
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            issues.append(Issue("--set", key or item, f"expected key=value, got '{item}'"))
            continue
        try:
            value = parse_yaml(raw, file="--set") if raw.strip() else None
        except SpecError as exc:
            issues.append(Issue("--set", key, exc.issues[0].message))
            continue
        parsed.append((key, value))
    if issues:
        raise SpecError(issues)
    return parsed


def _normalise(raw: dict[str, Any]) -> None:
    """Expand shorthands in place so dotted overrides can reach their fields."""
    data = raw.get("data")
    if isinstance(data, dict) and isinstance(data.get("tokenizer"), str):
        data["tokenizer"] = TokenizerSpec._shorthand(data["tokenizer"])
    sweep = raw.get("sweep")
    if isinstance(sweep, dict) and isinstance(sweep.get("pruner"), str):
        sweep["pruner"] = {"name": sweep["pruner"]}


def set_path(raw: dict[str, Any], path: str, value: Any) -> None:
    """Set ``a.b.c`` in a nested dict, creating (or replacing null) intermediate mappings."""
    node = raw
    parts = path.split(".")
    if path.startswith("tracking.tags."):
        parts = ["tracking", "tags", path[len("tracking.tags.") :]]
    for part in parts[:-1]:
        nxt = node.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            node[part] = nxt
        node = nxt
    node[parts[-1]] = value


def apply_overrides(raw: dict[str, Any], overrides: list[tuple[str, Any]], *, source: str = "--set") -> dict[str, Any]:
    """A deep copy of ``raw`` with each override applied. Unknown paths raise SpecError with a suggestion."""
    out = copy.deepcopy(raw)
    _normalise(out)
    issues = [Issue(source, key, msg) for key, _ in overrides if (msg := _check_path(key)) is not None]
    if issues:
        raise SpecError(issues)
    for key, value in overrides:
        set_path(out, key, value)
    return out


# ----------------------------------------------------------------------------------------------------------- loading


def _loc_to_path(loc: tuple[Any, ...]) -> str:
    parts = []
    for item in loc:
        s = str(item)
        # Pydantic adds union-member and validator names to locations; they are not field names.
        if "[" in s or s in {"list[any]", "ParamRange"}:
            continue
        parts.append(s)
    return ".".join(parts)


def _describe(err: dict[str, Any]) -> str:
    msg = err["msg"]
    kind = err["type"]
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "required field is missing"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if kind not in ("value_error", "assertion_error") and "input" in err:
        shown = repr(err["input"])
        if len(shown) > 60:
            shown = shown[:57] + "..."
        msg = f"{msg} (got {shown})"
    return msg


def _issues_from(exc: ValidationError, file: str | None) -> list[Issue]:
    issues = []
    seen = set()
    for err in exc.errors():
        path = _loc_to_path(err["loc"])
        swept = path.startswith("sweep.params.")
        if swept and err["type"] == "list_type" and isinstance(err.get("input"), dict):
            continue  # a mapping under sweep.params is meant as a range: the range's own errors say what is wrong
        msg = _describe(err)
        mark = _FIELD_MARK.match(msg)
        if mark:
            path = f"{path}.{mark.group(1)}" if path else mark.group(1)
            msg = mark.group(2)
        if err["type"] == "extra_forbidden":
            if swept:  # a key of a range: choices, int, float, log, step
                leaf = path.rpartition(".")[2]
                close = next(iter(difflib.get_close_matches(leaf, list(ParamRange.model_fields), n=1, cutoff=0.6)), None)
            else:
                close = _closest(path, list(field_paths()))
            if close:
                msg += f"; did you mean {close}?"
        key = (path, msg)
        if key not in seen:
            seen.add(key)
            issues.append(Issue(file, path, msg))
    return issues


def spec_from_dict(raw: Any, *, file: str | None = None, check_data: bool = True) -> Spec:
    """Validate a parsed mapping into a :class:`Spec`, raising one SpecError with every problem found."""
    if not isinstance(raw, dict):
        kind = "empty file" if raw is None else type(raw).__name__
        raise SpecError([Issue(file, "", f"expected a mapping of sections (name, seed, data, model, train, tracking), got {kind}")])
    raw = copy.deepcopy(raw)
    _normalise(raw)
    issues: list[Issue] = []
    sweep_raw = raw.get("sweep")
    if isinstance(sweep_raw, dict) and isinstance(sweep_raw.get("params"), dict):
        for path in sweep_raw["params"]:
            msg = _check_path(str(path), allow_sweep=False)
            if msg is not None:
                issues.append(Issue(file, f"sweep.params.{path}", msg))
    try:
        spec = Spec.model_validate(raw)
    except ValidationError as exc:
        issues.extend(_issues_from(exc, file))
        raise SpecError(issues) from None
    if issues:
        raise SpecError(issues)
    if spec.sweep is not None:
        issues.extend(_check_sweep_values(spec, raw, file=file, check=check_data))
    if check_data and not issues:
        from harness._corpus import check_data as _check_data

        issues.extend(_check_data(spec, file=file))
    if issues:
        raise SpecError(issues)
    return spec


def _check_sweep_values(spec: Spec, raw: dict[str, Any], *, file: str | None, check: bool) -> list[Issue]:
    """Every value a sampler can pick must make a valid run spec: check each grid value and range endpoint."""
    assert spec.sweep is not None
    issues: list[Issue] = []
    base = {k: v for k, v in raw.items() if k != "sweep"}
    for path, space in spec.sweep.params.items():
        values = space if isinstance(space, list) else space.endpoints()
        for value in values:
            trial = copy.deepcopy(base)
            set_path(trial, path, value)
            try:
                trial_spec = Spec.model_validate(trial)
            except ValidationError as exc:
                found = _issues_from(exc, file)
            else:
                from harness._corpus import check_data

                found = check_data(trial_spec, file=file) if check else []
            for issue in found:
                issues.append(Issue(file, f"sweep.params.{path}", f"value {value!r} makes an invalid run: {issue.path}: {issue.message}"))
    return issues


def load_spec(path: str | Path, overrides: list[str] | None = None, *, check_data: bool = True) -> Spec:
    """Read, override and validate a spec file. Relative corpus paths are resolved against the spec's folder."""
    name = str(path)
    raw = read_yaml(path)
    parsed = parse_overrides(overrides)
    if isinstance(raw, dict):
        raw = apply_overrides(raw, parsed)
        _resolve_corpus(raw, Path(path).resolve().parent)
    elif parsed:
        # still report the top-level problem first
        pass
    return spec_from_dict(raw, file=name, check_data=check_data)


def _resolve_corpus(raw: dict[str, Any], base: Path) -> None:
    from harness._corpus import is_named_corpus

    data = raw.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("corpus"), str):
        return
    corpus = data["corpus"]
    if not corpus.strip() or is_named_corpus(corpus):
        return
    p = Path(corpus).expanduser()
    if not p.is_absolute():
        # A path relative to the spec file wins; otherwise it is relative to the working directory.
        p = (base / p) if (base / p).exists() else (Path.cwd() / p)
    data["corpus"] = str(p.resolve())


def spec_to_dict(spec: Spec) -> dict[str, Any]:
    """The resolved spec as plain YAML-able data (tuples become lists)."""
    return spec.model_dump(mode="json")


def spec_to_yaml(spec: Spec) -> str:
    return yaml.safe_dump(spec_to_dict(spec), sort_keys=False)


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}} -> {"a.b": 1}``; lists stay values."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out



def schema_markdown() -> str:
    """The spec reference as a Markdown table, generated from the models' field docs."""

    def type_name(annotation: Any) -> str:
        text = str(annotation).replace("typing.", "").replace("harness._spec.", "")
        text = re.sub(r"<class '([^']+)'>", r"\1", text)
        text = text.replace("builtins_int", "int").replace("builtins_float", "float").replace("NoneType", "null")
        if text.startswith("tuple["):
            return "[float, float]"
        if text.startswith("dict[str, Union[list"):
            return "path → list or range"
        text = re.sub(r"Literal\[([^\]]*)\]", lambda m: " | ".join(v.strip().strip("'") for v in m.group(1).split(",")), text)
        text = re.sub(r"Union\[(.*)\]", lambda m: " | ".join(v.strip() for v in m.group(1).split(",")), text)
        return text.replace("None", "null").replace("|", "\\|")

    rows = ["| field | type | default | meaning |", "|---|---|---|---|"]

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, info in model.model_fields.items():
            path = prefix + name
            inner = _inner_model(info.annotation)
            if info.is_required():
                default = "required"
            elif isinstance(info.default, BaseModel):
                default = "(section)"
            elif info.default_factory is not None:
                default = "{}"
            else:
                default = "null" if info.default is None else f"`{info.default}`"
            typ = inner.__name__.replace("Spec", " section") if inner is not None else type_name(info.annotation)
            rows.append(f"| `{path}` | {typ} | {default} | {info.description or ''} |")
            if inner is not None and path != "sweep.params":
                walk(inner, path + ".")

    walk(Spec, "")
    rows.append("")
    rows.append("A swept value under `sweep.params.<path>` is either a list (grid values) or one of:")
    rows.append("")
    rows.append("| field | meaning |")
    rows.append("|---|---|")
    for name, info in ParamRange.model_fields.items():
        rows.append(f"| `{name}` | {info.description} |")
    return "\n".join(rows)
