"""The names README and DESIGN promise are importable from the package root."""

import layerdrop_patch


def test_every_public_name_resolves():
    for name in layerdrop_patch.__all__:
        assert getattr(layerdrop_patch, name) is not None, name


def test_unknown_attribute_is_an_attribute_error():
    import pytest

    with pytest.raises(AttributeError, match="no attribute 'aply_drop'"):
        layerdrop_patch.aply_drop  # noqa: B018
