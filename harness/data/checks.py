"""Spec checks that need the data: the corpus must load, and the split must hold enough for seq_len and a batch.

They run after the schema has passed (:func:`harness.spec.load_spec`), for the spec itself and for every value a
sweep can try, and every problem is reported at once, like the schema's.
"""

from __future__ import annotations

from harness.data.corpora import CorpusError
from harness.data.prepare import prepare, split_point
from harness.errors import HarnessError, Issue, SpecError
from harness.spec import Spec, sweep_variants
from harness.spec.load import swept_issue

__all__ = ["check_data", "validate_data"]


def validate_data(spec: Spec, *, file: str | None = None) -> None:
    """Raise one SpecError with every data problem of ``spec`` (and of each run its sweep can make)."""
    issues = check_data(spec, file=file)
    if issues:
        raise SpecError(issues)


def check_data(spec: Spec, *, file: str | None = None) -> list[Issue]:
    """Every data problem of ``spec``; for a sweep, also of each grid value and range endpoint, reported on its param."""
    issues = _sizes(spec, file)
    seen = {(i.path, i.message) for i in issues}  # a problem of the base spec is not repeated for every swept value
    for path, value, run_spec in sweep_variants(spec):
        issues += [swept_issue(file, path, value, i) for i in _sizes(run_spec, file) if (i.path, i.message) not in seen]
    return issues


def _task_sizes(spec: Spec, file: str | None) -> list[Issue]:
    """A classify or instruct dataset: it loads, has the fields and labels it needs, and each split holds a batch."""
    from harness.data.datasets import load_classify, load_instruct

    task, data, train = spec.task, spec.data, spec.train
    assert task.dataset is not None
    try:
        if task.kind == "classify":
            rows: list = load_classify(task.dataset, text_field=task.text_field, label_field=task.label_field)
            labels = {r.label for r in rows}
            if len(labels) < 2:
                return [Issue(file, "task.label_field", f"classify needs at least 2 labels; {task.dataset} has {sorted(labels)}")]
        else:
            rows = load_instruct(task.dataset)
    except CorpusError as exc:
        return [Issue(file, exc.path, str(exc))]
    n_val = len(rows) - split_point(len(rows), data.val_fraction)
    issues = []
    if train.batch_size > len(rows) - n_val:
        issues.append(Issue(file, "train.batch_size", f"batch_size {train.batch_size} is larger than the {len(rows) - n_val} training rows of "
                            f"{task.dataset} (an epoch would have no full batch)"))
    if data.val_fraction > 0 and n_val < train.batch_size:
        issues.append(Issue(file, "data.val_fraction", f"the validation split has {n_val} rows, fewer than one batch of {train.batch_size}; "
                            "raise val_fraction or lower batch_size"))
    return issues


def _sizes(spec: Spec, file: str | None) -> list[Issue]:
    """Problems that only show once the corpus is read: sizes of the split against seq_len and batch_size."""
    if spec.task.kind != "lm":
        return _task_sizes(spec, file)
    data, train = spec.data, spec.train
    try:
        prep = prepare(data)
    except CorpusError as exc:
        return [Issue(file, exc.path, str(exc))]
    except HarnessError as exc:
        return [Issue(file, "data.corpus", str(exc))]
    issues: list[Issue] = []
    unit = "documents" if data.sampling == "documents" and data.packing == "pad" else "windows"
    need = data.seq_len + 1
    if prep.train_examples == 0:
        if unit == "documents":
            issues.append(Issue(file, "data.val_fraction", f"no training documents are left after the split ({prep.n_chars} characters)"))
        else:
            issues.append(
                Issue(file, "data.seq_len", f"seq_len {data.seq_len} needs at least {need} training tokens; the train split has {prep.n_train_tokens}")
            )
        return issues
    if data.sampling != "random" and train.batch_size > prep.train_examples:
        issues.append(
            Issue(file, "train.batch_size", f"batch_size {train.batch_size} is larger than the {prep.train_examples} training {unit} (an epoch would have no full batch)")
        )
    if data.val_fraction > 0:
        if prep.val_examples == 0:
            issues.append(
                Issue(file, "data.val_fraction", f"the validation split ({prep.n_val_tokens} tokens) is too small for one example of {need} tokens; raise val_fraction or lower seq_len")
            )
        elif data.sampling != "random" and prep.val_examples < train.batch_size:
            issues.append(
                Issue(file, "data.val_fraction", f"the validation split has {prep.val_examples} {unit}, fewer than one batch of {train.batch_size}; raise val_fraction or lower batch_size")
            )
    return issues
