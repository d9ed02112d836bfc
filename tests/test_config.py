"""DropConfig: validation errors, versioned serialisation, block shorthand."""

import json

import numpy as np
import pytest

from layerdrop_patch import DropConfig
from layerdrop_patch.config import FORMAT_VERSION


def test_fields_read_back_and_blocks_shorthand():
    cfg = DropConfig(attn=[3, 1], mlp=[2])
    assert cfg.attn == [3, 1] and cfg.mlp == [2]
    blocks = DropConfig.blocks([4, 0])
    assert blocks.attn == [4, 0] and blocks.mlp == [4, 0]
    assert blocks.block_layers == [0, 4] and blocks.num_dropped == 4
    assert DropConfig(attn=[1, 2], mlp=[2, 5]).block_layers == [2]
    assert DropConfig().is_empty()


def test_round_trip_through_json_keeps_provenance():
    cfg = DropConfig(attn=[5, 2], mlp=[7], method="joint-drop", metric="cosine",
                     scores={"attn": [0.1, 0.2]}, calibration="c4 4x128", base_model="tiny")
    data = json.loads(json.dumps(cfg.to_dict()))
    assert data["format_version"] == FORMAT_VERSION
    back = DropConfig.from_dict(data)
    assert back == DropConfig(attn=[2, 5], mlp=[7], method="joint-drop", metric="cosine",
                              scores={"attn": [0.1, 0.2]}, calibration="c4 4x128", base_model="tiny",
                              library_version=cfg.library_version)


def test_from_dict_refuses_newer_versions_and_unknown_keys():
    data = DropConfig(attn=[1]).to_dict()
    with pytest.raises(ValueError, match="newer"):
        DropConfig.from_dict({**data, "format_version": FORMAT_VERSION + 1})
    with pytest.raises(ValueError, match="unknown keys.*'atn'"):
        DropConfig.from_dict({**data, "atn": [1]})
    with pytest.raises(ValueError, match="format_version"):
        DropConfig.from_dict({"attn": [1]})


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(attn=[8]), r"attn: layer index 8 is out of range.*8 decoder layers.*0\.\.7"),
        (dict(mlp=[-1]), r"mlp: layer index -1 is negative.*0\.\.7"),
        (dict(attn=[2, 2]), r"attn: layer index 2 is listed twice"),
    ],
)
def test_validate_names_the_index_and_range(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DropConfig(**kwargs).validate(8)


@pytest.mark.parametrize("bad", [[1.0], ["3"], [True], "12"])
def test_non_integer_indices_are_rejected(bad):
    with pytest.raises(TypeError, match="not an integer|must be a list"):
        DropConfig(attn=bad)


def test_numpy_integers_are_accepted():
    assert DropConfig(attn=[np.int64(3)]).validate(4).attn == [3]
