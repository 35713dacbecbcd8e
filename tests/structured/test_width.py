"""Width (hidden-size) pruning of tiny BERT / Llama / Mistral / Qwen2 / GPT-2: oracles, reloads, bad input."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import netslim
from netslim.core.config import make_config
from netslim.core.errors import NetslimError
from netslim.prune.structured import PrunePlan, shrink_width

tf = pytest.importorskip("transformers")
IDS = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))
BATCHES = [
    {"input_ids": IDS, "attention_mask": torch.ones_like(IDS)},
    {"input_ids": IDS.flip(1), "attention_mask": torch.ones_like(IDS)},
]


def _seeded(cls, config, seed=0):
    torch.manual_seed(seed)
    return cls(config).eval()


def bert_classifier():
    return _seeded(
        tf.BertForSequenceClassification,
        tf.BertConfig(
            vocab_size=512,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=96,
            num_labels=3,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        ),
    )


def llama(tied=False):
    return _seeded(
        tf.LlamaForCausalLM,
        tf.LlamaConfig(
            vocab_size=512,
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=tied,
        ),
    )


def mistral():
    return _seeded(
        tf.MistralForCausalLM,
        tf.MistralConfig(
            vocab_size=512,
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
        ),
    )


def qwen2():
    return _seeded(
        tf.Qwen2ForCausalLM,
        tf.Qwen2Config(
            vocab_size=512,
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        ),
    )


def gpt2():
    return _seeded(
        tf.GPT2LMHeadModel,
        tf.GPT2Config(vocab_size=512, n_embd=64, n_layer=2, n_head=4, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0),
    )


MODELS = {
    "bert-cls": bert_classifier,
    "llama": llama,
    "llama-tied": lambda: llama(True),
    "mistral": mistral,
    "qwen2": qwen2,
    "gpt2": gpt2,
}


def _out(model, x=IDS):
    with torch.no_grad():
        return model(x)[0]


# ------------------------------------------------------------------------- oracles
class KeptNorm(nn.Module):
    """The test's own reference norm: statistics over the kept features, zeros elsewhere."""

    def __init__(self, norm, keep):
        super().__init__()
        self.norm, self.keep = norm, keep

    def forward(self, x):
        xk = x[..., self.keep]
        w = self.norm.weight[self.keep]
        if isinstance(self.norm, nn.LayerNorm):
            b = self.norm.bias[self.keep] if self.norm.bias is not None else None
            y = F.layer_norm(xk, (len(self.keep),), w, b, self.norm.eps)
        else:  # Llama-style RMSNorm
            y = w * xk * torch.rsqrt(xk.pow(2).mean(-1, keepdim=True) + self.norm.variance_epsilon)
        out = torch.zeros_like(x)
        out[..., self.keep] = y
        return out


def zeroed_reference(model, plan_dict, keep, kept_stats: bool):
    """``model`` with every slice the plan removes set to zero (and, if ``kept_stats``, every norm of
    the residual stream over the kept features only)."""
    ref = copy.deepcopy(model)
    plan = PrunePlan.from_dict(plan_dict)
    with torch.no_grad():
        for e in plan.entries:
            t = getattr(ref.get_submodule(e["module"]), e["param"])
            drop = torch.ones(t.shape[e["dim"]], dtype=torch.bool)
            drop[e["keep"]] = False
            t.index_fill_(e["dim"], drop.nonzero().flatten(), 0.0)
    if kept_stats:
        d = model.config.hidden_size
        for name, m in list(ref.named_modules()):
            if (isinstance(m, nn.LayerNorm) or type(m).__name__.endswith("RMSNorm")) and m.weight.shape == (d,):
                parent, _, child = name.rpartition(".")
                setattr(ref.get_submodule(parent), child, KeptNorm(m, keep))
    return ref


@pytest.mark.parametrize("name", sorted(MODELS))
def test_shrunk_equals_zeroed_dims_with_norms_over_the_kept_dims(name):
    model = MODELS[name]()
    shrunk, report = shrink_width(copy.deepcopy(model), 48, batches=BATCHES, norm_correction=False)
    keep = torch.tensor(report["groups"][[g["kind"] for g in report["groups"]].index("hidden")]["keep"])
    assert len(keep) == 48 and shrunk.config.hidden_size == 48
    ref = zeroed_reference(model, report["plan"], keep, kept_stats=True)
    torch.testing.assert_close(_out(shrunk), _out(ref), atol=1e-5, rtol=1e-5)
    assert report["params_after"] < report["params_before"] and report["from_pretrained"]


@pytest.mark.parametrize("name", ["llama", "llama-tied", "mistral", "qwen2"])
def test_rmsnorm_family_is_exact_when_the_removed_dims_are_zeroed_first(name):
    """The plain model (standard norms over all D features) with the removed dims already zero in
    every tensor that writes the residual stream: pruning those dims, with the norm correction
    measured on calibration data, keeps every output, up to the norms' epsilon (1e-6; the
    embeddings are scaled to unit RMS so that it is negligible, as in trained models)."""
    model = MODELS[name]()
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(50.0)
    keep = torch.tensor([i for i in range(64) if i % 4 != 3])  # 16 dims removed: 3, 7, ..., 63
    _, report = shrink_width(copy.deepcopy(model), 48, batches=BATCHES, keep=keep, norm_correction=False)
    zeroed = zeroed_reference(model, report["plan"], keep, kept_stats=False)  # standard modules
    shrunk, report = shrink_width(copy.deepcopy(zeroed), 48, batches=BATCHES, keep=keep)
    assert all(1.15 < f < 1.16 for f in report["norm_factors"].values())  # sqrt(64 / 48) = 1.1547
    torch.testing.assert_close(_out(shrunk), _out(zeroed), atol=2e-5, rtol=1e-4)
    hidden = {}
    for tag, m in (("s", shrunk), ("z", zeroed)):
        with torch.no_grad():
            hidden[tag] = m(IDS, output_hidden_states=True).hidden_states[-1]
    torch.testing.assert_close(hidden["s"], hidden["z"][..., keep], atol=1e-5, rtol=1e-4)  # unpruned directions


