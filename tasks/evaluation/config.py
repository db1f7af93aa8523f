"""The evaluation flow's parameters (rendered as a form in the Prefect UI)."""
from __future__ import annotations

from typing import Annotated

from pydantic import Field

from settings import Params

Rate = Annotated[float, Field(gt=0, lt=1)]


class EvalConfig(Params):
    far_targets: tuple[Rate, ...] = Field((1e-2, 1e-3), description="TAR is reported at these false-accept rates")
    calibrate_far: Rate = Field(1e-3, description="a second stored threshold, for this false-accept rate")
    official: bool = Field(True, description="LFW View 1 and View 2 when the dataset has them")
    nway: tuple[Annotated[int, Field(ge=2)], ...] = Field((5, 20), description="N of the N-way one-shot tasks")
    nway_tasks: int = Field(2000, ge=1, description="seeded tasks per N")
    tta_passes: int = Field(0, ge=0, description="extra augmented passes averaged into every score "
                                                 "(face-comparer used 50); reported in evaluation-tta<N>/")
    flip: bool | None = Field(None, description="average each image's embedding with its mirror image's; "
                                                "default: what the model's manifest says (matching does the same)")
    untouched: bool = Field(True, description="for a model fine-tuned from pretrained weights: score the pretrained "
                                             "network untouched beside it on the same faces, pairs and people, and "
                                             "both one's and dlib-bin's throughput on the same photos")
    seed: int = 42
