"""The compression maps gamma(alpha): exact values, ranges, serialisation (no torch needed)."""

import json
import math

import pytest

from lcs.errors import ConfigError
from lcs.subspace.levels import (QuantizationMap, StructuredMap, UnstructuredMap, make_map, map_from_dict,
                                 map_to_dict, parse_level)


def test_unstructured_keep_is_alpha_and_kept_count_floors_the_zeroed_part():
    m = UnstructuredMap()
    assert m.level(0.1).keep == 0.1
    assert m.alpha_range == (0.025, 1.0)
    # floor((1 - keep) * numel) smallest are zeroed
    assert UnstructuredMap.kept_count(1000, 0.1) == 100
    assert UnstructuredMap.kept_count(10, 0.25) == 10 - math.floor(7.5)
    assert UnstructuredMap.kept_count(144, 0.025) == 144 - math.floor(0.975 * 144)
    assert UnstructuredMap.kept_count(7, 1.0) == 7
    with pytest.raises(ConfigError):
        m.level(0.01)


def test_structured_width_line_and_channel_rounding():
    m = StructuredMap()
    assert m.level(0.0).width == 0.25
    assert m.level(1.0).width == 1.0
    assert m.level(0.5).width == pytest.approx(0.625)
    assert StructuredMap.channels(16, 0.25) == 4
    assert StructuredMap.channels(10, 0.25) == 3  # 2.5 rounds half up
    assert StructuredMap.channels(3, 0.1) == 1  # never fewer than one
    assert StructuredMap.channels(64, 0.625) == 40
    assert m.alpha_for(0.625) == pytest.approx(0.5)


def test_quantization_bins_are_right_closed_and_cover_3_to_8_bits():
    m = QuantizationMap()
    assert m.bit_widths == (3, 4, 5, 6, 7, 8)
    assert [m.bits(a) for a in (0.0, 0.1, 1 / 6, 0.17, 2 / 6, 0.5, 0.9, 1.0)] == [3, 3, 3, 4, 4, 5, 8, 8]
    # the paper's evaluation grid sits just below the bin edges
    assert [m.bits(a) for a in (0.166, 0.333, 0.499, 0.666, 0.833, 1.0)] == [3, 4, 5, 6, 7, 8]
    for b in m.bit_widths:
        assert m.bits(m.alpha_for(b)) == b
    assert QuantizationMap.int_range(3) == (-4, 3)
    assert QuantizationMap.int_range(8) == (-128, 127)
    with pytest.raises(ConfigError):
        QuantizationMap(bits_min=1)


@pytest.mark.parametrize("family", ["unstructured", "structured", "quantization"])
def test_maps_round_trip_through_json(family):
    m = make_map(family)
    again = map_from_dict(json.loads(json.dumps(map_to_dict(m))))
    assert again == m


def test_map_versions_and_families_are_checked():
    with pytest.raises(ConfigError, match="version"):
        map_from_dict({"family": "structured", "version": 99})
    with pytest.raises(ConfigError, match="unknown compression family"):
        make_map("pruning")


def test_parse_level_accepts_alphas_and_named_values():
    assert parse_level("0.5", StructuredMap()) == 0.5
    assert parse_level("width=0.25", StructuredMap()) == 0.0
    assert parse_level("keep=0.1", UnstructuredMap()) == 0.1
    assert parse_level("sparsity=0.9", UnstructuredMap()) == pytest.approx(0.1)
    assert QuantizationMap().bits(parse_level("bits=4", QuantizationMap())) == 4
    for bad, cmap in (("1.5", StructuredMap()), ("-0.1", QuantizationMap()), ("bits=9", QuantizationMap()),
                      ("width=0.5", QuantizationMap()), ("abc", StructuredMap()), ("nan", StructuredMap())):
        with pytest.raises(ConfigError):
            parse_level(bad, cmap)
