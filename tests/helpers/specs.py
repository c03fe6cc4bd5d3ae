"""Shared helpers for the pipeline-spec tests: YAML snippets, one-problem assertions, protos."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from outrider.labels import parse_label_expr
from outrider.pipeline import Pipeline, SpecError, parse_pipeline
from outrider.v1 import common_pb2


def parse(text: str, base_dir: Path | None = None) -> Pipeline:
    return parse_pipeline(textwrap.dedent(text), filename="p.yaml", base_dir=base_dir)


def problems(text: str, base_dir: Path | None = None) -> list[str]:
    """Every problem of an invalid spec, as the ``FILE:LINE: field: message`` lines."""
    with pytest.raises(SpecError) as info:
        parse(text, base_dir)
    lines = str(info.value).splitlines()
    assert lines == [str(p) for p in info.value.problems]
    return lines


def only_problem(text: str, base_dir: Path | None = None) -> str:
    found = problems(text, base_dir)
    assert len(found) == 1, found
    return found[0]


def task_spec(body: str, extra: str = "") -> str:
    """A one-task pipeline whose task ``a`` has ``body`` (indented 4) after line 3."""
    return "name: p\ntasks:\n  a:\n" + textwrap.indent(textwrap.dedent(body), "    ") + extra


def good_proto() -> common_pb2.PipelineSpec:
    return common_pb2.PipelineSpec(name="p", tasks=[
        common_pb2.TaskSpec(name="a", argv=["echo a"], shell=True, outputs=["o"]),
        common_pb2.TaskSpec(name="b", argv=["python", "b.py"], inputs={"i": "a.o"}, after=["a"]),
    ])


def expr(key: str, op: str, *values: str) -> common_pb2.LabelExpr:
    return common_pb2.LabelExpr(key=key, op=op, values=list(values))


def affinity(text: str, weight: float) -> common_pb2.Affinity:
    return common_pb2.Affinity(expr=parse_label_expr(text), weight=weight)


PLACEMENT = """\
name: p
priority: -3
concurrency: 2
tenant: spiffe://acme.ml/submitter/alice
tasks:
  a:
    run: x
    outputs: [o]
    requires:
      gpus: 1
      gpu_memory: 40GiB
      gpu_model: H100
      labels: {tier: edge}
      match: ["site in (plant-7, plant-9)", "cuda >= 12.1", gpu exists]
      residency: [eu, eu-west]
      max_clock_skew: 500ms
    prefer:
      - tier = edge
      - {match: "site = plant-7", weight: 2.5}
    avoid: ["power = battery", {match: "tier = lab", weight: 3}]
  b:
    run: y
    inputs: {i: a.o}
"""
