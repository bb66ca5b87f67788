"""Public response schemas (what clients see); stored and internal shapes live elsewhere."""

from __future__ import annotations

from typing import Any

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


class Prediction(BaseModel):
    id: str
    task: str
    label: str
    probabilities: dict[str, float]
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
    label: str
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


class RegionGraph(BaseModel):
    id: str
    regions: str
    predicted_class: str
    nodes: list[GraphNode]
    edges: list[GraphEdge]
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
