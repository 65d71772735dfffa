"""Both image models behind one call: uint8 crops in, (512-d IC, 80-d OD) float32 out.

Used by the Ray actor of `jobs.extract` and by the bare loop of `benchmarks/extract.py`, so the
two measure the same work. Weights are loaded safely (`weights.py`); without weight files the
extractor refuses unless `random_weights` is set, then weights are drawn from `seed` and the
producer metadata says so.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from models import host_memory
from models.errors import ModelError
from models.vision import preprocess
from models.vision.backends import get_backend, select_backend
from models.vision.heads import LAYOUT_HEADS
from models.vision.vgg import VGG16GAP, load_vgg16_state_dict
from models.vision.weights import load_state_dict
from models.vision.yolo import YOLOv2Features, load_yolov2_state_dict


@dataclass(frozen=True)
class ExtractorConfig:
    """What to build: weights, backend, precision, input sizes."""

    vgg_weights: str = ""          # torchvision VGG16 state_dict (.pt/.pth weights-only, or .safetensors)
    yolo_weights: str = ""         # state_dict of the built-in YOLOv2
    yolo_onnx: str = ""            # or: a YOLOv5/YOLOv8-layout ONNX detector
    random_weights: bool = False   # allow seeded random weights where no file is given
    seed: int = 0
    backend: str = "auto"          # cpu | cuda | tensorrt | auto
    precision: str = ""            # "" = the backend's default (cpu fp32, cuda/tensorrt fp16)
    vgg_size: int = 224
    yolo_size: int = 448           # built-in YOLOv2 (multiple of 32); an ONNX detector sets its own
    max_batch: int = 64
    threads: int = 0               # CPU backend: torch threads (0: torch's default)
    engine_cache: str = ""         # TensorRT engine cache folder ("" = default)
    reuse_heap: bool = True        # CPU backend: keep inference buffers in the heap (host_memory.py)


def check_config(cfg: ExtractorConfig) -> None:
    """Refuse an unusable config before any model is built (one line naming the fix)."""
    if cfg.yolo_weights and cfg.yolo_onnx:
        raise ModelError("give either --yolo-weights (built-in YOLOv2) or --yolo-onnx, not both")
    missing = [f for f, v in (("--vgg-weights", cfg.vgg_weights),
                              ("--yolo-weights or --yolo-onnx", cfg.yolo_weights or cfg.yolo_onnx)) if not v]
    if missing and not cfg.random_weights:
        raise ModelError(f"no weights given ({', '.join(missing)}); pass weight files, or --random-weights "
                         "to run with seeded random weights (features will be meaningless)")
    if cfg.vgg_size < 32:
        raise ModelError(f"--vgg-size must be >= 32, got {cfg.vgg_size}")
    if not cfg.yolo_onnx and (cfg.yolo_size < 32 or cfg.yolo_size % 32):
        raise ModelError(f"--yolo-size must be a multiple of 32 (YOLOv2 stride), got {cfg.yolo_size}")


def weights_source(path: str, seed: int, what: str) -> tuple[dict | None, str]:
    """(state_dict or None, what the store records: digest or 'random weights (seed N)')."""
    if not path:
        return None, f"random weights (seed {seed})"
    return load_state_dict(path, what)


class ImageFeatureExtractor:
    """VGG16-GAP and a YOLO head on one backend: (vgg uint8, yolo uint8) -> (IC, OD) float32."""

    def __init__(self, cfg: ExtractorConfig) -> None:
        check_config(cfg)
        self.cfg = cfg
        self.backend_name = select_backend(cfg.backend)
        opts = {"threads": cfg.threads} if self.backend_name == "cpu" else (
            {"cache_dir": cfg.engine_cache or None} if self.backend_name == "tensorrt" else {})
        self.backend = get_backend(self.backend_name, **opts)
        self.precision = self.backend.check_precision(cfg.precision or None)
        self.vgg_digest = self._build_vgg()
        self.yolo_digest, self.yolo_model = self._build_yolo()
        if self.backend_name == "cpu" and cfg.reuse_heap:
            # After the build, so its freed copies are not kept: batches then reuse one set of
            # activation buffers instead of zero-filling fresh mmaps (0.42 -> 0.32 CPU-s/image).
            host_memory.reuse_heap()

    # -- builders
    def _build_vgg(self) -> str:
        state, digest = weights_source(self.cfg.vgg_weights, self.cfg.seed, "--vgg-weights")
        torch.manual_seed(self.cfg.seed)              # same random weights in every actor
        m = VGG16GAP().eval()
        if state is not None:
            load_vgg16_state_dict(m, state, self.cfg.vgg_weights)
        self.vgg = self.backend.prepare(m, (self.cfg.vgg_size,) * 2, self.precision, self.cfg.max_batch,
                                        model_digest=f"vgg16-gap:{digest}")
        return digest

    def _build_yolo(self) -> tuple[str, str]:
        if self.cfg.yolo_onnx:
            return self._build_onnx()
        state, digest = weights_source(self.cfg.yolo_weights, self.cfg.seed, "--yolo-weights")
        torch.manual_seed(self.cfg.seed + 1)
        m = YOLOv2Features().eval()
        if state is not None:
            load_yolov2_state_dict(m, state, self.cfg.yolo_weights)
        self.yolo_size = (self.cfg.yolo_size, self.cfg.yolo_size)
        self.yolo = self.backend.prepare(m, self.yolo_size, self.precision, self.cfg.max_batch,
                                         model_digest=f"yolov2:{digest}")
        return digest, "yolov2-darknet19"

    def _build_onnx(self) -> tuple[str, str]:
        from models.vision.onnx_detector import OnnxDetectorFeatures, check_onnx_detector

        if self.backend_name == "tensorrt":
            spec, data = check_onnx_detector(self.cfg.yolo_onnx)
            raw = self.backend.prepare_onnx(data, spec.digest, spec.input_name, spec.input_size,  # type: ignore[attr-defined]
                                            self.precision, self.cfg.max_batch)
            head = LAYOUT_HEADS[spec.layout]
            self.yolo = lambda x: head(raw(x))
        else:
            det = OnnxDetectorFeatures(self.cfg.yolo_onnx, device=self.backend.device, threads=self.cfg.threads)
            spec, self.yolo = det.spec, det
        self.yolo_size = spec.input_size
        return spec.digest, f"onnx-{spec.layout}"

    # -- metadata
    def producers(self) -> dict[str, dict[str, object]]:
        """Producer metadata for the two store views."""
        return producers(self.cfg, self.backend_name, self.precision, self.vgg_digest, self.yolo_digest,
                         self.yolo_model, self.yolo_size)

    # -- compute
    def __call__(self, vgg_u8: torch.Tensor, yolo_u8: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(B, S, S, 3) uint8 and (B, H, W, 3) uint8 (any device) -> ((B, 512), (B, 80)) float32."""
        if vgg_u8.shape[0] == 0:
            return np.zeros((0, 512), np.float32), np.zeros((0, 80), np.float32)
        n, b = vgg_u8.shape[0], self.cfg.max_batch
        ics, ods = [], []
        with torch.inference_mode():
            for i in range(0, n, b):
                v, y = _pad(vgg_u8[i:i + b], b), _pad(yolo_u8[i:i + b], b)
                k = min(b, n - i)
                ics.append(self.vgg(preprocess.normalize_vgg(v))[:k])
                ods.append(self.yolo(preprocess.normalize_yolo(y))[:k])
        return torch.cat(ics).numpy(), torch.cat(ods).numpy()


