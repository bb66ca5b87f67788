"""Public response schemas (what clients see); stored and internal shapes live elsewhere."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class Modalities(BaseModel):
    used: list[str]
    missing: list[str]


class ModelRef(BaseModel):
    name: str
    version: str
    sha256: str


class SeriesAssignment(BaseModel):
    modality: str
    kind: str
    reason: str
    series_uid: str | None = None
    instances: int = 0
    filename: str | None = None


class StudyInfo(BaseModel):
    study_uid: str | None
    series_uids: dict[str, str]
    assignments: list[SeriesAssignment] = Field(default_factory=list)
    ignored: list[dict[str, str]] = Field(default_factory=list)


class NotGradable(BaseModel):
    """Why a study was not graded: a stable `code` to switch on, and what it means."""

    code: Literal["no-liver", "liver-cut", "no-lesion", "lesion-cut"]
    detail: str


class MaskInfo(BaseModel):
    """The mask the grade used (or would have used): whose, and what it holds."""

    source: Literal["upload", "pacs", "model"] = Field(
        description="the client's mask, a SEG of the study fetched from the PACS, or the segmenter's"
    )
    liver_ml: float | None = Field(description="liver with its lesions; null for a lesion-only mask")
    lesion_ml: float = Field(description="all lesions together")
    lesions: int = Field(description="lesions (26-connected components)")
    lesions_ml: list[float] = Field(default_factory=list, description="each lesion, largest first")
    lesion_center_mm: list[float] | None = Field(
        default=None, description="RAS+ centroid of the largest lesion: the centre of the grader's crop"
    )
    cut: list[str] = Field(default_factory=list, description="edges of the scan that cut the liver")
    subregions_ml: dict[str, float] | None = Field(
        default=None,
        description="BraTS: each sub-region's volume (edema, necrotic core, enhancing tumour); "
        "lesion_ml is the whole tumour",
    )
    model: ModelRef | None = Field(default=None, description="the segmenter, when it made the mask")


class Decision(BaseModel):
    """How the label follows from the probabilities, from the model's card."""

    rule: str
    weights: dict[str, float]
    fitted_on: str


class Prediction(BaseModel):
    id: str
    task: str
    gradable: bool = True
    label: str | None
    probabilities: dict[str, float] | None
    decision: Decision | None = Field(
        default=None, description="the label rule when it is not plain argmax (weights chosen on validation)"
    )
    not_gradable: list[NotGradable] = Field(default_factory=list, description="why no grade was given")
    mask: MaskInfo | None = None
    modalities: Modalities
    model: ModelRef
    warnings: list[str]
    study: StudyInfo
    links: dict[str, str]
    created: str


class ExplanationLink(BaseModel):
    kind: str
    href: str
    formats: list[str] = Field(default_factory=list)
    methods: list[str] = Field(default_factory=list)
    available: bool = True
    note: str | None = None


class ExplanationIndex(BaseModel):
    id: str
    task: str
    label: str | None
    explanations: list[ExplanationLink]


class GraphNode(BaseModel):
    id: int
    label: str
    centroid_mm: list[float]
    volume_ml: float
    mean_attention: float
    contribution: float


class GraphEdge(BaseModel):
    source: int
    target: int
    weight: float = Field(description="cosine distance between the features of the two touching regions")


class Contribution(BaseModel):
    """What a node's `contribution` is, and (for an additive method) how the sums add up."""

    method: Literal["integrated_gradients", "mean_attention"]
    unit: str
    description: str
    total: float | None = Field(default=None, description="the attribution summed over every voxel")
    regions_sum: float | None = Field(default=None, description="the nodes' contributions summed")
    outside_regions: float | None = Field(
        default=None, description="the voxels in no region: total - regions_sum"
    )
    logit_rise: float | None = Field(
        default=None,
        description="the predicted logit at the case minus at the baseline: what `total` approximates",
    )


class RegionGraph(BaseModel):
    id: str
    regions: str = Field(description="mask: anatomical regions of the mask; supervoxels: no mask was there")
    predicted_class: str
    nodes: list[GraphNode]
    edges: list[GraphEdge]
    contribution: Contribution
    prototype_distances: dict[str, float] | None = None
    note: str | None = None


class ModelInfo(BaseModel):
    name: str
    task: str
    version: str
    status: str
    reason: str | None
    served: bool
    classes: list[str]
    modalities: list[str]
    sha256: str
    providers: list[str]
    card: dict[str, Any]


class ModelList(BaseModel):
    models: list[ModelInfo]


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    ready: bool
    models: dict[str, str]
