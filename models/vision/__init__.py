"""Image features: VGG16-GAP (512-d IC) and YOLO max-probability (80-d OD).

    models.vision.vgg              VGG16 conv layers + global average pooling
    models.vision.yolo             built-in YOLOv2 on Darknet-19 (448x448) + OD head
    models.vision.onnx_detector    checked YOLOv5/YOLOv8-layout ONNX detectors
    models.vision.heads            the 80-d max over boxes of objectness x class probability
    models.vision.backends         registry: cpu, cuda, tensorrt, auto
    models.vision.export           ONNX export (what TensorRT engines are built from)
    models.vision.weights          weights-only / safetensors loading and digests
    models.vision.decode           bounded CPU (PIL) and batched GPU (nvJPEG) decoding
    models.vision.preprocess       VGG resize/crop, YOLO letterbox, normalisation
    models.vision.extractor        both models behind one call (the job's actor, the benchmark)

Importing this package needs no GPU, no Ray and no TensorRT.
"""

from models.vision.backends import available_backends, get_backend, list_backends, select_backend

__all__ = ["available_backends", "get_backend", "list_backends", "select_backend"]
