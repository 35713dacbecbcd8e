"""Serial and Ray (2 local workers) searches agree for a fixed seed. Starts a Ray runtime: slow."""

import pytest
import torch

pytest.importorskip("ray")

from netslim.search.cem import cem_search, policy_accuracy
from netslim.search.channels import ChannelSpace
from netslim.search.trials import TrialRunner

X = torch.randn(1, 1, 28, 28)


@pytest.mark.slow
def test_serial_and_ray_give_the_same_best_policy(tiny_resnet, val_subset, tmp_path):
    import ray

    space = ChannelSpace(tiny_resnet, X, options=(0.0, 0.25, 0.5, 0.75))
    out = {}
    for backend in ("serial", "ray"):
        runner = TrialRunner(
            policy_accuracy,
            {"space": space, "val": val_subset},
            seed=11,
            backend=backend,
            workers=2,
            log_path=tmp_path / f"{backend}.jsonl",
            fingerprint="x",
        )
        out[backend] = cem_search(space, runner, 0.5 * space.dense_cost(), generations=2, population=4, seed=11)
    try:
        assert out["ray"].best == out["serial"].best
        assert [h["rewards"] for h in out["ray"].history] == [h["rewards"] for h in out["serial"].history]
        logs = [(tmp_path / f"{b}.jsonl").read_text().count("\n") for b in ("serial", "ray")]
        assert logs[0] == logs[1] == 9
    finally:
        ray.shutdown()
