"""Backends: one contract test over the registry, ONNX export vs onnxruntime, TensorRT keys,
`auto` selection given availability. TensorRT is not installable on this project's machines:
the engine build test is skipped where `tensorrt` is absent."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.errors import ModelError
from models.vision import backends
from models.vision.backends import TOLERANCE, get_backend, list_backends, select_backend
from models.vision.tensorrt_backend import (
    BatchProfile,
    engine_cache_key,
    engine_path,
    plan_precision,
)
from models.vision.vgg import VGG16GAP
from models.vision.yolo import YOLOv2Features

SIZE = 64   # small inputs: same layers, 12x fewer FLOPs than 224


@pytest.fixture(scope="module")
def modules() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {"vgg16": VGG16GAP().eval(), "yolo": YOLOv2Features().eval()}


def _cases():
    for name in list_backends():
        if name == "auto":
            continue
        cls = backends.backend_class(name)
        for precision in cls.precisions:
            marks = []
            if cls.device == "cuda":
                marks.append(pytest.mark.needs_cuda)
            yield pytest.param(name, precision, id=f"{name}-{precision}", marks=marks)


@pytest.mark.parametrize("name,precision", list(_cases()))
@pytest.mark.parametrize("model", ["vgg16", "yolo"])
def test_backend_contract(modules, tmp_path, name, precision, model):
    """Every registered backend matches fp32 eager on fresh random inputs within its precision's tolerance."""
    if name == "tensorrt":
        pytest.importorskip("tensorrt")
    if name == "cpu" and precision == "bf16" and model == "yolo":
        pytest.skip("bf16 on CPU is checked on VGG only (YOLO's 23 bf16 layers are slow without AMX)")
    opts = {"cache_dir": tmp_path} if name == "tensorrt" else {}
    module = modules[model]
    runner = get_backend(name, **opts).prepare(module, (SIZE, SIZE), precision, max_batch=3)
    x = torch.rand(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(42))
    with torch.inference_mode():
        ref = module(x)
    got = runner(x)
    assert got.dtype == torch.float32 and got.device.type == "cpu" and got.shape == ref.shape
    err = float((got - ref).abs().max() / ref.abs().max())
    assert err <= TOLERANCE[precision], f"{name}/{precision}: relative error {err:.2e}"


def test_unknown_backend_lists_valid_ones():
    with pytest.raises(ModelError, match=r"unknown backend 'tpu'.*cpu.*cuda.*tensorrt"):
        get_backend("tpu")
    assert set(list_backends()) == {"cpu", "cuda", "tensorrt", "auto"}


def test_bad_precision_refused():
    with pytest.raises(ModelError, match="supports precision"):
        get_backend("cpu").prepare(torch.nn.Identity(), (8, 8), "int8")


@pytest.mark.parametrize("have,expect", [
    ({"tensorrt": True, "cuda": True, "cpu": True}, "tensorrt"),
    ({"tensorrt": False, "cuda": True, "cpu": True}, "cuda"),
    ({"tensorrt": True, "cuda": False, "cpu": True}, "tensorrt"),
    ({"tensorrt": False, "cuda": False, "cpu": True}, "cpu"),
])
def test_auto_picks_tensorrt_then_cuda_then_cpu(have, expect):
    probes = {k: (lambda v=v: v) for k, v in have.items()}
    assert select_backend("auto", probes=probes) == expect


def test_explicit_unavailable_backend_names_the_fix():
    probes = {"tensorrt": lambda: False, "cuda": lambda: False}
    with pytest.raises(ModelError, match=r"pip install '\.\[tensorrt\]'"):
        select_backend("tensorrt", probes=probes)
    with pytest.raises(ModelError, match="not available"):
        select_backend("cuda", probes=probes)


def test_tensorrt_cache_key_changes_with_each_component(tmp_path):
    base = dict(model_digest="sha256:aa", gpu="NVIDIA H100 sm_90", trt_version="10.3.0", precision="fp16",
                profile=BatchProfile(1, 64, 64), input_shape=(3, 224, 224))
    k0 = engine_cache_key(**base)
    assert k0 == engine_cache_key(**base) and len(k0) == 32
    changes = {"model_digest": "sha256:bb", "gpu": "NVIDIA A100 sm_80", "trt_version": "11.0.0",
               "precision": "fp32", "profile": BatchProfile(1, 32, 64), "input_shape": (3, 448, 448)}
    keys = {k0}
    for field, value in changes.items():
        k = engine_cache_key(**{**base, field: value})
        assert k not in keys, field
        keys.add(k)
    assert engine_path(tmp_path, k0) == tmp_path / f"{k0}.engine"


