"""Hostile and broken recipe files: one NetslimError each, fast, in bounded memory, with a
capped message; and the same caps on every echoed value (errors.shown)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import pytest

from netslim.core.config import make_config
from netslim.core.errors import NetslimError, bad_param, shown, unknown_name
from netslim.recipe import load_recipe, parse_recipe
from netslim.recipe.spec import MAX_RECIPE_BYTES, MAX_YAML_DEPTH, MAX_YAML_VALUES, load_yaml

OK_STEPS = "steps:\n  - method: evaluate\n"


def laughs(levels: int = 9, width: int = 9) -> str:
    """The classic "billion laughs": each level lists the previous one ``width`` times."""
    lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join(lines) + f"\nsteps: *l{levels - 1}\n"


HOSTILE = {  # name -> (file content, pattern of the one error)
    "billion_laughs": (laughs(), rf"expands to more than {MAX_YAML_VALUES:,} values"),
    "merge_key_bomb": (
        "a0: &a0 {x: 1, y: 2}\n"
        + "".join(f"a{i}: &a{i} {{<<: [*a{i - 1}, *a{i - 1}], k{i}: 1}}\n" for i in range(1, 30))
        + OK_STEPS,
        "expands to more than",
    ),
    "recursive_alias": ("a: &a [1, *a]\n" + OK_STEPS, "recursive YAML alias"),
    "deep_flow": ("[" * 200_000 + "]" * 200_000, f"nested more than {MAX_YAML_DEPTH} levels"),
    "deep_block": ("".join(" " * i + f"k{i}:\n" for i in range(200)), "nested more than"),
    "flat_list": ("x: [" + ", ".join(["1"] * 200_000) + "]\n" + OK_STEPS, "expands to more than"),
    "long_int": ("seed: " + "9" * 100_000 + "\n" + OK_STEPS, r"a number of 100,000 characters \(at most 100\)"),
    "sexagesimal_int": ("seed: 1" + ":59" * 100_000 + "\n" + OK_STEPS, "a number of"),
    "duplicate_key": (
        "name: a\nsteps:\n  - method: evaluate\nname: b\n",
        r"at line 4: duplicate key 'name' \(first given at line 1\)",
    ),
    "duplicate_key_in_step": (
        "steps:\n  - method: finetune\n    epochs: 1\n    epochs: 2\n",
        r"at line 4: duplicate key 'epochs' \(first given at line 3\)",
    ),
    "duplicate_flow_key": ("steps: [{method: evaluate, method: export}]\n", "duplicate key 'method'"),
    "huge_string_echoed": ("name: [" + "x" * 900_000 + "]\n" + OK_STEPS, r"field 'name'.*\(900,000 chars\)"),
    "huge_unknown_key": ("? " + "k" * 500_000 + "\n: 1\n" + OK_STEPS, r"field 'kkkk.*\(500,000 chars\)"),
    "huge_step_value": (
        "steps:\n  - method: finetune\n    lr: [" + ", ".join(["x" * 50] * 5000) + "]\n",
        r"'lr'.*\(5,000 items\)",
    ),
    "c1_control": ("name: a\x85b\x86\n" + OK_STEPS, r"is not YAML text: character U\+0086"),
}

BINARY = {  # name -> (bytes, pattern)
    "latin1": ("name: café\n".encode("latin-1") + OK_STEPS.encode(), r"is not UTF-8 text \(byte 0xe9 at offset 9\)"),
    "utf16_bom": (("name: x\n" + OK_STEPS).encode("utf-16"), r"is not UTF-8 text \(byte 0xff at offset 0\)"),
    "utf16le_no_bom": (("name: x\n" + OK_STEPS).encode("utf-16-le"), r"is not UTF-8 text \(byte 0x00 at offset 1\)"),
    "binary": (bytes(range(256)) * 4, r"is not UTF-8 text \(byte 0x00 at offset 0\)"),
    "gzip_garbage": (b"\x1f\x8b\x08\x00" + bytes(200), r"is not UTF-8 text \(byte 0x8b at offset 1\)"),
    "too_large": (b"# padding\n" * (MAX_RECIPE_BYTES // 10 + 1), r"too large for a recipe \(more than 1,048,576 bytes"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_yaml_is_one_capped_error_fast(tmp_path, name):
    text, pattern = HOSTILE[name]
    path = tmp_path / "r.yaml"
    path.write_text(text, encoding="utf-8")
    t0 = time.process_time()  # CPU time: a loaded machine stretches the wall clock, not the work
    with pytest.raises(NetslimError, match=pattern) as err:
        load_recipe(path)
    assert time.process_time() - t0 < 1.0
    msg = str(err.value)
    assert len(msg) < 800 and "\n" not in msg, msg[:1000]


@pytest.mark.parametrize("name", sorted(BINARY))
def test_files_that_are_not_utf8_text_say_so(tmp_path, name):
    data, pattern = BINARY[name]
    path = tmp_path / "r.yaml"
    path.write_bytes(data)
    with pytest.raises(NetslimError, match=pattern):
        load_recipe(path)


def test_a_utf8_bom_anchors_and_merge_keys_within_budget_are_fine(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_bytes(
        b"\xef\xbb\xbf"
        + textwrap.dedent("""\
        name: caf\u00e9
        steps:
          - &tune {method: finetune, epochs: 1, max_steps: 2}
          - {<<: *tune, epochs: 2}
          - *tune
    """).encode("utf-8")
    )
    recipe = load_recipe(path)
    assert recipe.name == "caf\u00e9"
    assert [(s.method, s.epochs) for s in recipe.steps] == [("finetune", 1), ("finetune", 2), ("finetune", 1)]


def test_rejected_hostile_yaml_stays_within_200_mb_and_1_s(tmp_path):
    """In a child process (the probe saw 8.5 GB and 86 s): peak RSS growth and time while
    every hostile file is rejected, address space capped so that a regression fails fast."""
    files = []
    for name, (text, _) in HOSTILE.items():
        files.append(tmp_path / f"{name}.yaml")
        files[-1].write_text(text, encoding="utf-8")
    child = textwrap.dedent("""\
        import json, resource, sys, time
        from netslim.core.errors import NetslimError
        from netslim.recipe import load_recipe
        vm = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 30), vm + (1 << 30)))  # a runaway dies, not the host
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out = {}
        for path in sys.argv[1:]:
            t = time.perf_counter()
            try:
                load_recipe(path)
                out[path] = ["accepted", 0, 0]
            except NetslimError as e:
                out[path] = ["NetslimError", time.perf_counter() - t, len(str(e))]
        out["grew_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        print(json.dumps(out))
    """)
    proc = subprocess.run(
        [sys.executable, "-c", child, *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res.pop("grew_kb") < 200 * 1024
    for path, (kind, seconds, length) in res.items():
        assert kind == "NetslimError", path
        assert seconds < 1.0, (path, seconds)
        assert length < 800, path


# ------------------------------------------------------------- values echoed in errors
def test_shown_caps_strings_containers_and_big_ints():
    assert shown("abc") == "'abc'"
    s = shown("a" * 10**6)
    assert len(s) < 260 and s.endswith("(1,000,000 chars)")
    assert shown(10**5000).startswith("<an int of 16,610 bits>")
    nested: list = ["lol"] * 10
    for _ in range(9):
        nested = [nested] * 10  # 10^10 leaves, shared
    t0 = time.process_time()
    assert len(shown(nested)) < 300 and time.process_time() - t0 < 0.5
    assert shown(list(range(10**6))).endswith("(1,000,000 items)")


def test_messages_from_configs_and_names_are_capped():
    huge = "z" * 10**6
    for make in (lambda: unknown_name("model", huge, ["a"]), lambda: bad_param("X", "y", "a float", huge)):
        assert len(str(make())) < 400
    for data in ({"method": huge}, {"method": "finetune", "lr": huge}, {"method": "finetune", huge: 1}, huge):
        with pytest.raises(NetslimError) as err:
            make_config(data, "step 1")
        assert len(str(err.value)) < 800, str(err.value)[:1000]


# --------------------------------------------------------- values that could run forever
@pytest.mark.parametrize(
    "recipe, pattern",
    [
        ({"data": {"limit": -5}}, r"'limit' must be an int in \[1, 2,147,483,647\].*got -5"),
        ({"data": {"limit": 2**31}}, r"'limit' must be an int in \[1, 2,147,483,647\].*got 2147483648"),
        ({"data": {"limit": 0}}, r"'limit' must be an int in \[1, 2,147,483,647\].*got 0"),
        ({"data": {"limit": "all"}}, r"'limit' must be an int in \[1, 2,147,483,647\].*got 'all'"),
        ({"data": {"limit": True}}, r"'limit' must be an int in \[1, 2,147,483,647\].*got True"),
        ({"steps": [{"method": "finetune", "epochs": 10**12}]}, r"'epochs'.*less than or equal to 10000"),
        ({"steps": [{"method": "train", "max_steps": 10**12}]}, r"'max_steps'.*less than or equal to"),
        ({"steps": [{"method": "finetune", "warmup_epochs": 1e9}]}, r"'warmup_epochs'.*less than or equal to"),
        ({"seed": 10**30}, r"'seed'.*less than or equal to"),
        ({"measure": {"repeats": 10**9}}, r"'measure.repeats'.*less than or equal to 10000"),
    ],
)
def test_counts_that_could_run_forever_are_rejected(recipe, pattern):
    with pytest.raises(NetslimError, match=pattern):
        parse_recipe({"steps": [{"method": "evaluate"}], **recipe})


# --------------------------------------------------- a stored HF config names no kernel
@pytest.mark.parametrize("key", ["attn_implementation", "_attn_implementation"])
@pytest.mark.parametrize("value", ["kernels-community/flash-attn", "flash_attention_2", {"": "kernels-community/x"}])
def test_stored_hf_config_never_selects_a_hub_kernel(monkeypatch, caplog, key, value):
    import socket

    from netslim.models.hf_arch import build_hf, describe_hf
    from netslim.models.hf_tiny import tiny_llama

    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    arch = describe_hf(tiny_llama())
    model = build_hf({**arch, "config": {**arch["config"], key: value}})  # unpatched: ImportError / a download
    assert model.config._attn_implementation == "sdpa"
    assert "replaced by 'sdpa'" in caplog.text
    assert build_hf({**arch, "config": {**arch["config"], key: "eager"}}).config._attn_implementation == "eager"


@pytest.mark.parametrize(
    "value",
    [
        "!!timestamp ''",
        "!!timestamp abc",
        "!!int ''",
        "!!int abc",
        "!!float ''",
        "!!float x1",
        "!!bool ''",
        "!!bool maybe",
    ],
)
def test_a_tagged_value_that_does_not_parse_is_one_line_naming_it(tmp_path, value):
    """PyYAML's own constructors fail on these with AttributeError / IndexError / KeyError /
    ValueError (found by the recipe fuzz test: ``!!timestamp ''``); netslim says which value."""
    path = tmp_path / "r.yaml"
    path.write_text(f"name: x\nsteps: []\nnote: {value}\n")
    with pytest.raises(NetslimError, match=r"at line 3: .* is not a valid YAML (timestamp|int|float|bool)"):
        load_yaml(path)


def test_tagged_values_that_parse_still_load(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("a: !!int '12'\nb: !!float '0.5'\nc: !!bool 'true'\nd: !!str 12\n")
    assert load_yaml(path) == {"a": 12, "b": 0.5, "c": True, "d": "12"}
