"""Fuzz suite (issue 23): hostile recipes and damaged artifacts, time-bounded and reproducible.

Invariants:

* **Recipes** generated from every registered method's JSON schema (values of the right and of
  wrong types, unknown and missing fields) and YAML text corrupted at random (byte flips, cuts,
  inserted bytes, duplicated keys, deep nesting, anchor bombs, other encodings, long numbers):
  ``parse_recipe`` / ``load_recipe`` return a Recipe or raise NetslimError - never another
  exception type, never a hang (each example under an alarm), messages under 2,000 characters.
* **Artifacts** in every format netslim writes for a small model (plain, sparse CSR, packed int4,
  dynamic int8, static int8, ``.nsz``) with random byte flips (length prefix, header, description,
  integrity record, data), cuts, appended bytes and rewritten header entries: ``netslim.load``
  raises NetslimError naming the file, or returns a model whose state dict is bit-identical to
  the original. With ``verify=False`` (no hashing) the structural checks must still keep a
  damaged file away from the kernels: NetslimError or a model that runs. Files crafted with
  *valid* checksums (CSR index arrays, description fields) must be rejected or load a model
  that runs - never a crash or an allocation the file cannot back.

Every load of a damaged file runs in a forked child of one worker process (``_WORKER``), under
an alarm and an address-space limit: a segfault, a hang or a runaway allocation fails the test
with the example that caused it instead of killing pytest.

Reproducible: ``derandomize=True`` and no example database; the sizes keep the file under a
minute on one core (``OMP_NUM_THREADS=1``).
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

import netslim
from netslim.core.artifact_schema import DESCRIPTION_KEY, INTEGRITY_KEY, integrity_record
from netslim.core.config import methods
from netslim.core.errors import NetslimError
from netslim.recipe import Recipe, load_recipe, parse_recipe

if not hasattr(os, "fork"):
    pytest.skip("damaged artifacts load in forked children (POSIX)", allow_module_level=True)

MAX_MESSAGE = 2_000
EXAMPLE_SECONDS = 60  # one recipe example; a hang is an example that outlives it (generous: CI machines are shared)


def fuzz_settings(n: int):
    return settings(
        max_examples=n,
        deadline=None,
        derandomize=True,
        database=None,
        print_blob=True,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
            HealthCheck.large_base_example,
        ],
    )


# ===================================================================================== recipes
class Hang(BaseException):
    """An example ran past EXAMPLE_SECONDS (BaseException: no ``except Exception`` swallows it)."""


def _bounded(fn, *args):
    """``fn(*args)``: a Recipe or NetslimError (returned), within EXAMPLE_SECONDS."""

    def alarm(signum, frame):
        raise Hang(f"no answer in {EXAMPLE_SECONDS} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(EXAMPLE_SECONDS)
    try:
        return fn(*args)
    except NetslimError as e:
        return e
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _check_outcome(result) -> None:
    if isinstance(result, NetslimError):
        text = str(result)
        assert text and len(text) < MAX_MESSAGE, f"message of {len(text):,} chars: {text[:300]}"
    else:
        assert isinstance(result, Recipe), type(result)


# Values of any type a YAML document can hold (and a Python caller can pass).
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, -1, 1, 2**31, 2**63, 10**12, 10**400]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e308, -0.0, 1e-320]),
    st.text(max_size=30),
    st.sampled_from(["", "x" * 5_000, "re:(", "re:conv.*", "*", "fc1", "\x00", "é" * 300]),
)
HOSTILE = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=10), st.integers(), st.none()), inner, max_size=4),
    ),
    max_leaves=12,
)
SELECTORS = st.sampled_from(
    [
        "fc1",
        "fc*",
        "re:fc[12]",
        "re:(",
        "re:",
        "nothing_here",
        "conv1",
        "Linear",
        "torch.nn.Linear",
        "layer1.0.conv1",
        "*",
    ]
)


def _number(lo, hi, integer: bool):
    if integer:
        return st.integers(-(10**13) if lo is None else int(lo), 10**13 if hi is None else int(hi))
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False)


def from_schema(schema: dict, defs: dict, depth: int = 0) -> st.SearchStrategy:
    """Values valid for the JSON schema ``schema`` (pydantic's), bounds included."""
    if depth > 6:
        return st.none()
    if "$ref" in schema:
        return from_schema(defs[schema["$ref"].rsplit("/", 1)[-1]], defs, depth + 1)
    if "anyOf" in schema:
        return st.one_of([from_schema(s, defs, depth + 1) for s in schema["anyOf"]])
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    lo = schema.get("minimum", schema.get("exclusiveMinimum"))
    hi = schema.get("maximum", schema.get("exclusiveMaximum"))
    if kind == "integer":
        return _number(lo, hi, True)
    if kind == "number":
        return st.one_of(_number(lo, hi, False), _number(lo, hi, True))
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "string":
        return st.one_of(SELECTORS, st.text(max_size=12))
    if kind == "array":
        return st.lists(from_schema(schema.get("items", {}), defs, depth + 1), max_size=4)
    if kind == "object":
        if "properties" in schema:
            return st.fixed_dictionaries(
                {}, optional={k: from_schema(v, defs, depth + 1) for k, v in schema["properties"].items()}
            )
        extra = schema.get("additionalProperties")
        values = from_schema(extra, defs, depth + 1) if isinstance(extra, dict) else HOSTILE
        return st.dictionaries(st.one_of(SELECTORS, st.text(max_size=8)), values, max_size=3)
    return HOSTILE


_SCHEMAS = {name: m.config_cls.model_json_schema() for name, m in sorted(methods().items())}


@st.composite
def steps(draw):
    name = draw(st.sampled_from(sorted(_SCHEMAS)))
    schema = _SCHEMAS[name]
    props = schema.get("properties", {})
    step: dict = {"method": name}
    for field in draw(st.lists(st.sampled_from(sorted(props)), max_size=4, unique=True)) if props else []:
        right = from_schema(props[field], schema.get("$defs", {}))
        step[field] = draw(st.one_of(right, right, right, HOSTILE))  # mostly the right type
    mutation = draw(st.sampled_from(["none"] * 6 + ["unknown_field", "no_method", "method_value", "odd_key"]))
    if mutation == "unknown_field":
        step[draw(st.text(min_size=1, max_size=20))] = draw(HOSTILE)
    elif mutation == "no_method":
        del step["method"]
    elif mutation == "method_value":
        step["method"] = draw(HOSTILE)
    elif mutation == "odd_key":  # YAML keys need not be strings: `1: x`, `null: x`, `true: x`
        step[draw(st.one_of(st.integers(-5, 5), st.none(), st.booleans()))] = draw(HOSTILE)
    return step


@st.composite
def recipes(draw) -> dict:
    recipe: dict = {
        "name": draw(st.one_of(st.text(max_size=12), HOSTILE)),
        "steps": draw(st.one_of(st.lists(steps(), min_size=1, max_size=3), HOSTILE)),
    }
    optional = {
        "model": st.one_of(st.sampled_from(["lenet300", "lenet5", "nope"]), HOSTILE),
        "description": st.one_of(st.text(max_size=20), HOSTILE),
        "data": st.one_of(st.fixed_dictionaries({"limit": st.one_of(st.integers(-10, 10**15), HOSTILE)}), HOSTILE),
        "measure": st.one_of(
            st.fixed_dictionaries(
                {},
                optional={
                    "batch_size": st.integers(-2, 10**7),
                    "repeats": st.integers(-2, 10**5),
                    "threads": st.integers(-2, 10**5),
                },
            ),
            HOSTILE,
        ),
        "seed": st.one_of(st.integers(-1, 2**64), HOSTILE),
        "unknown_key": HOSTILE,
    }
    for key in draw(st.lists(st.sampled_from(sorted(optional)), max_size=3, unique=True)):
        recipe[key] = draw(optional[key])
    if draw(st.integers(0, 9)) == 0:
        recipe[draw(st.one_of(st.integers(-3, 3), st.none(), st.booleans()))] = draw(HOSTILE)
    return recipe


@fuzz_settings(1000)
@given(recipe=recipes())
@example(recipe={"steps": [{"method": "evaluate", 1: 2}]})  # YAML `1: 2` in a step: keys need not be strings
def test_recipe_from_method_schemas_is_a_recipe_or_netslim_error(recipe):
    _check_outcome(_bounded(parse_recipe, recipe, "fuzz"))


def test_every_method_schema_makes_a_valid_example():
    """The harness reaches past parsing: every registered method's own example is a valid recipe
    step (so an error in the fuzz tests comes from the drawn values, not the method)."""
    for name, method in methods().items():
        if not method.config_cls.__module__.startswith("netslim."):
            continue  # methods other test modules register for themselves (with their own prerequisites)
        cfg = method.config_cls.example()
        assert isinstance(parse_recipe({"steps": [cfg.to_dict()]}), Recipe), name


# ------------------------------------------------------------------------------- YAML text
def _billion_laughs(width: int, levels: int) -> str:
    lines = ["lol0: &a0 [lol]"]
    for i in range(1, levels):
        lines.append(f"lol{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


def _nested(depth: int, flow: bool) -> str:
    if flow:
        return "deep: " + "[" * depth + "]" * depth + "\n"
    return "".join("  " * i + "a:\n" for i in range(depth)) + "  " * depth + "a: 1\n"


CORRUPTIONS = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 2**32), st.integers(1, 255)),
    st.tuples(st.just("cut"), st.integers(0, 2**32)),
    st.tuples(st.just("insert"), st.integers(0, 2**32), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("duplicate_line"), st.integers(0, 2**32)),
    st.tuples(st.just("nest"), st.integers(1, 3_000), st.booleans()),
    st.tuples(st.just("laughs"), st.integers(2, 12), st.integers(2, 40)),
    st.tuples(st.just("recursive_alias"), st.sampled_from(["&a [*a]", "&a {x: *a}", "*nope", "&a [1, <<: *a]"])),
    st.tuples(st.just("merge"), st.integers(1, 50)),
    st.tuples(st.just("encoding"), st.sampled_from(["utf-16", "utf-16-le", "utf-32", "latin-1", "bom"])),
    st.tuples(st.just("long_number"), st.integers(50, 200_000), st.sampled_from(["9", "1:", "0x", "1e", "."])),
    st.tuples(
        st.just("tag"),
        st.sampled_from(
            ["!!python/object:os.system", "!!binary", "!!set", "!!omap", "!!timestamp", "!custom", "!!float"]
        ),
    ),
)


