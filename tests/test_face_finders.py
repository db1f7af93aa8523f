"""Every face finder matching offers (Haar, dlib's HOG and CNN detectors) on real LFW photos: one
face found, mapped onto the training crop close to the tensor store's; nothing found in noise."""
from __future__ import annotations

import tarfile

import cv2
import numpy as np
import pytest

from tasks.faces import DETECTORS, faces_from_bytes, find_faces
from tasks.images import LFW_CROP_BOX, ImageDecodeError, cut_face
from tests.conftest import LFW_DIR, requires_lfw

pytest.importorskip("dlib", reason="dlib's detectors need dlib-bin, pinned in requirements.txt")


@pytest.fixture(scope="module")
def lfw_photos() -> list[np.ndarray]:
    """The first photos of one archive member each of the first people (a streamed read)."""
    photos = []
    with tarfile.open(LFW_DIR / "lfw.tgz") as tar:
        for member in tar:
            if member.name.endswith("_0001.jpg"):
                data = np.frombuffer(tar.extractfile(member).read(), np.uint8)
                photos.append(cv2.imdecode(data, cv2.IMREAD_GRAYSCALE))
                if len(photos) == 6:
                    break
    return photos


@requires_lfw
@pytest.mark.lfw
@pytest.mark.parametrize("detector", DETECTORS)
def test_each_detector_finds_the_face_and_maps_it_onto_the_training_crop(lfw_photos, detector):
    differences = []
    for grey in lfw_photos:
        faces = find_faces(grey, "largest", detector_name=detector)
        assert len(faces) == 1, detector
        x, y, w, h = faces[0].box
        assert abs(x + w / 2 - 125) < 40 and abs(y + h / 2 - 125) < 40  # LFW's face sits at the centre
        store_crop = cut_face(grey, LFW_CROP_BOX, 64).astype(int)
        differences.append(np.abs(faces[0].pixels.astype(int) - store_crop).mean())
    # a detection mapped onto the crop lands near the store's own crop (mean absolute grey-level
    # difference; the constants are medians, so is the check). bench/face_finders.py, 300 photos:
    # median 10.8 for Haar, 25.8 and 27.4 for dlib's boxes, whose size varies more with the face;
    # the store's box moved by half its width differs by 49.8.
    assert np.median(differences) < (15 if detector == "haar" else 35), (detector, differences)


@pytest.mark.parametrize("detector", DETECTORS)
def test_a_photo_without_a_face_is_an_error_for_every_detector(detector):
    import io

    from PIL import Image

    blank = io.BytesIO()
    Image.new("L", (200, 200), 128).save(blank, format="JPEG")
    with pytest.raises(ImageDecodeError, match="no face found"):
        faces_from_bytes(blank.getvalue(), "largest", detector_name=detector)


def _noise_jpeg() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((250, 250, 3)) * 255).astype(np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.mark.parametrize("preprocess", ["crop", "chip"])
def test_noise_in_lfw_frame_is_no_face_under_auto(preprocess):
    """250x250 is LFW's size, but auto takes a photo as an LFW portrait only when a face is there."""
    from tasks.images import ChipConfig, PreprocessConfig

    with pytest.raises(ImageDecodeError, match="no face found"):
        faces_from_bytes(_noise_jpeg(), "auto", ChipConfig() if preprocess == "chip" else PreprocessConfig())


@requires_lfw
@pytest.mark.lfw
def test_real_lfw_photos_keep_the_training_crop_under_auto(lfw_photos):
    for grey in lfw_photos:
        faces = find_faces(grey, "auto")
        assert len(faces) == 1 and np.array_equal(faces[0].pixels, cut_face(grey, LFW_CROP_BOX, 64))
