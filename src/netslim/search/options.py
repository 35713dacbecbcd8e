"""Options shared by the search steps: where and how trials run, and the channel space."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from netslim.prune.criteria import criterion_field

DEFAULT_RATIOS = (0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75)
# The search ranks channels without calibration data: a group criterion of the weights alone.
ChannelCriterion = criterion_field("groups", needs=("weights",))


class TrialOptions(BaseModel):
    """Where a search's trials run. ``backend: ray`` needs ``netslim[search]``; ``address`` None
    starts a local Ray runtime with ``workers`` CPUs; on a cluster (see
    :mod:`netslim.search.trials`), ``address: HEAD:6379`` (or ``ray://HEAD:10001``, ``auto``)::

        trials: {backend: ray, address: "10.0.0.1:6379", retries: 2}
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    backend: Literal["serial", "ray"] = "serial"
    address: str | None = Field(
        None, description="Ray cluster address: HOST:PORT, ray://HOST:PORT or auto (None: a local runtime)"
    )
    workers: int = Field(2, ge=1, description="CPUs of the local Ray runtime (a cluster's CPUs decide there)")
    threads: int = Field(1, ge=1, description="torch threads inside each trial (same in both backends)")
    retries: int = Field(2, ge=0, le=100, description="times a trial whose Ray worker or node died is run again")
    log: str | None = Field(
        "trials.jsonl", description="JSONL trial log under the run's search/ folder (resume); null: no log"
    )


class ChannelSpaceOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    ratios: tuple[float, ...] = Field(DEFAULT_RATIOS, description="share of each group's channels removed")
    criterion: ChannelCriterion = Field(
        "l2",
        description="ranks the channels a ratio removes: a group criterion that needs only the weights "
        "(l1, l2, l2_bn, bn_scale, random, or one registered with netslim.prune.register_criterion)",
    )
    min_keep_ratio: float = Field(0.1, gt=0, le=1)
    round_to: int = Field(1, ge=1)
    exclude: tuple[str, ...] = ()
