import numpy as np
import pytest

from onnxvq.ops import schema
from onnxvq.ops.packing import pack_codes, packed_nbytes, unpack_codes
from onnxvq.ops.schema import VQLayout


def test_generated_cpp_header_is_up_to_date():
    assert schema.HEADER_PATH.read_text() == schema.render_cpp_header(), \
        "custom_ops/generated/vq_schema.h is stale: run `python -m onnxvq.ops.schema`"


def test_header_lists_every_attribute_in_order():
    text = schema.render_cpp_header()
    positions = [text.index(f'"{a.name}"') for a in schema.ATTRIBUTES]
    assert positions == sorted(positions)


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("count", [0, 1, 7, 8, 9, 61, 1000])
def test_pack_roundtrip_and_tight_size(bits, count):
    rng = np.random.default_rng(bits * 1000 + count)
    codes = rng.integers(0, 1 << bits, count)
    packed = pack_codes(codes, bits)
    assert packed.dtype == np.uint8 and packed.size == packed_nbytes(count, bits) == -(-count * bits // 8)
    np.testing.assert_array_equal(unpack_codes(packed, bits, count), codes)


def test_pack_is_lsb_first():
    # codes 1, 2, 7 at 3 bits: stream bits 100 010 111 -> byte0 = 0b11010001, byte1 = 0b1 (7 straddles)
    np.testing.assert_array_equal(pack_codes(np.array([1, 2, 7]), 3), [0b11010001, 0b1])


def test_pack_rejects_out_of_range_codes():
    with pytest.raises(ValueError, match="codes must lie"):
        pack_codes(np.array([0, 4]), 2)
    with pytest.raises(ValueError, match="bytes"):
        unpack_codes(np.zeros(3, np.uint8), 4, 7)


def test_layout_derived_sizes():
    lay = VQLayout.for_weight(10, 6, bits=3, subvector_len=4, axis=0, stages=2)
    assert (lay.rows, lay.length, lay.num_subspaces, lay.padded_length) == (6, 10, 3, 12)
    assert lay.codes_shape == (2, 6, 3) and lay.packed_nbytes == -(-2 * 6 * 3 * 3 // 8)
    assert lay.codebooks_shape == (2, 3, 1, 8, 4)
    out = VQLayout.for_weight(10, 6, bits=2, subvector_len=4, axis=1, group_size=4, codebook_per_subspace=0)
    assert (out.rows, out.length, out.num_subspaces, out.row_groups) == (10, 6, 2, 3)
    assert out.codebooks_shape == (1, 1, 3, 4, 4)


@pytest.mark.parametrize("change,message", [
    ({"bits": 9}, "bits"), ({"format_version": 7}, "format_version"), ({"num_subspaces": 5}, "num_subspaces"),
    ({"format_version": 2}, "format_version 2 needs"),  # fast-scan takes 4-bit codes only; these are 3-bit
    ({"axis": 2}, "axis"), ({"group_size": 99}, "group_size"), ({"stages": 0}, "stages"),
])
def test_layout_rejects_inconsistent_attributes(change, message):
    attrs = VQLayout.for_weight(10, 6, bits=3, subvector_len=4).attributes()
    attrs.update(change)
    with pytest.raises(ValueError, match=message):
        VQLayout.from_attributes(attrs)


def test_header_has_the_vq_gather_contract():
    text = schema.render_cpp_header()
    assert f'kGatherOpType = "{schema.GATHER_OP_TYPE}"' in text
    for spec in schema.GATHER_INPUTS:
        assert f"kGatherInput_{spec.name} = {spec.index};" in text
    assert [s.name for s in schema.GATHER_INPUTS] == ["indices", "codes", "codebooks"]
    assert f"kGatherNumInputs = {len(schema.GATHER_INPUTS)};" in text


def test_table_shape_is_w_hat_transposed():
    lay = VQLayout.for_weight(10, 6, bits=3, subvector_len=4)  # W_hat [K=10, N=6] -> table [V=6, D=10]
    assert lay.table_shape == (6, 10)
