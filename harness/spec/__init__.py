"""The experiment spec: typed models (``schema``), safe YAML (``safe_yaml``), dotted paths and ``--set``
(``paths``), loading and validation (``load``), and the generated reference table (``reference``).

Nothing here imports torch or reads a corpus.
"""

from harness.spec.load import load_spec, spec_from_dict, spec_to_dict, spec_to_yaml, sweep_variants, variant
from harness.spec.paths import apply_overrides, field_paths, flatten, parse_overrides, set_path
from harness.spec.safe_yaml import read_yaml
from harness.spec.schema import (
    CheckpointSpec,
    DataSpec,
    EarlyStoppingSpec,
    EvalSpec,
    FreezeBlocks,
    InitSpec,
    ModelSpec,
    ObjectiveSpec,
    OptimizerSpec,
    ParamRange,
    PrunerSpec,
    ScheduleSpec,
    Spec,
    SweepSpec,
    TaskSpec,
    TokenizerSpec,
    TrackingSpec,
    TrainSpec,
    estimate_parameters,
    is_named_corpus,
)

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
    "apply_overrides",
    "estimate_parameters",
    "field_paths",
    "flatten",
    "is_named_corpus",
    "load_spec",
    "parse_overrides",
    "read_yaml",
    "set_path",
    "spec_from_dict",
    "spec_to_dict",
    "spec_to_yaml",
    "sweep_variants",
    "variant",
]
