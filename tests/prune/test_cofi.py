"""CoFi on tiny BERT / Llama (GQA): hard-concrete statistics, the expected-size formula against brute
force, what each granularity shrinks, the Lagrangian reaching its target, reloads, bad input."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import netslim
from netslim.core.config import apply, make_config
from netslim.core.context import StepContext
from netslim.core.errors import NetslimError
from netslim.core.hooks import hooked
from netslim.prune.cofi import CoFiConfig, check_reachable, cofi_prune, shrink_to_masks
from netslim.prune.cofi_masks import CoFiMasks, cofi_structure, mask_hooks, size_of
from netslim.prune.l0 import BETA, GAMMA, ZETA, HardConcreteGate
from netslim.train.object_tasks import TensorClassificationTask

tf = pytest.importorskip("transformers")
G = torch.Generator().manual_seed(0)
IDS = torch.randint(0, 256, (48, 10), generator=G)
X = {"input_ids": IDS, "attention_mask": torch.ones_like(IDS)}
Y = torch.randint(0, 3, (48,), generator=G)


def task():
    return TensorClassificationTask({s: (X, Y) for s in ("train", "val", "test")})


def bert(layers=2):
    torch.manual_seed(0)
    return tf.BertForSequenceClassification(
        tf.BertConfig(
            vocab_size=512,
            hidden_size=64,
            num_hidden_layers=layers,
            num_attention_heads=4,
            intermediate_size=96,
            num_labels=3,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
    ).eval()


def llama():
    torch.manual_seed(0)
    return tf.LlamaForSequenceClassification(
        tf.LlamaConfig(
            vocab_size=512,
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            num_labels=3,
            pad_token_id=0,
        )
    ).eval()


MODELS = {"bert": bert, "llama": llama}


def _logits(model):
    with torch.no_grad():
        return model(**{k: v[:4] for k, v in X.items()}).logits


# ------------------------------------------------------------------- hard concrete
def test_hard_concrete_sampling_statistics():
    la = torch.tensor([-2.0, 0.0, 1.5, 3.0])
    n = 200_000
    g = HardConcreteGate((n, 4), 0.0, cover=1)
    with torch.no_grad():
        g.log_alpha.copy_(la.expand(n, 4))
    g.train()
    torch.manual_seed(0)
    with torch.no_grad():
        z = g.gate()  # (n, 4): n independent draws per log_alpha
    log11 = math.log((1 - GAMMA) / (ZETA - 1))  # = log(11) = -log(-gamma / zeta)
    p_open = torch.sigmoid(la + BETA * log11)  # P(z > 0)
    p_one = torch.sigmoid(la - BETA * log11)  # P(z = 1)
    for got, want in (((z > 0).float().mean(0), p_open), ((z == 1).float().mean(0), p_one)):
        sd = (want * (1 - want) / n).sqrt()
        assert torch.all((got - want).abs() <= 5 * sd + 1e-6), (got, want)
    torch.testing.assert_close(g.prob_nonzero()[0], p_open)  # the L0 penalty's probability is P(z > 0)
    # E[z] by quadrature over u: z = clamp(sigmoid((logit u + la) / beta) * (zeta - gamma) + gamma, 0, 1)
    u = (torch.arange(400_000, dtype=torch.float64) + 0.5) / 400_000
    s = torch.sigmoid((torch.log(u / (1 - u))[:, None] + la.double()) / BETA)
    mean = (s * (ZETA - GAMMA) + GAMMA).clamp(0, 1).mean(0).float()
    assert torch.all((z.mean(0) - mean).abs() < 5 * z.std(0) / math.sqrt(n))
    g.eval()
    torch.testing.assert_close(g.gate()[0], (torch.sigmoid(la) * (ZETA - GAMMA) + GAMMA).clamp(0, 1))


# ------------------------------------------------------------------ expected size
def _random_masks(model, seed=0):
    struct = cofi_structure(model, {"input_ids": IDS[:2]})
    masks = CoFiMasks(struct, ("attention", "heads", "ffn", "neurons", "hidden"), 0.7)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in masks.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 2)
    return struct, masks


@pytest.mark.parametrize("name", sorted(MODELS))
def test_expected_size_equals_the_brute_force_sum_over_weight_elements(name):
    """Every weight element of a block matrix survives with the product of the probabilities of
    the gates that reach it; summing those over all elements is the expected size."""
    model = MODELS[name]()
    struct, masks = _random_masks(model)
    att, ffn = masks._layer_open("attention"), masks._layer_open("ffn")
    hidden = masks.gates["hidden"].prob_nonzero().detach()
    brute, full = 0.0, 0
    for i, units in enumerate(struct.heads + struct.neurons):
        layer = i % len(struct.blocks)
        key, lp = ("heads", att) if i < len(struct.blocks) else ("neurons", ffn)
        p_unit = masks.gates[key][layer].prob_nonzero().detach()
        for slot, seg in units.group.slots:
            if slot.param != "weight":
                continue
            w = model.get_submodule(slot.module).weight
            per = p_unit.repeat_interleave(slot.layout[seg].factor)  # probability of each index along slot.dim
            probs = torch.ones(w.shape)
            probs *= per.view([-1 if d == slot.dim else 1 for d in range(w.dim())])
            probs *= hidden.view([-1 if d != slot.dim else 1 for d in range(w.dim())])
            brute += float((probs * lp[layer].detach()).sum())
            full += w.numel()
    assert struct.full_size() == full
    assert float(masks.expected_size()) == pytest.approx(brute, rel=1e-5)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_size_of_fixed_masks_counts_the_shrunk_matrices(name):
    model = MODELS[name]()
    struct, masks = _random_masks(model, seed=3)
    z = masks.final()
    left = size_of(struct, z)
    shrink_to_masks(model, struct, z=z)
    counted = 0
    for block in struct.blocks:
        for m in model.get_submodule(block).modules():
            if isinstance(m, torch.nn.Linear):
                counted += m.weight.numel()
    assert counted == left < struct.full_size()


# ------------------------------------------------------------- granularities
def _closed(struct, key):
    n, d = len(struct.blocks), struct.hidden
    z = {
        "attention": torch.ones(n),
        "ffn": torch.ones(n),
        "hidden": torch.ones(d),
        "heads": [torch.ones(u.size) for u in struct.heads],
        "neurons": [torch.ones(u.size) for u in struct.neurons],
    }
    if key == "attention":
        z["attention"][1] = 0
    elif key == "ffn":
        z["ffn"][0] = 0
    elif key == "heads":
        z["heads"][0][1] = 0
        z["heads"][1][0] = 0.5  # a kept head's value is folded into its columns
    elif key == "neurons":
        z["neurons"][1][::3] = 0
    else:
        z["hidden"][::4] = 0
    return z


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("key", ["attention", "heads", "ffn", "neurons", "hidden"])
def test_masks_at_each_granularity_shrink_the_right_tensors(name, key, tmp_path):
    model = MODELS[name]()
    struct = cofi_structure(model, {"input_ids": IDS[:2]})
    z = _closed(struct, key)
    masks = CoFiMasks(struct, (), 0.9)
    masks.set_values(z)
    with hooked(mask_hooks(model, masks), root=model):
        masked = _logits(model)
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    report = shrink_to_masks(model, struct, z=z)
    after = {n: tuple(p.shape) for n, p in model.named_parameters()}
    changed = {n for n in shapes if after.get(n) != shapes[n]}
    block = {"attention": 1, "ffn": 0, "heads": 0, "neurons": 1}.get(key)
    if key == "hidden":
        assert report["hidden_kept"] == 48 and model.config.hidden_size == 48
        assert all(48 in after[n] for n in changed if n in after)
        assert any("embed" in n for n in changed) and any("norm" in n.lower() for n in changed)
    else:
        prefix = struct.blocks[block] + "."
        assert changed and all(n.startswith(prefix) for n in changed)  # only that block's tensors
        part = {
            "attention": ("attention", "attn"),
            "heads": ("attention", "attn"),
            "ffn": ("intermediate", "output", "mlp"),
            "neurons": ("intermediate", "output.dense", "mlp"),
        }[key]
        assert all(any(p in n for p in part) for n in changed), changed
        if key in ("attention", "ffn"):
            assert report[f"{key}_layers_removed"] == [block] and not any(
                n in after for n in changed if "dense" in n or "proj" in n
            )
        torch.testing.assert_close(_logits(model), masked, atol=1e-5, rtol=1e-5)  # masked == shrunk
    back = netslim.load(netslim.save(model, tmp_path / "c.safetensors"))
    torch.testing.assert_close(_logits(back), _logits(model), atol=0, rtol=0)


# ----------------------------------------------------------------- training
def test_lagrangian_drives_the_model_to_the_target_size():
    model = bert()
    before = sum(p.numel() for p in model.parameters())
    model = cofi_prune(
        model, task(), sparsity=0.5, train={"epochs": 40, "batch_size": 8, "lr": 1e-4}, gate_lr=0.05, lambda_lr=0.05
    )
    report = netslim.report_of(model).notes
    assert report["expected_sparsity_end"] == pytest.approx(0.5, abs=0.05)
    step = 4 * 16 * 64 / report["block_size_full"]  # one head: the largest unit (exact fit stays below it)
    assert 0.5 <= report["sparsity"] <= 0.5 + step
    assert report["params_after"] < before and _logits(model).shape == (4, 3)


def test_cofi_step_with_recovery_records_its_plans(tmp_path):
    cfg = make_config(
        {
            "method": "cofi",
            "sparsity": 0.4,
            "train": {"epochs": 1, "max_steps": 3, "batch_size": 8},
            "prune": ["heads", "neurons", "hidden"],
            "finetune": {"epochs": 1, "max_steps": 2, "batch_size": 8, "optimizer": "adamw", "lr": 1e-4},
        }
    )
    ctx = StepContext(task=task(), out_dir=tmp_path, reference=bert)
    model = apply(bert(), cfg, ctx)
    note = ctx.notes["cofi"]
    assert note["finetune"]["steps"] == 2 and 0.4 <= note["sparsity"] < 0.5
    assert ctx.info["prune_plans"] and model.config.hidden_size == note["hidden_kept"]
    back = netslim.load(netslim.save(model, tmp_path / "m.safetensors"))
    torch.testing.assert_close(_logits(back), _logits(model), atol=0, rtol=0)


# ----------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "fields, match",
    [
        ({"sparsity": 1.0}, "'sparsity'.*\\[0, 1\\)"),
        ({"sparsity": 0.0}, "'sparsity'.*removes nothing"),
        ({"sparsity": -0.2}, "'sparsity'"),
        ({"prune": ["heads", "bogus"]}, "'prune.1'"),
        ({"prune": ["heads", "heads"]}, "twice"),
    ],
)
def test_bad_configs_are_one_line(fields, match):
    with pytest.raises(NetslimError, match=match):
        make_config({"method": "cofi", **fields})


def test_a_target_no_mask_can_reach_fails_before_work():
    model = bert()
    struct = cofi_structure(model, {"input_ids": IDS[:2]})
    cfg = CoFiConfig(sparsity=0.6, prune=("heads", "neurons"), exclude_layers=(0,))  # at most half can go
    with pytest.raises(NetslimError, match="sparsity 0.6 cannot be reached.*at most 0.5"):
        check_reachable(cofi_structure(model, {"input_ids": IDS[:2]}, (0,)), cfg)
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(NetslimError, match="cannot be reached"):
        cofi_prune(model, task(), **cfg.model_dump())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    with pytest.raises(NetslimError, match="'exclude_layers'"):
        cofi_structure(model, {"input_ids": IDS[:2]}, (5,))
    check_reachable(struct, CoFiConfig(sparsity=0.95))  # every granularity: reachable


def test_cli_unreachable_cofi_target_is_exit_2_with_one_line(tmp_path):
    import subprocess
    import sys

    recipe = tmp_path / "c.yaml"
    recipe.write_text(
        "name: c\nsteps:\n  - method: cofi\n    sparsity: 0.9\n    prune: [heads, neurons]\n"
        "    exclude_layers: [0]\n  - method: evaluate\n"
    )
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
    assert len(lines) == 1 and "sparsity 0.9 cannot be reached" in lines[0] and "at most 0.5" in lines[0]
    assert not (tmp_path / "run").exists()
