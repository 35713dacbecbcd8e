"""netslim.load of a Hugging Face artifact builds the model on the meta device and takes the
file's tensors: no fp32 copy initialised with random weights first (a 173 MB int4 SmolLM2
peaked at +758 MB when loaded that way, +164 MB now), computed buffers (rotary frequencies)
filled as transformers fills them, outputs equal to the saved model's."""

from __future__ import annotations

import pytest
import torch

tf = pytest.importorskip("transformers")

import netslim  # noqa: E402
from netslim.models.hf_tiny import TINY_VOCAB, tiny_decoder  # noqa: E402


def _tiny(kind: str) -> torch.nn.Module:
    if kind == "llama":
        return tiny_decoder("Llama", 0, tie_word_embeddings=True)
    torch.manual_seed(0)
    cfg = tf.BertConfig(
        vocab_size=TINY_VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128
    )
    return tf.BertModel(cfg).eval()


@pytest.mark.parametrize("kind", ["llama", "bert"])
@pytest.mark.parametrize("quantize", [False, True])
def test_an_hf_artifact_loads_without_a_random_fp32_copy(tmp_path, monkeypatch, kind, quantize):
    model = _tiny(kind)
    if quantize:
        from netslim.quantize.weight_only import quantize_weights

        model = quantize_weights(model, bits=4, group_size=32)
    path = netslim.save(model, tmp_path / "m.safetensors")
    ids = torch.randint(0, TINY_VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(input_ids=ids)[0]

    initialised: list[tuple] = []
    normal = torch.Tensor.normal_

    def spy(self, *a, **k):
        if not self.is_meta:
            initialised.append(tuple(self.shape))
        return normal(self, *a, **k)

    monkeypatch.setattr(torch.Tensor, "normal_", spy)
    back = netslim.load(path)
    monkeypatch.undo()
    assert initialised == []  # nothing was built with random weights to be overwritten
    assert not any(t.is_meta for t in [*back.parameters(), *back.buffers()])
    with torch.no_grad():
        assert torch.equal(back(input_ids=ids)[0], want)
    if kind == "llama" and not quantize:  # (the packed head is its own layer)
        assert back.lm_head.weight is back.model.embed_tokens.weight