def test_tensorrt_precision_plan_10_and_11():
    # TensorRT 10/11 with strongly typed networks: precision from the fp16 graph, no FP16 flag.
    for version in ("10.3.0", "11.0.0"):
        plan = plan_precision(version, True, "fp16")
        assert plan == {"strongly_typed": True, "onnx_precision": "fp16", "fp16_flag": False}
    assert plan_precision("11.1", True, "fp32")["onnx_precision"] == "fp32"
    # An old TensorRT without STRONGLY_TYPED: fp32 graph + the builder flag.
    assert plan_precision("8.6.1", False, "fp16") == {"strongly_typed": False, "onnx_precision": "fp32",
                                                      "fp16_flag": True}
    with pytest.raises(ModelError):
        plan_precision("11.0", False, "fp16")


def test_tensorrt_backend_without_tensorrt_gives_install_hint():
    try:
        import tensorrt  # noqa: F401
        pytest.skip("tensorrt is installed")
    except ImportError:
        pass
    from models.vision.tensorrt_backend import TensorRTBackend

    with pytest.raises(ModelError, match=r"pip install '\.\[tensorrt\]'"):
        TensorRTBackend().prepare_onnx(b"", "d", "images", (8, 8), "fp16", 1)


@pytest.mark.parametrize("precision,tol", [
    pytest.param("fp32", 1e-5, marks=pytest.mark.slow),   # fp32 export is covered on YOLO below
    ("fp16", 1e-2),
])
def test_onnx_export_matches_torch_on_onnxruntime(modules, precision, tol):
    ort = pytest.importorskip("onnxruntime")
    import onnx

    from models.vision.export import export_onnx

    module = modules["vgg16"]
    data = export_onnx(module, (SIZE, SIZE), precision)
    model = onnx.load_from_string(data)
    want_type = onnx.TensorProto.FLOAT16 if precision == "fp16" else onnx.TensorProto.FLOAT
    assert model.graph.input[0].type.tensor_type.elem_type == want_type       # strongly typed graph
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    x = torch.rand(5, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(7))   # batch 5 != export's 2
    got = sess.run(None, {"images": x.numpy().astype(np.float16 if precision == "fp16" else np.float32)})[0]
    with torch.inference_mode():
        ref = module(x).numpy()
    assert got.shape == (5, 512)
    assert np.abs(got - ref).max() / np.abs(ref).max() <= tol


def test_onnx_export_of_yolo_matches_torch(modules):
    ort = pytest.importorskip("onnxruntime")
    from models.vision.export import export_onnx

    module = modules["yolo"]
    sess = ort.InferenceSession(export_onnx(module, (SIZE, SIZE)), providers=["CPUExecutionProvider"])
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(8))
    with torch.inference_mode():
        ref = module(x).numpy()
    np.testing.assert_allclose(sess.run(None, {"images": x.numpy()})[0], ref, rtol=1e-4, atol=1e-6)


def test_fold_batchnorm_preserves_outputs(modules):
    m = modules["yolo"].yolo.backbone
    for mod in m.modules():      # non-trivial running stats so folding is exercised
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.1, 0.1)
            mod.running_var.uniform_(0.5, 1.5)
    folded = backends.fold_batchnorm(m)
    assert not any(isinstance(x, torch.nn.BatchNorm2d) for x in folded.modules())
    x = torch.rand(1, 3, 32, 32)
    with torch.inference_mode():
        for a, b in zip(m(x), folded(x)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.needs_cuda
def test_tensorrt_engine_cache_reused(modules, tmp_path):
    pytest.importorskip("tensorrt")
    from models.vision.tensorrt_backend import TensorRTBackend

    be = TensorRTBackend(cache_dir=tmp_path)
    be.prepare(modules["vgg16"], (SIZE, SIZE), "fp16", max_batch=4)
    engines = list(tmp_path.glob("*.engine"))
    assert len(engines) == 1
    mtime = engines[0].stat().st_mtime_ns
    be.prepare(modules["vgg16"], (SIZE, SIZE), "fp16", max_batch=4)       # hit: no rebuild
    assert engines[0].stat().st_mtime_ns == mtime
