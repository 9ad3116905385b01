"""Every config field is documented, and docs/configuration.md is what the generator writes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from boltzdiff.config import config_classes, markdown
from boltzdiff.errors import ConfigError


@pytest.mark.parametrize("cls", config_classes(), ids=lambda c: c.__name__)
def test_every_field_has_a_one_line_doc(cls):
    for f in dataclasses.fields(cls):
        doc = f.metadata.get("doc", "")
        assert doc.strip() and "\n" not in doc, f"{cls.__name__}.{f.name}"


def test_configuration_md_is_up_to_date():
    path = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
    assert path.read_text() == markdown(), "regenerate: python -m boltzdiff.config --markdown > docs/configuration.md"


def test_unknown_sample_key_names_the_nearest_field():
    from boltzdiff.config import SampleConfig

    with pytest.raises(ConfigError, match=r"unknown field 'nn' \(did you mean 'n'\?"):
        SampleConfig.from_dict({"nn": 10})
