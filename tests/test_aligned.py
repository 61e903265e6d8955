"""Arrays placed for the copies into them: never 1-31 bytes past the source modulo 4096, where `rep movsb` ran 10-12x
slower (see `phiml_native.aligned`)."""
import numpy as np
import pytest

from phiml_native.aligned import address, empty_for_copy


@pytest.mark.parametrize('shape, dtype', [((3, 5), np.float32), ((0, 7), np.float64), ((2, 1, 4), np.uint8), ((), np.int16)])
def test_an_empty_array_of_the_shape_and_dtype(shape, dtype):
    array = empty_for_copy(shape, dtype, 0)
    assert array.shape == shape and array.dtype == dtype and array.flags.c_contiguous and array.flags.writeable
    array[...] = 1
    assert (array == 1).all()


def test_placed_at_the_source_modulo_64_rounded_down_to_16_bytes():
    for source in list(range(130)) + [2544, 2714, 2 ** 40 + 17]:
        for _ in range(3):  # numpy's own allocations land at several offsets modulo 64
            array = empty_for_copy((100,), np.float32, source)
            assert address(array) % 16 == 0
            assert (address(array) - source) % 64 == -(source % 16) % 64


def test_no_copy_between_placed_arrays_is_at_a_slow_distance():
    """Rows of a multiple of 64 bytes, copied from any row of the source to any row of the destination."""
    for source_offset in range(0, 64, 4):
        backing = np.empty(64 * 33, np.uint8)
        shift = (source_offset - address(backing)) % 64
        source = backing[shift:shift + 64 * 32].reshape(8, 256)  # rows of 256 bytes
        target = empty_for_copy((8, 256), np.uint8, address(source))
        distances = {(address(target[i]) - address(source[j])) % 4096 for i in range(8) for j in range(8)}
        assert not distances & set(range(1, 32))


def test_arrays_do_not_overlap():
    arrays = [empty_for_copy((64,), np.float64, 16) for _ in range(8)]
    for i, array in enumerate(arrays):
        array[...] = i
    assert [float(a[0]) for a in arrays] == [float(i) for i in range(8)]