def _corrupt_yaml(data: bytes, op: tuple) -> bytes:
    kind, *args = op
    if kind == "flip" and data:
        b = bytearray(data)
        b[args[0] % len(b)] ^= args[1]
        return bytes(b)
    if kind == "cut":
        return data[: args[0] % (len(data) + 1)]
    if kind == "insert":
        at = args[0] % (len(data) + 1)
        return data[:at] + args[1] + data[at:]
    if kind == "duplicate_line":  # a key given twice (or a list item repeated)
        lines = data.splitlines(keepends=True) or [b""]
        at = args[0] % len(lines)
        return b"".join(lines[: at + 1] + [lines[at]] + lines[at + 1 :])
    if kind == "nest":
        return _nested(args[0] if args[1] else min(args[0], 300), args[1]).encode() + data
    if kind == "laughs":
        return _billion_laughs(args[1], args[0]).encode() + data
    if kind == "recursive_alias":
        return f"loop: {args[0]}\n".encode() + data
    if kind == "merge":
        base = "base: &b {epochs: 1}\n" + "".join(
            f"m{i}: &m{i} {{<<: *{'b' if i == 0 else f'm{i - 1}'}}}\n" for i in range(args[0])
        )
        return base.encode() + data
    if kind == "encoding":
        text = data.decode("utf-8", "replace")
        if args[0] == "bom":
            return b"\xef\xbb\xbf" + data
        return text.encode(args[0], "replace")
    if kind == "long_number":
        return f"seed: {args[1] * (args[0] // len(args[1]))}\n".encode() + data
    if kind == "tag":
        return f"name: {args[0]} x\n".encode() + data
    return data