@pytest.mark.parametrize("name", sorted(MODELS))
def test_reloads_with_from_pretrained_and_netslim_load(name, tmp_path):
    model, report = shrink_width(MODELS[name](), 48, batches=BATCHES, criterion="activation")
    cls = type(model)
    model.save_pretrained(tmp_path / "hf")
    back = cls.from_pretrained(tmp_path / "hf", local_files_only=True).eval()
    torch.testing.assert_close(_out(back), _out(model), atol=1e-5, rtol=1e-5)
    again = netslim.load(netslim.save(model, tmp_path / "w.safetensors"))
    torch.testing.assert_close(_out(again), _out(model), atol=0, rtol=0)
    if name in ("llama-tied", "gpt2"):  # the LM head is still the embedding, one tensor
        assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
        assert again.get_output_embeddings().weight is again.get_input_embeddings().weight


def test_bert_keeps_whole_heads_and_its_pooler_follows():
    model, report = shrink_width(bert_classifier(), 32, batches=BATCHES)  # head size 16: 2 of 4 heads
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_attention_heads) == (32, 2)
    att = model.bert.encoder.layer[0].attention
    assert att.self.query.weight.shape == (32, 32) and att.output.dense.weight.shape == (32, 32)
    assert model.bert.pooler.dense.weight.shape == (32, 32) and model.classifier.weight.shape == (3, 32)
    assert model.bert.embeddings.word_embeddings.weight.shape == (512, 32)
    assert model.bert.encoder.layer[1].intermediate.dense.weight.shape == (96, 32)  # FFN size kept


def test_gpt2_states_its_ffn_size_and_head_count():
    model, report = shrink_width(gpt2(), 32, batches=BATCHES)
    assert report["config"] == {"hidden_size": 32, "n_inner": 256, "n_head": 2}
    assert model.transformer.h[0].attn.c_attn.weight.shape == (32, 96)
    assert model.transformer.h[0].mlp.c_fc.weight.shape == (32, 256)


@pytest.mark.parametrize("criterion", ["l2", "taylor", "random"])
def test_other_criteria_keep_the_asked_width(criterion):
    def loss(m, b):
        return m(**b, labels=b["input_ids"]).loss

    model, report = shrink_width(llama(), ratio=0.25, criterion=criterion, batches=BATCHES, loss_fn=loss)
    assert model.config.hidden_size == 48 and model.model.norm.weight.shape == (48,)


def test_activation_criterion_drops_the_dims_the_norms_never_output():
    model = llama()
    dead = [5, 17, 40, 41]
    with torch.no_grad():
        for m in model.modules():
            if type(m).__name__ == "LlamaRMSNorm":
                m.weight[dead] = 0.0  # these dims read as zero everywhere
    _, report = shrink_width(model, 60, batches=BATCHES, norm_correction=False)
    keep = report["groups"][[g["kind"] for g in report["groups"]].index("hidden")]["keep"]
    assert sorted(set(range(64)) - set(keep)) == dead


# ----------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "step, match",
    [
        ({"method": "width", "ratio": 1.0}, "'ratio'.*less than 1"),
        ({"method": "width", "ratio": -0.1}, "'ratio'.*greater than or equal to 0"),
        ({"method": "width"}, "exactly one of 'hidden_size' or 'ratio'"),
        ({"method": "width", "ratio": 0.5, "distill": 0.5}, "give 'finetune' too"),
    ],
)
def test_bad_configs_are_one_line(step, match):
    with pytest.raises(NetslimError, match=match):
        make_config(step)


def test_bad_widths_and_families_fail_before_work():
    from netslim.prune.structured.steps import WidthConfig

    model = bert_classifier()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(NetslimError, match=r"'hidden_size'.*multiple of the head size 16.*e\.g\. 48 or 64"):
        shrink_width(model, 50, batches=BATCHES)
    with pytest.raises(NetslimError, match=r"'hidden_size'.*\[1, 63\]"):
        WidthConfig(hidden_size=64).preflight(model, None)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())  # untouched
    neox = _seeded(
        tf.GPTNeoXForCausalLM,
        tf.GPTNeoXConfig(
            vocab_size=512, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
        ),
    )
    with pytest.raises(NetslimError, match="no width rule for model_type 'gpt_neox'"):
        WidthConfig(ratio=0.5).preflight(neox, None)
    with pytest.raises(NetslimError, match="not a Hugging Face transformer"):
        WidthConfig(ratio=0.5).preflight(nn.Linear(3, 3), None)
    encoder = _seeded(
        tf.BertModel,
        tf.BertConfig(vocab_size=512, hidden_size=64, num_hidden_layers=1, num_attention_heads=4, intermediate_size=96),
    )
    with pytest.raises(NetslimError, match="its hidden states are its output"):
        shrink_width(encoder, 48, batches=BATCHES)


def test_cli_bad_width_is_exit_2_with_one_line(tmp_path):
    recipe = tmp_path / "w.yaml"
    recipe.write_text("name: w\nsteps:\n  - method: width\n    hidden_size: 64\n  - method: evaluate\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "netslim.cli",
            "compress",
            str(recipe),
            "--model",
            "tiny-llama",
            "--out",
            str(tmp_path / "run"),
            "--limit",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "'hidden_size'" in lines[0] and "[1, 63]" in lines[0]
    assert not (tmp_path / "run").exists()
