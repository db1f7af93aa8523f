"""Skew buckets, preprocessing and the one-pass index on generated images."""
from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tasks.data.index import extract_and_index, npy_to_tensors, tensors_to_npy
from tasks.data.skew import format_skew_lines, same_pair_images_per_person, skew_table
from tasks.images import ImageDecodeError, PreprocessConfig, preprocess_image
from tests.fakes import TINY_PEOPLE, jpeg, make_tiny_lfw, tiny_spec


def test_skew_buckets_count_people_and_images():
    counts = pd.Series({"a": 1, "b": 1, "c": 2, "d": 5, "e": 6, "f": 25, "g": 26, "h": 200, "i": 201, "j": 530})
    table = skew_table(counts)
    assert table["people"].tolist() == [2, 1, 1, 1, 1, 1, 1, 2]
    assert table["images"].tolist() == [2, 2, 5, 6, 25, 26, 200, 731]
    assert format_skew_lines(table)[0] == "      2 persons have 1 image."


def test_same_pair_occurrences_per_person():
    pairs = pd.DataFrame({"split": ["train"] * 3, "left_person": ["A", "A", "B"], "right_person": ["A", "A", "C"],
                          "same": [True, True, False]})
    assert same_pair_images_per_person(pairs, "train").to_dict() == {"A": 4}


def test_preprocess_reproduces_lfwcrop_geometry():
    img = np.zeros((250, 250), np.uint8)
    img[92:175, 83:166] = 255  # exactly the crop box is white
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    out = preprocess_image(buf.getvalue(), PreprocessConfig())
    assert out.pixels.shape == (64, 64) and (out.width, out.height) == (250, 250)
    assert out.pixels.min() >= 250  # nothing from outside the box leaks in
    rgb = preprocess_image(jpeg(0), PreprocessConfig(size=32, grey=False))
    assert rgb.pixels.shape == (32, 32, 3)


@pytest.mark.parametrize("data, reason", [
    (b"", "empty file"), (b"this is text named .jpg", "not an image"),
    (jpeg(1)[:600], "corrupt or truncated"),
])
def test_bad_image_bytes_raise_a_reason(data, reason):
    with pytest.raises(ImageDecodeError, match=reason):
        preprocess_image(data, PreprocessConfig())


def test_decompression_bomb_is_refused_before_decoding():
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = (20000).to_bytes(4, "big") + (20000).to_bytes(4, "big")  # claim 20000x20000
    with pytest.raises(ImageDecodeError, match="decompression bomb"):
        preprocess_image(bytes(data), PreprocessConfig())


def test_too_small_image_is_refused():
    buf = io.BytesIO()
    Image.new("L", (20, 20)).save(buf, format="PNG")
    with pytest.raises(ImageDecodeError, match="too small for a face"):
        preprocess_image(buf.getvalue(), PreprocessConfig())


def test_other_photo_sizes_get_the_crop_box_scaled():
    img = np.zeros((500, 500), np.uint8)
    img[184:350, 166:332] = 255  # the LFW box at twice the size
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    assert preprocess_image(buf.getvalue(), PreprocessConfig()).pixels.min() >= 250


def test_index_extracts_and_indexes_in_one_pass(tmp_path):
    make_tiny_lfw(tmp_path / "m", corrupt="Person_L_0003.jpg")
    spec = tiny_spec()
    built = extract_and_index(spec, tmp_path / "m" / "tiny.tgz", "abc", tmp_path / "images", PreprocessConfig())
    index, tensors = built.index, built.tensors
    assert built.extracted_now and len(index) == sum(TINY_PEOPLE.values()) == tensors.shape[0]
    assert tensors.shape[1:] == (64, 64) and tensors.dtype == np.uint8
    assert index["image_id"].is_monotonic_increasing and (index["row"] == np.arange(len(index))).all()
    bad = index[index["error"].notna()]
    assert bad["image_id"].tolist() == ["Person_L/Person_L_0003.jpg"]
    assert "Person_L_0003.jpg" in bad["error"].iloc[0] and not tensors[bad["row"].iloc[0]].any()
    good = index[index["error"].isna()]
    assert (good["width"] == 250).all() and good["sha256"].str.len().eq(64).all()
    assert (tmp_path / "images" / "lfw" / "README.txt").is_file()  # non-image files are extracted too
    again = extract_and_index(spec, tmp_path / "m" / "tiny.tgz", "abc", tmp_path / "images", PreprocessConfig())
    assert not again.extracted_now
    pd.testing.assert_frame_equal(again.index, index)
    assert np.array_equal(again.tensors, tensors)


def test_tensor_store_roundtrip_refuses_pickles():
    arr = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4)
    assert np.array_equal(npy_to_tensors(tensors_to_npy(arr)), arr)
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError):
        npy_to_tensors(buf.getvalue())


def test_fast_and_portable_decoders_agree_and_truncation_is_caught():
    from tasks.images import _decode_opencv, _decode_pillow, decode, header_size

    data = jpeg(3)
    assert header_size(data) == ("JPEG", 250, 250, True)
    fast = _decode_opencv(data, "JPEG", grey=True)
    assert fast is not None and np.array_equal(decode(data), fast)
    # Bytes after the end marker send the same image down Pillow's path: nearly the same pixels.
    slow = decode(data + b"trailing garbage")
    assert np.abs(fast.astype(int) - slow.astype(int)).mean() < 2.0
    assert np.abs(fast.astype(int) - _decode_pillow(data, grey=True).astype(int)).mean() < 2.0
    truncated = data[: len(data) // 2]
    assert _decode_opencv(truncated, "JPEG", grey=True) is None
    with pytest.raises(ImageDecodeError, match="corrupt or truncated"):
        preprocess_image(truncated, PreprocessConfig())