@fuzz_settings(800)
@given(recipe=recipes(), ops=st.lists(CORRUPTIONS, max_size=3), unicode=st.booleans(), flow=st.booleans())
@example(recipe={"name": "x", "steps": [{"method": "evaluate"}], 1: 2}, ops=[], unicode=False, flow=False)
@example(recipe={"name": "", "steps": []}, ops=[("cut", 0), ("tag", "!!timestamp")], unicode=False, flow=False)
def test_corrupted_recipe_yaml_is_a_recipe_or_netslim_error(tmp_path_factory, recipe, ops, unicode, flow):
    text = yaml.safe_dump(recipe, allow_unicode=unicode, default_flow_style=flow, sort_keys=False)
    data = text.encode("utf-8")
    for op in ops:
        data = _corrupt_yaml(data, op)
    path = tmp_path_factory.getbasetemp() / "fuzz_recipe.yaml"
    path.write_bytes(data)
    _check_outcome(_bounded(load_recipe, path))


# =================================================================================== artifacts
def _lenet300() -> torch.nn.Module:
    torch.manual_seed(0)
    return netslim.build_model("lenet300").eval()


def _sparse() -> torch.nn.Module:
    """The demo recipe's artifact: global magnitude 90 %, masks baked, CSR layers (fc3 dense kernel)."""
    from netslim.core.masks import make_permanent
    from netslim.prune import SparseLinear, magnitude_prune

    m = _lenet300()
    magnitude_prune(m, sparsity=0.9, scope="global")
    make_permanent(m)
    m.fc1 = SparseLinear.from_dense(m.fc1, "sparse")
    m.fc2 = SparseLinear.from_dense(m.fc2, "sparse")
    m.fc3 = SparseLinear.from_dense(m.fc3, "dense")
    return m


