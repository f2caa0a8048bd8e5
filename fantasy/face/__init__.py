"""Face analysis: where the face is, its 68 landmarks, who it is, and the pixel geometry built on them.

One interface (`FaceBackend`: detect -> boxes with scores, 68 iBUG landmarks, identity embedding),
two backends: dlib (default; its models ship in pip wheels, so it works offline after
`pip install -r requirements.txt`) and face-alignment (optional, chosen by name). Everything that needs
a face (the app's face check, the identity module's crop, training's lip masks and motion labels, the
`eval` metrics) goes through `FaceAnalyzer`.
"""

from fantasy.face.analyzer import (
    BACKEND_ENV,
    BACKENDS,
    DEFAULT_BACKEND,
    NO_FACE_MESSAGE,
    FaceAnalyzer,
    FaceFinding,
    backend_name,
    make_backend,
    shared_analyzer,
)
from fantasy.face.geometry import lip_mask, lip_mask_to_latent_grid, square_face_crop
from fantasy.face.types import (
    LEFT_EYE,
    LIPS,
    NUM_LANDMARKS,
    OUTER_LIPS,
    RIGHT_EYE,
    FaceBackend,
    FaceBox,
    LandmarkProvider,
    as_rgb_uint8,
    eye_distance,
)

__all__ = [
    "BACKENDS", "BACKEND_ENV", "DEFAULT_BACKEND", "LEFT_EYE", "LIPS", "NO_FACE_MESSAGE", "NUM_LANDMARKS",
    "OUTER_LIPS", "RIGHT_EYE", "FaceAnalyzer", "FaceBackend", "FaceBox", "FaceFinding", "LandmarkProvider",
    "as_rgb_uint8", "backend_name", "eye_distance", "lip_mask", "lip_mask_to_latent_grid", "make_backend",
    "shared_analyzer", "square_face_crop",
]