def _pad(x: torch.Tensor, b: int) -> torch.Tensor:
    """Pad a batch to exactly b rows (zeros): one static shape, so (i) a compiled/TensorRT model
    sees one shape and (ii) an image's features do not depend on how many others shared its
    batch (CPU kernels pick algorithms by batch size) -> a resumed run writes identical bytes."""
    if x.shape[0] == b:
        return x
    return torch.cat([x, x.new_zeros((b - x.shape[0], *x.shape[1:]))])


def producers(cfg: ExtractorConfig, backend: str, precision: str, vgg_digest: str, yolo_digest: str,
              yolo_model: str, yolo_size: tuple[int, int]) -> dict[str, dict[str, object]]:
    """What the store records for image/vgg16 and image/yolo (model, weights, backend, ...)."""
    pre = preprocess.describe(cfg.vgg_size, yolo_size)
    common = {"backend": backend, "precision": precision}
    return {
        "vgg16": {"model": "vgg16-gap (torchvision VGG16 conv layers + global average pool)",
                  "weights": vgg_digest, "input": f"{cfg.vgg_size}x{cfg.vgg_size}",
                  "preprocessing": pre["vgg16"], **common},
        "yolo": {"model": yolo_model + " (max over boxes of objectness x class prob)",
                 "weights": yolo_digest, "input": f"{yolo_size[0]}x{yolo_size[1]}",
                 "preprocessing": pre["yolo"], **common,
                 # onnxruntime runs an ONNX detector at its own types; TensorRT at `precision`.
                 **({"precision": "as exported (onnxruntime)"}
                    if yolo_model.startswith("onnx-") and backend != "tensorrt" else {})},
    }