def _int4() -> torch.nn.Module:
    from netslim.quantize.weight_only import quantize_weights

    return quantize_weights(_lenet300(), bits=4, group_size=None)


def _dyn8() -> torch.nn.Module:
    from netslim.quantize import dynamic_int8

    return dynamic_int8(_lenet300())


def _static8() -> torch.nn.Module:
    from netslim.quantize import ptq_int8

    torch.manual_seed(0)
    model = netslim.build_model("lenet5").eval()
    return ptq_int8(model, torch.randn(32, 1, 28, 28, generator=torch.Generator().manual_seed(1)))


def _nsz_model() -> torch.nn.Module:
    from netslim.codec import ShareConfig, cluster_weights, round_codebooks
    from netslim.prune import magnitude_prune

    torch.manual_seed(0)
    m = netslim.build_model("lenet5").eval()
    magnitude_prune(m, sparsity=0.8, exclude="conv1")
    cluster_weights(m, ShareConfig(bits={"conv2": 4, "fc1": 3, "fc2": 5}, algorithm="lloyd"))
    round_codebooks(m)
    return m


def _lowbit8() -> torch.nn.Module:
    """Issue 21: pruned + static int4/int8 in the sparse low-bit storage (bitmask; fc2 2:4 with 2-bit
    indices), conv2 and fc1 on the sparse int8 kernel."""
    from netslim.prune import magnitude_prune, nm_prune
    from netslim.quantize.ptq import ptq_int8
    from netslim.quantize.sparse_lowbit import sparse_static

    torch.manual_seed(0)
    model = netslim.build_model("lenet5").eval()
    magnitude_prune(model, sparsity=0.8, scope="layer", exclude="fc2")
    nm_prune(model, n=2, m=4, include="fc2")
    model = ptq_int8(
        model,
        torch.randn(32, 1, 28, 28, generator=torch.Generator().manual_seed(1)),
        weight_bits={"conv1": 4, "fc1": 4},
    )
    model.conv2, model.fc1 = sparse_static(model.conv2, "sparse"), sparse_static(model.fc1, "sparse")
    return model


def _lowbit4() -> torch.nn.Module:
    """Issue 21: pruned + weight-only int4 (per channel) in the sparse low-bit storage."""
    from netslim.prune import magnitude_prune
    from netslim.quantize.weight_only import quantize_weights

    model = _lenet300()
    magnitude_prune(model, sparsity=0.7, scope="layer")
    return quantize_weights(model, bits=4, group_size=None)


BUILDERS = {
    "plain": _lenet300,
    "sparse": _sparse,
    "int4": _int4,
    "dyn8": _dyn8,
    "static8": _static8,
    "nsz": _nsz_model,
    "lowbit8": _lowbit8,
    "lowbit4": _lowbit4,
}
RUNS = ("sparse", "static8", "dyn8", "int4", "lowbit8", "lowbit4")  # formats whose loaded models run a forward pass
FORMATS = tuple(BUILDERS)


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a
    )


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("fuzz_artifacts")
    out = {}
    for fmt, build in BUILDERS.items():
        model = build()
        if fmt == "nsz":
            from netslim.codec import export_nsz

            out[fmt] = export_nsz(model, d / "lenet5.nsz", {"model": "lenet5", "dataset": "fashion-mnist"})
        else:
            out[fmt] = netslim.save(model, d / f"{fmt}.safetensors", {"model": "fuzz", "dataset": "fashion-mnist"})
    return out


# The worker: loads references once, then forks a child per job (a load of one damaged file,
# and a forward pass at batch 1 and 64 when asked), under an alarm and an address-space limit.
_WORKER = textwrap.dedent(r"""
    import json, logging, os, resource, signal, sys, traceback
    import torch
    torch.set_num_threads(1)
    import netslim
    from netslim.core.errors import NetslimError

    logging.disable(logging.WARNING)
    refs = {fmt: netslim.load(path).state_dict() for fmt, path in json.loads(sys.argv[1]).items()}
    X = torch.randn(64, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    for path in json.loads(sys.argv[1]).values():  # compile / load the native kernels before forking
        model = netslim.load(path)  # (outside inference_mode: a dynamic-int8 model loaded inside it fails)
        with torch.inference_mode():
            model(X)
    EXTRA_BYTES = int(sys.argv[2])

    def same(sd, ref):
        return sd.keys() == ref.keys() and all(sd[k].dtype == ref[k].dtype and sd[k].shape == ref[k].shape
                                               and torch.equal(sd[k], ref[k]) for k in ref)

    def one(job):
        try:
            model = netslim.load(job["path"], verify=job["verify"])
        except NetslimError as e:
            return {"load": "rejected", "message": str(e)}
        except BaseException as e:
            return {"load": "other", "error": f"{type(e).__name__}: {str(e)[:300]}",
                    "traceback": traceback.format_exc()[-2000:]}
        out = {"load": "same" if same(model.state_dict(), refs[job["format"]]) else "different"}
        if job["run"]:
            try:
                with torch.inference_mode():
                    y1, y64 = model(X[:1]), model(X)
                out["forward"] = "ok"
            except NetslimError as e:
                out["forward"] = "rejected"
                out["message"] = str(e)
            except BaseException as e:
                out["forward"] = "other"
                out["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        return out

    def vm_bytes():
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmSize:"))

    for line in sys.stdin:
        job = json.loads(line)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            signal.alarm(job["timeout"])
            limit = vm_bytes() + EXTRA_BYTES
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            try:
                result = one(job)
            except BaseException as e:
                result = {"load": "other", "error": f"{type(e).__name__}: {str(e)[:300]}"}
            os.write(w, json.dumps(result).encode())
            os._exit(0)
        os.close(w)
        chunks = []
        while True:
            chunk = os.read(r, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
        os.close(r)
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            result = {"load": "hang" if sig == signal.SIGALRM else f"signal {sig}"}
        elif os.waitstatus_to_exitcode(status) != 0 or not chunks:
            result = {"load": f"exit {os.waitstatus_to_exitcode(status)}"}
        else:
            result = json.loads(b"".join(chunks))
        print(json.dumps(result), flush=True)
""")