@dataclass(frozen=True)
class WeightsInfo:
    """What the weight files are, checked: digests (or 'random weights (seed N)'), YOLO kind/size."""

    vgg: str
    yolo: str
    yolo_model: str
    yolo_size: tuple[int, int]


@contextlib.contextmanager
def _copy_to_meta_is_intended():
    """Silence torch's per-tensor warning that loading into a meta model copies nothing: here
    only the names and shapes are being checked."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*copying from a non-meta parameter.*")
        yield


def check_weights(cfg: ExtractorConfig) -> WeightsInfo:
    """Load and check every weight file the actors will load, without building models.

    Run by the job's driver before any worker starts, so a missing, malformed or unsafe file
    (a pickle that would run code) is refused up front with one line naming it.
    """
    check_config(cfg)
    state, vgg_digest = weights_source(cfg.vgg_weights, cfg.seed, "--vgg-weights")
    if state is not None:     # names/shapes checked on a meta-device model (no init cost)
        with torch.device("meta"), _copy_to_meta_is_intended():
            load_vgg16_state_dict(VGG16GAP(), state, cfg.vgg_weights)
    if cfg.yolo_onnx:
        from models.vision.onnx_detector import check_onnx_detector

        spec, _ = check_onnx_detector(cfg.yolo_onnx)
        return WeightsInfo(vgg_digest, spec.digest, f"onnx-{spec.layout}", spec.input_size)
    state, yolo_digest = weights_source(cfg.yolo_weights, cfg.seed, "--yolo-weights")
    if state is not None:
        with torch.device("meta"), _copy_to_meta_is_intended():
            load_yolov2_state_dict(YOLOv2Features(), state, cfg.yolo_weights)
    return WeightsInfo(vgg_digest, yolo_digest, "yolov2-darknet19", (cfg.yolo_size, cfg.yolo_size))


def plan_producers(cfg: ExtractorConfig, backend: str, w: WeightsInfo) -> dict[str, dict[str, object]]:
    """Producer metadata for a run on `backend` (which need not be available on this machine)."""
    from models.vision.backends import backend_class

    precision = backend_class(backend).check_precision(cfg.precision or None)
    return producers(cfg, backend, precision, w.vgg, w.yolo, w.yolo_model, w.yolo_size)


def preprocess_image(img: torch.Tensor, vgg_size: int, yolo_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """One decoded (H, W, 3) uint8 image -> both models' uint8 inputs (decoded once, used twice)."""
    return preprocess.vgg_crop(img, vgg_size), preprocess.letterbox(img, yolo_size)