class Worker:
    """The pytest side of ``_WORKER``: one job at a time, restarted if it ever dies."""

    EXTRA_BYTES = 1 << 30  # address space a child may add: a file of < 1 MB has no use for more
    JOB_SECONDS = 15  # a load + forward of a < 1 MB model takes < 1 s; 15 s is a hang

    def __init__(self, refs: dict[str, Path]):
        self.refs = json.dumps({k: str(v) for k, v in refs.items()})
        self.proc = None

    def _start(self):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "NETSLIM_PROGRESS": "0"}
        self.stderr = tempfile.TemporaryFile()  # a file, not a pipe: a chatty worker never blocks on it
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER, self.refs, str(self.EXTRA_BYTES)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            env=env,
        )

    def load(self, path: Path, fmt: str, *, verify: bool = True, run: bool = False) -> dict:
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        job = {"path": str(path), "format": fmt, "verify": verify, "run": run, "timeout": self.JOB_SECONDS}
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            ready = sel.select(timeout=self.JOB_SECONDS + 120)  # + the worker's start (imports, references)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.close()
            self.stderr.seek(0)
            err = self.stderr.read()[-3000:].decode(errors="replace")
            raise AssertionError(f"the worker died or hung on {job}: {err}")
        return json.loads(line)

    def close(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc.stdin.close()
            self.proc.stdout.close()
            self.proc = None


@pytest.fixture(scope="module")
def worker(artifacts):
    w = Worker(artifacts)
    yield w
    w.close()


def _as_stored(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with every layer in the form ``netslim.save`` writes it (e.g. a pruned int8 layer as
    its sparse low-bit module, issue 21): what ``netslim.load`` gives back."""
    from netslim.core.serialize import _storage_forms
    from netslim.core.surgery import replace_module

    for name, stored in _storage_forms(model).items():
        replace_module(model, name, stored)
    return model


def test_every_format_round_trips_exactly(artifacts, worker):
    for fmt, path in artifacts.items():
        if fmt != "nsz":  # .nsz stores only the centroids in use: its reference is the file itself
            assert _same_state(netslim.load(path).state_dict(), _as_stored(BUILDERS[fmt]()).state_dict()), fmt
        assert worker.load(path, fmt, run=True) == {"load": "same", "forward": "ok"}, fmt


# ------------------------------------------------------------------------ damage to bytes
def _string_value(data: bytes, key: bytes, start: int, end: int) -> tuple[int, int]:
    """The byte range of the JSON string value of ``key`` inside data[start:end] (the header)."""
    at = data.find(b'"' + key + b'":"', start, end)
    if at < 0:
        return start, end
    i = first = at + len(key) + 4
    while i < end and data[i] != ord('"'):
        i += 2 if data[i] == ord("\\") else 1
    return first, max(first + 1, i)


def regions(data: bytes, fmt: str) -> dict[str, tuple[int, int]]:
    if fmt == "nsz":
        return {"head": (0, min(64, len(data))), "any": (0, len(data))}
    end = min(8 + int.from_bytes(data[:8], "little"), len(data))
    return {
        "length": (0, 8),
        "header": (8, end),
        "description": _string_value(data, DESCRIPTION_KEY.encode(), 8, end),
        "integrity": _string_value(data, INTEGRITY_KEY.encode(), 8, end),
        "data": (end, len(data)),
        "any": (0, len(data)),
    }


REGIONS = ("length", "header", "description", "integrity", "data", "any", "head")
DAMAGE = st.one_of(
    st.tuples(st.just("flip"), st.sampled_from(REGIONS), st.integers(0, 2**32), st.integers(1, 255)),
    st.tuples(st.just("zero"), st.sampled_from(REGIONS), st.integers(0, 2**32), st.integers(1, 64)),
    st.tuples(st.just("cut"), st.sampled_from(REGIONS), st.integers(0, 2**32)),
    st.tuples(st.just("append"), st.binary(min_size=1, max_size=16)),
)


def damage(data: bytes, fmt: str, op: tuple) -> bytes:
    kind, *args = op
    if kind == "append":
        return data + args[0]
    spans = regions(data, fmt)
    start, end = spans.get(args[0], spans["any"])
    start, end = min(start, len(data)), min(end, len(data))
    if end <= start:
        return data
    pos = start + args[1] % (end - start)
    if kind == "cut":
        return data[:pos]
    b = bytearray(data)
    if kind == "flip":
        b[pos] ^= args[2]
    else:  # a run of zero bytes (a torn write)
        b[pos : pos + args[2]] = bytes(len(b[pos : pos + args[2]]))
    return bytes(b)


def _assert_rejected_or_identical(out: dict, path: Path, what) -> None:
    assert out["load"] in ("rejected", "same"), f"{what}: {out}"
    if out["load"] == "rejected":
        assert path.name in out["message"], f"{what}: the message does not name the file: {out['message']}"
        assert len(out["message"]) < MAX_MESSAGE, f"{what}: message of {len(out['message']):,} chars"


@pytest.mark.parametrize("fmt", FORMATS)
@fuzz_settings(100)
@given(ops=st.lists(DAMAGE, min_size=1, max_size=3))
def test_damaged_artifact_is_rejected_or_identical(artifacts, worker, tmp_path_factory, fmt, ops):
    data = artifacts[fmt].read_bytes()
    for op in ops:
        data = damage(data, fmt, op)
    path = tmp_path_factory.getbasetemp() / f"damaged_{artifacts[fmt].name}"
    path.write_bytes(data)
    out = worker.load(path, fmt, run=fmt in RUNS)
    _assert_rejected_or_identical(out, path, ops)
    if out["load"] == "same" and "forward" in out:
        assert out["forward"] == "ok", f"{ops}: {out}"


@pytest.mark.parametrize("fmt", RUNS)
@fuzz_settings(60)
@given(ops=st.lists(DAMAGE, min_size=1, max_size=2))
def test_damaged_artifact_unverified_never_reaches_a_kernel_unchecked(artifacts, worker, tmp_path_factory, fmt, ops):
    """verify=False (no hashing): a flipped index or shape byte must still be caught by the
    structural checks before a kernel runs on it; flipped weight values load as different weights."""
    data = artifacts[fmt].read_bytes()
    for op in ops:
        data = damage(data, fmt, op)
    path = tmp_path_factory.getbasetemp() / f"unverified_{artifacts[fmt].name}"
    path.write_bytes(data)
    out = worker.load(path, fmt, verify=False, run=True)
    assert out["load"] in ("rejected", "same", "different"), f"{ops}: {out}"
    if out["load"] == "rejected":
        assert path.name in out["message"] and len(out["message"]) < MAX_MESSAGE, f"{ops}: {out}"
    elif out["load"] == "same":
        assert out["forward"] == "ok", f"{ops}: {out}"
    else:
        assert out["forward"] in ("ok", "rejected"), f"{ops}: {out}"


# ------------------------------------------------- rewritten header entries (sizes, dtypes)
HEADER_EDIT = st.tuples(
    st.integers(0, 1000),
    st.sampled_from(["shape", "dtype", "data_offsets"]),
    st.one_of(
        st.lists(st.one_of(st.integers(-2, 4), st.integers(0, 2**62), st.sampled_from([2**31, 2**40])), max_size=20),
        st.sampled_from(["F32", "F16", "BF16", "F64", "I8", "U8", "I16", "I32", "I64", "BOOL", "X9", ""]),
        HOSTILE,
    ),
)


def _rewrite_header(data: bytes, edit: tuple) -> bytes:
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    names = sorted(k for k in header if k != "__metadata__")
    index, field, value = edit
    header[names[index % len(names)]][field] = value
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + n :]


@pytest.mark.parametrize("fmt", ["plain", "sparse", "static8"])
@fuzz_settings(40)
@given(edit=HEADER_EDIT, verify=st.booleans())
@example(edit=(0, "dtype", []), verify=True)  # a JSON list where the dtype name belongs
def test_rewritten_header_entry_is_rejected_before_any_allocation(
    artifacts, worker, tmp_path_factory, fmt, edit, verify
):
    """A header whose tensor table lies (a 2^62-element shape, an unknown dtype, offsets past the
    end): rejected from the file's byte counts, in a child limited to 1 GiB more address space."""
    path = tmp_path_factory.getbasetemp() / f"table_{artifacts[fmt].name}"
    path.write_bytes(_rewrite_header(artifacts[fmt].read_bytes(), edit))
    out = worker.load(path, fmt, verify=verify, run=True)
    if verify:
        _assert_rejected_or_identical(out, path, edit)
    else:
        assert out["load"] in ("rejected", "same", "different") and out.get("forward") in (None, "ok", "rejected"), (
            f"{edit}: {out}"
        )


# ----------------------------------------------- crafted files with valid checksums
def _write_crafted(src: Path, dst: Path, desc: dict, tensors: dict[str, torch.Tensor]) -> Path:
    text = json.dumps(desc)
    save_file(tensors, str(dst), metadata={DESCRIPTION_KEY: text, INTEGRITY_KEY: integrity_record(text, tensors)})
    return dst


def _raw_description(path: Path) -> dict:
    n = int.from_bytes(path.read_bytes()[:8], "little")
    return json.loads(json.loads(path.read_bytes()[8 : 8 + n])["__metadata__"][DESCRIPTION_KEY])


CSR_EDIT = st.tuples(
    st.sampled_from(["fc1.crow", "fc1.col_idx", "fc2.crow", "fc2.col_idx"]),
    st.sampled_from(["set", "swap", "reverse", "shift", "truncate"]),
    st.integers(0, 2**31),
    st.one_of(st.integers(-(2**15), 2**15 - 1), st.sampled_from([-1, 0, 783, 784, 299, 300])),
)


def _edit_index(t: torch.Tensor, edit: tuple) -> torch.Tensor:
    _, how, pos, value = edit
    if not t.numel():  # truncated to nothing by an earlier edit
        return t
    t = t.clone()
    i = pos % t.numel()
    info = torch.iinfo(t.dtype)
    if how == "set":
        t[i] = max(info.min, min(info.max, value))
    elif how == "swap":
        j = (i + 1 + value % 7) % t.numel()
        t[i], t[j] = t[j].clone(), t[i].clone()
    elif how == "reverse":
        t = t.flip(0)
    elif how == "shift":
        t = (t.to(torch.int64) + value).clamp(info.min, info.max).to(t.dtype)
    else:
        t = t[:i]
    return t


@fuzz_settings(150)
@given(edits=st.lists(CSR_EDIT, min_size=1, max_size=3), verify=st.booleans())
def test_crafted_csr_indices_are_rejected_or_run(artifacts, worker, tmp_path_factory, edits, verify):
    """CSR index arrays rewritten *with valid checksums* (what an attacker, not a bit flip, makes):
    out-of-range or non-monotonic indices are rejected before the kernel; the rest run at batch 1
    and 64 without a crash."""
    src = artifacts["sparse"]
    tensors = load_file(str(src))
    for edit in edits:
        tensors[edit[0]] = _edit_index(tensors[edit[0]], edit)
    path = _write_crafted(
        src, tmp_path_factory.getbasetemp() / "crafted_csr.safetensors", _raw_description(src), tensors
    )
    out = worker.load(path, "sparse", verify=verify, run=True)
    assert out["load"] in ("rejected", "same", "different"), f"{edits}: {out}"
    if out["load"] == "rejected":
        assert path.name in out["message"], f"{edits}: {out['message']}"
    else:
        assert out["forward"] == "ok", f"{edits}: {out}"


def _leaves(obj, prefix=()):
    """Every (path, value) in a JSON value, containers included."""
    yield prefix, obj
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        yield from _leaves(v, prefix + (k,))


JSON_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.sampled_from([10**6, 10**9, 10**12, 2**63, -1, 0]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(
        [
            "torch.nn.modules.linear.Linear",
            "os.system",
            "netslim.prune.sparse.SparseLinear",
            "builtins.eval",
            "zoo",
            "user",
            "hf",
        ]
    ),
    st.lists(st.integers(-2, 2**20), max_size=4),
    st.dictionaries(st.text(max_size=6), st.integers(), max_size=3),
)


@pytest.mark.parametrize("fmt", ["plain", "sparse", "int4", "static8"])
@fuzz_settings(60)
@given(which=st.integers(0, 2**31), value=JSON_VALUES, drop=st.booleans())
def test_crafted_description_is_rejected_or_loads(artifacts, worker, tmp_path_factory, fmt, which, value, drop):
    """One field of the description replaced (or dropped) *with valid checksums*: NetslimError
    naming the file, or a model - never another exception, a crash, a hang or an allocation
    beyond the worker's limit (sizes come from the file's own byte counts)."""
    src = artifacts[fmt]
    desc = _raw_description(src)
    paths = [p for p, _ in _leaves(desc) if p]
    path_in = paths[which % len(paths)]
    parent = desc
    for k in path_in[:-1]:
        parent = parent[k]
    if drop and isinstance(parent, dict):
        del parent[path_in[-1]]
    else:
        parent[path_in[-1]] = value
    path = _write_crafted(src, tmp_path_factory.getbasetemp() / f"crafted_desc_{src.name}", desc, load_file(str(src)))
    out = worker.load(path, fmt, run=True)
    assert out["load"] in ("rejected", "same", "different"), f"{path_in} = {value!r}: {out}"
    if out["load"] == "rejected":
        assert path.name in out["message"] and len(out["message"]) < MAX_MESSAGE, f"{path_in}: {out['message']}"
    else:  # a self-consistent crafted model may fail its forward pass, but never crash (the child reports that)
        assert out.get("forward") in ("ok", "rejected", "other"), f"{path_in} = {value!r}: {out}"


@pytest.mark.parametrize(
    "field, value",
    [("padding", [0, 475_552]), ("padding", [3_000, 3_000]), ("dilation", [10**6, 10**6]), ("stride", [10**9, 1])],
)
def test_crafted_layer_arguments_do_not_hang_the_forward_pass(artifacts, worker, tmp_path, field, value):
    """A static-int8 conv whose padding / dilation / stride a crafted file (valid checksums) changes:
    rejected on load, or a forward pass that ends within the job's time - a 12x12 activation padded
    to 12x951,116 must not keep ``netslim eval`` busy for minutes."""
    src = artifacts["static8"]
    desc = _raw_description(src)
    desc["modules"]["conv2"]["kwargs"][field] = value
    path = _write_crafted(src, tmp_path / "crafted_conv.safetensors", desc, load_file(str(src)))
    out = worker.load(path, "static8", run=True)
    assert out["load"] in ("rejected", "same", "different"), out
    if out["load"] == "rejected":
        assert path.name in out["message"], out
