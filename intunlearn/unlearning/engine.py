"""The unlearning experiment: train (or load) the quantized original model, unlearn the forget set
with each method, evaluate every result in true integer arithmetic and in fake quantization, and
compare with retraining.

The original model and the retrained one follow one recipe: float pre-training, conversion with
`intunlearn.quantize` (BN folded, ranges calibrated on training data), then quantization-aware
training in the configured arithmetic. Both are cached on disk under a hash of everything they
depend on; a cached file carries that recipe and a checksum, and is refused by name when it was
made by another recipe, is damaged or holds impossible quantization parameters. Processes that
share a cache train each model once (a lock file beside it; the others wait and load it).
Finished methods are recorded in the output folder (progress.json: keyed on the configuration
without its methods, validated and checksummed), so an interrupted run resumes where it stopped
and a run that adds a method keeps the finished ones; any other change is refused, saying what
differs. One run writes an output folder at a time (LOCK_NAME in it).

A deployed model comes in as `model="tflite:PATH"`: the file, read by `intunlearn.tflite.load_tflite`,
is the original model (no training); its retrained counterpart is the same structure with fresh
weights, trained in fake quantization and then in the configured arithmetic, with the file's
activation ranges. `run_experiment(..., export_dir=DIR)` writes the original, retrained and every
unlearned model as .tflite files; their activation scales are rounded to float32 (as a .tflite file
stores them) before anything is evaluated, so the results describe the deployed models.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import io
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from tqdm import tqdm

import intunlearn
from intunlearn.io import (FileLock, LockHeld, check_writable, json_safe, remove_temporaries, write_bytes_atomic,
                           write_json_atomic)
from intunlearn.models import build_model
from intunlearn.unlearning.forget import forget_mask, parse_forget
from intunlearn.unlearning.methods import UnlearnTask, get_method
from intunlearn.unlearning.methods.base import check_tune_factors
from intunlearn.unlearning.metrics import METRICS, average_gap, evaluate, mia_nn
from intunlearn.unlearning.training import TrainConfig, predict_probabilities, train

ARITHMETICS = ("integer", "fake")  # how a quantized model is evaluated
PIPELINES = ("float", "fake", "integer")  # what training and unlearning compute in
DEPLOYED = "deployed"  # the evaluation of the model as deployed: integer arithmetic, float32 scales
EVALUATIONS = ("float", "integer", "fake", DEPLOYED)  # the order of tables (a resumed run reads sorted JSON)
CACHE_VERSION = 2  # 2: a cached model carries its recipe and a checksum (files of version 1 are not read)
CACHE_FORMAT = "intunlearn cached model"
PROGRESS_FORMAT = 2  # 2: keyed on the configuration without its methods, with the configuration and a checksum
LOCK_NAME = ".intunlearn.lock"
# options added after progress format 1 (its files were written without them)
LATER_OPTIONS = ("threads", "tune", "method_defaults")
FRESH_HINT = "delete it to redo this experiment, or use a fresh --out"
TFLITE_PREFIX = "tflite:"
# The methods' default budgets and learning rates (methods.base); a progress file records the
# version it was written with, so results of earlier defaults are not mixed with these.
# 2: budgets in steps for the forget-only methods, learning rates relative to the recipe's lr,
# the divergence guard (1, implicit in files without the field: 5 epochs and absolute rates).
METHOD_DEFAULTS = 2


@dataclass(frozen=True)
class ExperimentConfig:
    dataset: str = "digits"
    data_root: str | None = None
    model: str = "cnn"
    width: int | None = None
    weight_bits: int = 4
    arithmetic: str = "integer"  # the pipeline: training and unlearning in "float", "fake" or "integer"
    forget: str = "random:0.1"
    methods: tuple[str, ...] = ("retrain", "ft", "ga", "rl", "sl", "qmul")
    pretrain_epochs: int = 12
    qat_epochs: int = 3
    lr: float = 0.05
    unlearn_epochs: int | None = None
    unlearn_lr: float | None = None
    batch_size: int = 64
    seed: int = 0
    device: str = "cpu"
    backend: str = "auto"
    float32_scales: bool = False  # round activation scales to float32 as a .tflite file stores them
    threads: int | None = None  # compute threads (set by the executor; float sums depend on it)
    tune: tuple[float, ...] = ()  # learning-rate search: factors of each method's default lr (empty: off)
    method_defaults: int = METHOD_DEFAULTS  # the version of the methods' defaults (recorded, not a choice)

    @property
    def tflite_path(self) -> Path | None:
        return Path(self.model[len(TFLITE_PREFIX):]) if self.model.startswith(TFLITE_PREFIX) else None

    def validate(self):
        if self.arithmetic not in PIPELINES:
            raise ValueError(f"arithmetic (the pipeline) must be one of {PIPELINES}, got {self.arithmetic!r}")
        if self.arithmetic == "float" and self.tflite_path is not None:
            raise ValueError("a tflite: model is already quantized: its pipelines are fake and integer, not float")
        if self.weight_bits not in (4, 8):
            raise ValueError(f"weight_bits must be 4 or 8, got {self.weight_bits!r}")
        if self.data_root is not None and not _reads_data_root(self.dataset):
            raise ValueError(f"data_root (--data-root) is where {', '.join(DATA_ROOT_SETS)} are read from; the data "
                             f"set {self.dataset!r} does not read it: leave --data-root out")
        if self.tflite_path is not None and not self.tflite_path.is_file():
            raise ValueError(f"model: {self.tflite_path} is not a .tflite file (--model tflite:PATH)")
        for name in self.methods:
            get_method(name)
        if not self.methods:
            raise ValueError("methods must name at least one method")
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"methods must not repeat a method, got {self.methods}")
        for name, value, low in (("pretrain_epochs (--epochs)", self.pretrain_epochs, 1),
                                 ("qat_epochs", self.qat_epochs, 0), ("batch_size", self.batch_size, 1)):
            if value < low:
                raise ValueError(f"{name} must be >= {low}, got {value}")
        if self.threads is not None and (not isinstance(self.threads, int) or isinstance(self.threads, bool)
                                         or self.threads < 1):
            raise ValueError(f"threads must be a positive int or None, got {self.threads!r}")
        if self.tune:
            check_tune_factors(self.tune)
            if self.unlearn_lr is not None:
                raise ValueError("tune searches each method's learning rate: give tune (--tune) or unlearn_lr "
                                 "(--unlearn-lr), not both")
        if self.method_defaults != METHOD_DEFAULTS:
            raise ValueError(f"method_defaults records the version of the methods' defaults; this intunlearn has "
                             f"{METHOD_DEFAULTS}, got {self.method_defaults!r}")
        if self.unlearn_epochs is not None and self.unlearn_epochs < 1:
            raise ValueError(f"unlearn_epochs must be >= 1, got {self.unlearn_epochs}")
        if self.width is not None and self.width < 1:
            raise ValueError(f"width must be >= 1, got {self.width}")
        for name, value in (("lr", self.lr), ("unlearn_lr", self.unlearn_lr)):
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite positive number, got {value}")
        check_device(self.device)
        check_backend(self.backend, self.device)
        return self


# The data sets that intunlearn.data.load_dataset reads from `root` (digits is embedded, npz:PATH
# names its file).
DATA_ROOT_SETS = ("mnist", "cifar10", "cifar100", "svhn")


def _reads_data_root(dataset: str) -> bool:
    return str(dataset).strip().lower() in DATA_ROOT_SETS


def check_device(device: str) -> None:
    """device must be "cpu" or an available CUDA device ("cuda", "cuda:1")."""
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError):
        kind = None
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {device!r}")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} is not available (no CUDA device)")


def check_backend(backend: str, device: str) -> None:
    """The backend exists here and computes on the device: checked before anything is trained."""
    if backend == "auto":
        return
    from intunlearn.backends import BACKENDS, choose

    if backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {sorted(BACKENDS)}, got {backend!r}")
    kind = torch.device(device).type
    if backend == "triton" and kind == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(f"backend 'triton' computes on CUDA devices, and the device is {device!r}: use "
                         f"--device cuda on a machine with a GPU, or --backend auto, numba or reference on the CPU "
                         f"(Triton runs CPU tensors only under TRITON_INTERPRET=1, for testing)")
    try:
        choose(backend, torch.device(device))
    except NotImplementedError as error:
        raise ValueError(str(error)) from None


def data_fingerprint(*tensors) -> str:
    """sha256 of the tensors' shapes, dtypes and bytes: the cache never serves another data set."""
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(f"{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def config_hash(values: dict) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


class Experiment:
    """One configuration's data, recipe and cache."""

    def __init__(self, config: ExperimentConfig, cache_dir: Path, data=None, split=None):
        """split: None (the training set and the configuration's forget set), or a pair of bool
        masks (train, forget) over data's training samples: the model trains on `train` and
        unlearns `train & forget` (U-LiRA's shadow models; the configuration's forget spec must
        then be a random one and is not used)."""
        self.config = config.validate()
        self.cache_dir = Path(cache_dir)
        self.device = torch.device(config.device)
        if data is None:
            from intunlearn.data import load_dataset
            data = load_dataset(config.dataset, root=config.data_root, seed=config.seed)
        from intunlearn.data import check_labels
        check_labels(data)
        self.data = data
        self.spec = parse_forget(config.forget, data.num_classes)
        if split is None:
            mask = forget_mask(self.spec, data.y_train, config.seed)
            retained = ~mask
            if not bool(retained.any()):  # nothing to retrain on: refused before anything is trained
                raise ValueError(f"forget (--forget {config.forget}) selects all {len(mask)} training samples, "
                                 f"leaving no retain set: forget fewer")
        else:
            mask, retained = _split_masks(split, len(data.y_train), self.spec)
        to = lambda t: t.to(self.device)  # noqa: E731
        self.x_forget, self.y_forget = to(data.x_train[mask]), to(data.y_train[mask])
        self.x_retain, self.y_retain = to(data.x_train[retained]), to(data.y_train[retained])
        # Class-wise forgetting: TA covers the remaining classes; the forgotten classes' test
        # samples (never seen by any model) are what MIA-NN compares the forget set with.
        forgotten = torch.isin(data.y_test, torch.tensor(self.spec.classes, dtype=data.y_test.dtype))
        self.x_test, self.y_test = to(data.x_test[~forgotten]), to(data.y_test[~forgotten])
        self.x_unseen, self.y_unseen = to(data.x_test[forgotten]), to(data.y_test[forgotten])

    # ---- the recipe ------------------------------------------------------------------------

    def _recipe_key(self, role: str, x, y) -> dict:
        c = self.config
        tflite = None
        if c.tflite_path is not None:
            tflite = tflite_sha256(c.tflite_path)[:16]
        return {"tflite": tflite, "version": CACHE_VERSION, "role": role, "dataset": c.dataset, "data_root": c.data_root,
                "device": c.device, "data": data_fingerprint(x, y), "samples": len(x),
                "model": c.model, "width": c.width, "weight_bits": c.weight_bits, "arithmetic": c.arithmetic,
                "pretrain_epochs": c.pretrain_epochs, "qat_epochs": c.qat_epochs, "lr": c.lr,
                "batch_size": c.batch_size, "seed": c.seed,
                "forget": str(self.spec) if role == "retrain" else None,
                "threads": torch.get_num_threads()}  # float sums are added in an order that depends on it

    def _fresh_float_model(self, seed):
        torch.manual_seed(seed)
        float_model = build_model(self.config.model, self.data.input_shape, self.data.num_classes,
                                  self.config.width).to(self.device)
        return float_model

    def _quantize(self, float_model, x):
        return intunlearn.quantize(float_model, weight_bits=self.config.weight_bits, calibration=x[:1024],
                                   mode=self.config.arithmetic, backend=self.config.backend)

    def _deployable(self, model):
        if self.config.float32_scales:
            from intunlearn.tflite import round_scales_to_float32
            round_scales_to_float32(model)
        return model

    def _load_tflite(self):
        from intunlearn.tflite import load_tflite

        model = load_tflite(self.config.tflite_path).to(self.device)
        shape = tuple(model.meta["tflite_input_shape"])
        if shape != tuple(self.data.input_shape):
            raise ValueError(f"model: {self.config.tflite_path} takes inputs of shape {shape}, the data set "
                             f"{self.config.dataset!r} has {tuple(self.data.input_shape)}")
        with torch.no_grad():
            outputs = model(self.data.x_train[:1].to(self.device)).shape
        if tuple(outputs) != (1, self.data.num_classes):
            raise ValueError(f"model: {self.config.tflite_path} outputs shape {tuple(outputs)[1:]}, the data set "
                             f"has {self.data.num_classes} classes")
        for module in model.modules():
            if isinstance(module, intunlearn.modules.QuantModule):
                module.backend = self.config.backend
        return intunlearn.set_arithmetic(model, self.config.arithmetic)

    def _tflite_recipe(self, x, y, seed, role, path, key):
        """The imported model (original), or its structure with fresh weights trained on (x, y)
        in fake quantization, then in the configured arithmetic (retrain)."""
        model = self._load_tflite()
        if role == "original":
            return model.eval()
        torch.manual_seed(seed)
        from intunlearn.modules import QuantLinear, _WeightedLayer
        for layer in model.modules():
            if isinstance(layer, _WeightedLayer):
                weight = torch.empty_like(layer.weight)
                torch.nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
                QuantLinear.load_float(layer, weight, None if layer.bias is None else torch.zeros_like(layer.bias))

        def make():
            c = self.config
            intunlearn.set_arithmetic(model, "fake")
            train(model, x, y, TrainConfig(c.pretrain_epochs, c.lr, c.batch_size), seed=seed,
                  desc=f"{role}: fake-quant training of the imported structure")
            intunlearn.set_arithmetic(model, c.arithmetic)
            train(model, x, y, TrainConfig(c.qat_epochs, c.lr * 0.1, c.batch_size), seed=seed + 1,
                  desc=f"{role}: quantization-aware training ({c.arithmetic})")
            return model

        return self._cached(path, key, lambda: model, make)

    def _cached(self, path, key, skeleton, make):
        """The model cached at `path` (loaded into skeleton()), or make()'s, saved there. One
        process trains a model at a time: the others wait for it (a lock file beside the model)
        and then load what it saved."""
        if path.exists():
            return self._load_cached(skeleton(), path, key)

        def waiting(holder):
            print(f"waiting for {FileLock.describe(holder)}, which is training the model {path} "
                  f"(the cache is shared) ...", file=sys.stderr, flush=True)

        lock = FileLock(path.with_name(f".{path.name}.lock")).acquire(blocking=True, on_wait=waiting)
        try:
            remove_temporaries(path.parent, prefix=f".{path.name}.")  # left by a killed writer of this model
            if path.exists():  # another process trained it while we waited
                return self._load_cached(skeleton(), path, key)
            model = make()
            self._save_cached(model, path, key)
            return model
        finally:
            lock.release()

    def _load_cached(self, model, path, key):
        """Load a cached model after checking that it is one (its format, its checksum), that it
        was made by this recipe (a file copied over another's is refused), and that its
        quantization parameters are possible; ValueError naming the file otherwise."""
        hint = "delete it to train the model again"
        try:
            payload = torch.load(path, weights_only=True, map_location=self.device)
        except Exception as error:  # a truncated or foreign file: say which one
            raise ValueError(f"the cached model {path} cannot be loaded ({type(error).__name__}: "
                             f"{error}); {hint}") from None
        if not isinstance(payload, dict) or payload.get("format") != CACHE_FORMAT or set(payload) != {
                "format", "recipe", "state", "checksum"}:
            raise ValueError(f"the cached model {path} is not a cached model of this intunlearn version; {hint}")
        recipe, state, checksum = payload["recipe"], payload["state"], payload["checksum"]
        if not isinstance(recipe, str) or not isinstance(state, dict) or not all(
                isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()) \
                or not isinstance(checksum, torch.Tensor) or checksum.dtype != torch.uint8 or checksum.shape != (32,):
            raise ValueError(f"the cached model {path} is damaged (its recipe, state or checksum has the wrong "
                             f"type); {hint}")
        if not torch.equal(checksum.cpu(), _cache_checksum(recipe, state)):
            raise ValueError(f"the cached model {path}: checksum mismatch: the file is damaged or was edited; {hint}")
        expected = _recipe_text(key)
        if recipe != expected:
            raise ValueError(f"the cached model {path} was made by another recipe ({_recipe_difference(recipe, key)}):"
                             f" a file copied or renamed in the cache; {hint}")
        expected_entries = model.state_dict()
        if set(state) != set(expected_entries):
            missing, extra = sorted(set(expected_entries) - set(state)), sorted(set(state) - set(expected_entries))
            raise ValueError(f"the cached model {path} does not fit the model (missing entries {missing}, unexpected "
                             f"entries {extra}); {hint}")
        for name, value in state.items():  # load_state_dict would cast another dtype silently
            if value.dtype != expected_entries[name].dtype or value.shape != expected_entries[name].shape:
                raise ValueError(f"the cached model {path} does not fit the model (entry {name!r} is {value.dtype} "
                                 f"{tuple(value.shape)}, expected {expected_entries[name].dtype} "
                                 f"{tuple(expected_entries[name].shape)}); {hint}")
        _check_cached_state(state, path, hint)
        try:
            model.load_state_dict(state)
        except Exception as error:
            raise ValueError(f"the cached model {path} does not fit the model ({type(error).__name__}: "
                             f"{error}); {hint}") from None
        return model.eval()

    def _save_cached(self, model, path, key):
        state = model.state_dict()
        recipe = _recipe_text(key)
        buffer = io.BytesIO()
        torch.save({"format": CACHE_FORMAT, "recipe": recipe, "state": state,
                    "checksum": _cache_checksum(recipe, state)}, buffer)
        write_bytes_atomic(path, buffer.getvalue())

    def run_recipe(self, x, y, seed: int, role: str):
        """Float pre-training, conversion, quantization-aware training; cached on disk. With
        float32_scales, the result's activation scales are rounded to float32 (not cached)."""
        return self._deployable(self._run_recipe(x, y, seed, role))

    def _run_recipe(self, x, y, seed: int, role: str):
        key = self._recipe_key(role, x, y)
        path = self.cache_dir / f"{role}-{config_hash(key)}.pt"
        if self.config.tflite_path is not None:
            return self._tflite_recipe(x, y, seed, role, path, key)
        c = self.config

        def skeleton():  # the structure a cached state loads into
            float_model = self._fresh_float_model(seed)
            # every calibrated value is part of the state it loads, so one sample calibrates the
            # structure (calibrating on 1,024 took most of a cache hit's time)
            return float_model if c.arithmetic == "float" else self._quantize(float_model, x[:1])

        def make():
            float_model = self._fresh_float_model(seed)
            if c.arithmetic == "float":  # the float pipeline: its model is the float one
                train(float_model, x, y, TrainConfig(c.pretrain_epochs + c.qat_epochs, c.lr, c.batch_size),
                      seed=seed, desc=f"{role}: float training")
                return float_model.eval()
            train(float_model, x, y, TrainConfig(c.pretrain_epochs, c.lr, c.batch_size), seed=seed,
                  desc=f"{role}: float pre-training")
            model = self._quantize(float_model, x)
            train(model, x, y, TrainConfig(c.qat_epochs, c.lr * 0.1, c.batch_size), seed=seed + 1,
                  desc=f"{role}: quantization-aware training ({c.arithmetic})")
            return model

        return self._cached(path, key, skeleton, make)

    def original(self):
        return self.run_recipe(torch.cat([self.x_forget, self.x_retain]),
                               torch.cat([self.y_forget, self.y_retain]), self.config.seed, "original")

    def task(self) -> UnlearnTask:
        c = self.config
        return UnlearnTask(self.x_forget, self.y_forget, self.x_retain, self.y_retain, self.data.num_classes,
                           self.spec.mode, c.seed,
                           lambda x, y, seed: self.run_recipe(x, y, seed, "retrain"),
                           epochs=c.unlearn_epochs, lr=c.unlearn_lr, batch_size=c.batch_size, recipe_lr=c.lr,
                           tune=tuple(c.tune))

    # ---- evaluation ------------------------------------------------------------------------

    def deploy(self, model):
        """The model as it would run on the device: a float model quantized after training
        (intunlearn.quantize, calibrated on training data), a quantized one as it is; both in
        integer arithmetic with activation scales rounded to float32, as a .tflite file stores
        them. A copy: `model` is left as it was."""
        from intunlearn.tflite import round_scales_to_float32

        if _is_quantized(model):
            deployed = intunlearn.set_arithmetic(copy.deepcopy(model), "integer")
        else:
            calibration = torch.cat([self.x_forget, self.x_retain])[:1024]
            deployed = intunlearn.quantize(model, weight_bits=self.config.weight_bits, calibration=calibration,
                                           mode="integer", backend=self.config.backend)
        round_scales_to_float32(deployed)
        return deployed.eval()

    def evaluate(self, model) -> dict[str, dict[str, float]]:
        """FA/RA/TA/MIA of the model as trained, in each arithmetic it can compute in ("integer"
        and "fake" for a quantized model, "float" for a float one), and as deployed
        (DEPLOYED); the model's own mode is restored."""
        quantized = _is_quantized(model)
        modes = {m: m.mode for m in model.modules() if isinstance(m, intunlearn.modules.QuantModule)}
        results = {}
        for arithmetic in ARITHMETICS if quantized else ("float",):
            if quantized:
                intunlearn.set_arithmetic(model, arithmetic)
            results[arithmetic] = self._metrics(model)
        for module, mode in modes.items():
            module.mode = mode
        results[DEPLOYED] = self._metrics(self.deploy(model))
        return results

    def weight_update_steps(self, before, after) -> float:
        """Median over the weighted layers' weights of |w_after - w_before| / s_w, in weight
        quantization steps (s_w: the layer's per-channel step; for a float model the step that
        post-training quantization gives it). Below 0.5 an update cannot change a weight's code
        by itself: where updates are that small, deployment can undo unlearning."""
        old = dict(before.named_parameters())
        steps = []
        for name, module in after.named_modules():
            weight = getattr(module, "weight", None)
            key = f"{name}.weight" if name else "weight"
            if not isinstance(weight, torch.Tensor) or weight.dim() < 2 or key not in old:
                continue
            scale = getattr(module, "weight_scale", None)
            if scale is None:
                scale = intunlearn.qparams.choose_weight_scales(old[key], self.config.weight_bits)
            shape = (-1,) + (1,) * (weight.dim() - 1)
            delta = (weight.detach().double() - old[key].detach().double()).abs()
            steps.append((delta / scale.detach().double().reshape(shape)).flatten())
        return float(torch.cat(steps).median()) if steps else float("nan")

    def _metrics(self, model) -> dict[str, float]:
        probabilities = {name: predict_probabilities(model, x).cpu() for name, x in
                         (("forget", self.x_forget), ("retain", self.x_retain), ("test", self.x_test))}
        labels = {"forget": self.y_forget.cpu(), "retain": self.y_retain.cpu(), "test": self.y_test.cpu()}
        metrics = evaluate(probabilities, labels, self.config.seed)
        if self.spec.mode == "class":
            unseen = predict_probabilities(model, self.x_unseen).cpu()
            metrics["MIA-NN"] = mia_nn(probabilities["forget"], unseen, self.spec.classes, self.config.seed)
        return metrics


def _split_masks(split, samples: int, spec) -> tuple[torch.Tensor, torch.Tensor]:
    """(forget, retain) masks from an explicit (train, forget) split; ValueError if it is not
    two bool masks over the training samples, or leaves the forget or retain set empty."""
    if spec.mode != "random":
        raise ValueError(f"an explicit split forgets individual samples: the forget spec must be random, got {spec}")
    if not (isinstance(split, (tuple, list)) and len(split) == 2):
        raise ValueError("split must be a pair of bool masks (train, forget)")
    train, forget = split
    for name, mask in (("train", train), ("forget", forget)):
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.shape != (samples,):
            raise ValueError(f"split: the {name} mask must be a bool tensor of shape ({samples},), got "
                             f"{getattr(mask, 'dtype', type(mask).__name__)} {tuple(getattr(mask, 'shape', ()))}")
    forget, retain = train & forget, train & ~forget
    if not bool(forget.any()) or not bool(retain.any()):
        raise ValueError(f"split: the forget set ({int(forget.sum())} samples) and the retain set "
                         f"({int(retain.sum())}) must both be non-empty")
    return forget, retain


def _is_quantized(model) -> bool:
    return any(isinstance(m, intunlearn.modules.QuantModule) for m in model.modules())


def _recipe_text(key: dict) -> str:
    return json.dumps(key, sort_keys=True)


def _recipe_difference(recipe: str, key: dict) -> str:
    try:
        stored = json.loads(recipe)
    except ValueError:
        stored = None
    if not isinstance(stored, dict):
        return "an unreadable recipe"
    names = sorted(set(stored) | set(key), key=lambda name: (name != "role", name))
    return ", ".join(f"{name} {stored.get(name)!r}, expected {key.get(name)!r}" for name in names
                     if stored.get(name) != key.get(name))


def _cache_checksum(recipe: str, state: dict) -> torch.Tensor:
    """SHA-256 of the recipe and of every entry of the state (names, dtypes, shapes, bytes)."""
    from intunlearn.deploy import state_checksum

    digest = hashlib.sha256(recipe.encode())
    digest.update(bytes(state_checksum(state).tolist()))
    return torch.tensor(list(digest.digest()), dtype=torch.uint8)


def _check_cached_state(state: dict, path, hint: str) -> None:
    """A cached model's quantization parameters must be possible (and its floats finite): a
    scale that is zero, negative or NaN, or a zero point outside int8, is refused by name
    rather than met as a ZeroDivisionError or a silent wrong result."""
    for name, value in state.items():
        if name.endswith("observed_range"):  # the calibration observer's (+inf, -inf) before use
            continue
        if value.is_floating_point() and value.numel() and not bool(torch.isfinite(value).all()):
            raise ValueError(f"the cached model {path}: entry {name!r} holds NaN or inf; {hint}")
        if name.endswith("_scale") and value.numel() and not bool((value > 0).all()):
            raise ValueError(f"the cached model {path}: entry {name!r} must hold finite positive scales, found "
                             f"{float(value.min()):g}; {hint}")
        if name.endswith("_zero_point") and value.numel() and not (
                -128 <= int(value.min()) and int(value.max()) <= 127):
            raise ValueError(f"the cached model {path}: entry {name!r} must hold int8 zero points, found "
                             f"{int(value.min())}..{int(value.max())}; {hint}")


def _missing_as_nan(value):
    """JSON stores a metric that could not be measured (NaN) as null; read it back as NaN so
    that a resumed run reports exactly what the uninterrupted one does."""
    if isinstance(value, dict):
        return {key: (float("nan") if item is None and key != "gap" else _missing_as_nan(item))
                for key, item in value.items()}
    if isinstance(value, list):
        return [_missing_as_nan(item) for item in value]
    return value


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a run: `where` it stopped and its output folder `out` (finished work there
    is kept; the same command resumes)."""

    def __init__(self, where: str, out):
        super().__init__(where)
        self.where, self.out = where, Path(out)


class _Stage:
    """What the run is doing now, for the line Ctrl-C prints."""

    def __init__(self, now: str):
        self.now = now


def lock_output(folder) -> FileLock:
    """The lock of an output folder (LOCK_NAME in it): one run writes a folder at a time. A
    folder in use raises ValueError naming the process that holds it; a lock left by a process
    that died is taken over (with a note), and then the temporary files that killed writers
    left in the folder are removed."""
    folder = Path(folder)
    try:
        lock = FileLock(folder / LOCK_NAME).acquire()
    except LockHeld:
        holder = FileLock.holder(folder / LOCK_NAME)
        raise LockHeld(f"out: {folder} is in use by another intunlearn run ({FileLock.describe(holder)}); wait for "
                       f"it to finish, or use another --out") from None
    if lock.previous:
        print(f"note: {folder} was left locked by {FileLock.describe(lock.previous)}, which is no longer "
              f"running; taking it over", file=sys.stderr)
    remove_temporaries(folder, recursive=True)
    return lock


def run_experiment(config: ExperimentConfig, out_dir, cache_dir, data=None, export_dir=None,
                   tables: bool = True, executor=None) -> dict:
    """Run (or resume) the experiment; writes results.json (and with tables, results.csv and
    results.png) to out_dir.

    export_dir: also write the original, retrained and every unlearned model computed by this
    call as <name>.tflite there (their scales rounded to float32 first: config.float32_scales).
    executor: where the work runs (intunlearn.executors; default: in this process, one method
    after another, with this machine's cores).

    Before any work: the configuration, the backend, and that out_dir, cache_dir (and export_dir)
    can be written; out_dir is locked for the run (a second run into it stops at once). Ctrl-C
    raises Interrupted, which says where the run stopped."""
    plan = UnitPlan(config, Path(out_dir), None if export_dir is None else Path(export_dir), tables, "")
    return run_units([plan], cache_dir, data=data, executor=executor)[0]


class UnitPlan(NamedTuple):
    """One experiment to run: its configuration, its output folder (progress.json, results.json),
    where its models are exported (None: not), whether to write its tables, and how the
    messages name it ("" for a run of one experiment)."""

    config: ExperimentConfig
    out_dir: Path
    export_dir: Path | None
    tables: bool
    label: str


class MethodTask(NamedTuple):
    """One piece of work for an executor: evaluate the original model (method "original") or
    unlearn it with one method and evaluate the result."""

    config: ExperimentConfig
    method: str
    cache_dir: str
    export: bool


ORIGINAL = "original"


def data_key(config: ExperimentConfig) -> tuple:
    """What a configuration's data set depends on (digits and .npz files are split by seed)."""
    return config.dataset, config.data_root, config.seed


def run_method(datasets: dict, task: MethodTask) -> dict:
    """What an executor runs: {"entry": the method's progress entry (metrics, seconds,
    diagnostics, update_steps, model_sha256), "exports": {name: {"tflite": bytes, "notes":
    [...]}}}. `datasets` maps data_key(config) to the data the driver loaded, so that a task
    reads no data files (a cluster's nodes need none). Reads and writes the model cache only
    (models are trained once, under a lock); never the output folder, which the driver alone
    writes."""
    experiment = Experiment(task.config, Path(task.cache_dir), datasets[data_key(task.config)])
    original = experiment.original()
    if task.method == ORIGINAL:
        model, entry = original, {"metrics": experiment.evaluate(original), "seconds": 0.0}
    else:
        method = get_method(task.method)
        start = time.perf_counter()
        model = method.unlearn(copy.deepcopy(original), experiment.task())
        seconds = time.perf_counter() - start
        entry = {"metrics": experiment.evaluate(model), "seconds": seconds, "diagnostics": method.diagnostics(),
                 "update_steps": experiment.weight_update_steps(original, model)}
    entry["model_sha256"] = model_sha256(model)
    exports = {}
    if task.export:
        from intunlearn.tflite import export_tflite_bytes
        flatbuffer, report = export_tflite_bytes(model, input_shape=experiment.data.input_shape)
        exports[task.method] = {"tflite": flatbuffer, "notes": list(report.notes)}
    return {"entry": entry, "exports": exports}


def model_sha256(model) -> str:
    """SHA-256 of the model's state (names, dtypes, shapes, bytes) as hex: two runs computed the
    same model bit for bit exactly when these are equal."""
    from intunlearn.deploy import state_checksum
    return bytes(state_checksum(model.state_dict()).tolist()).hex()


class _Unit:
    """The driver's state of one experiment: its plan, data, progress and lock."""

    def __init__(self, plan: UnitPlan, cache_dir: Path, data, threads: int):
        config = dataclasses.replace(plan.config, threads=threads)
        if plan.export_dir is not None:
            config = dataclasses.replace(config, float32_scales=True)
        self.plan, self.config = plan, config
        self.experiment = Experiment(config, cache_dir, data)  # loads the data; trains nothing
        for name in config.methods:
            get_method(name).check(self.experiment.task())
        data = self.experiment.data
        self.fingerprint = data_fingerprint(data.x_train, data.y_train, data.x_test, data.y_test)
        settings = progress_config(config, self.fingerprint)
        self.progress_path = plan.out_dir / "progress.json"
        self.progress = {"format": PROGRESS_FORMAT, "config_hash": config_hash(settings), "config": settings,
                         "methods": {}}
        self.lock = None
        self.exports = {}

    def start(self) -> None:
        """Lock the output folder, then read what an earlier run finished."""
        self.lock = lock_output(self.plan.out_dir)
        if self.progress_path.exists() or self.progress_path.is_symlink():
            self.progress["methods"] = read_progress(self.progress_path, self.config, self.fingerprint,
                                                     self.experiment.spec.mode)

    def export_path(self, name: str) -> Path:
        return self.plan.export_dir / f"{name}.tflite"

    def remaining(self) -> list[str]:
        """The methods still to run ("original" first): those not finished, and with exports,
        finished ones whose file is not in the export folder (an earlier run exported elsewhere,
        or not at all): unlearned models are not cached, so the method runs again (the same
        model bit for bit: the configuration fixes everything it depends on)."""
        names = [ORIGINAL, *self.config.methods]
        return [name for name in names if name not in self.progress["methods"]
                or (self.plan.export_dir is not None and not self.export_path(name).is_file())]

    def record(self, name: str, result: dict) -> None:
        earlier = self.progress["methods"].get(name, {}).get("model_sha256")
        now = result["entry"].get("model_sha256")
        if earlier not in (None, "0" * 64, now):
            print(f"note: {self.plan.label + ': ' if self.plan.label else ''}{name}, run again to export it, computed "
                  f"another model than the earlier run (SHA-256 {now[:16]}..., recorded {earlier[:16]}...); its new "
                  f"results replace the recorded ones", file=sys.stderr)
        self.progress["methods"][name] = result["entry"]
        write_progress(self.progress_path, self.progress)
        for model_name, exported in result["exports"].items():
            write_bytes_atomic(self.export_path(model_name), exported["tflite"])
            self.exports[model_name] = {"path": str(self.export_path(model_name)), "notes": exported["notes"],
                                        "written": "now"}

    def finish(self) -> dict:
        results = _summarise(self.config, self.progress["methods"], self.experiment)
        if self.plan.export_dir is not None:  # every model's file: written now, or by an earlier run into it
            results["exports"] = {name: self.exports.get(name) or {"path": str(self.export_path(name)), "notes": None,
                                                                   "written": "earlier"}
                                  for name in (ORIGINAL, *self.config.methods)}
        write_json_atomic(self.plan.out_dir / "results.json", results)
        if self.plan.tables:
            from intunlearn.unlearning.report import write_csv, write_plot
            write_csv(self.plan.out_dir / "results.csv", results)
            write_plot(self.plan.out_dir / "results.png", results)
        return results

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def _task_order(units: list[_Unit]) -> list[tuple[int, str]]:
    """(unit index, method) in the order the work is handed out: every experiment's original
    first, then every retrain, then the other methods, so that parallel workers train different
    models instead of waiting for the same one; the methods that train on the forget set alone
    (guarded: a budget of a few steps) last. They are the shortest tasks, so parallel workers
    finish close together; with a long task handed out last, the other workers sit idle while
    it runs (2.3 s of a 40 s study on two workers, its last Q-MUL)."""
    work = [(index, name) for index, unit in enumerate(units) for name in unit.remaining()]
    return sorted(work, key=lambda item: _phase(item[1]))


def _phase(name: str) -> int:
    """Where a task of method `name` comes in _task_order: 0 the original, 1 the retrain, 2 the
    methods that train on the retain set, 3 those that train on the forget set alone."""
    if name in (ORIGINAL, "retrain"):
        return (ORIGINAL, "retrain").index(name)
    return 3 if get_method(name).guarded else 2


def run_units(plans: list[UnitPlan], cache_dir, data=None, executor=None, out=None) -> list[dict]:
    """Run (or resume) the experiments of `plans` on `executor` (default: in this process, one
    method after another) and return their results in order. The driver alone writes the output
    folders: each method's entry is recorded in its experiment's progress.json as it arrives.

    Before any work: every configuration, the backend, and that every output folder, cache_dir
    and export folder can be written; the output folders are locked for the run. Ctrl-C raises
    Interrupted, which says where the run stopped (and names `out`, default the first plan's
    output folder, as where the finished work is kept)."""
    from intunlearn.executors import LocalExecutor

    executor = executor if executor is not None else LocalExecutor()
    cache_dir = Path(cache_dir)
    for plan in plans:
        plan.config.validate()
        check_writable(plan.out_dir, "out")
        if plan.export_dir is not None:
            if plan.export_dir.exists() and not plan.export_dir.is_dir():
                raise ValueError(f"export: {plan.export_dir} exists and is not a directory")
            from intunlearn.tflite import _schema
            _schema()  # the deploy extra is installed: fail before anything is trained
            check_writable(plan.export_dir, "export")
    check_writable(cache_dir, "cache")
    stage = _Stage("loading the data")
    units = []
    try:
        datasets = {}  # each data set once, shipped to the tasks
        # Preparing an experiment (its data split, forget set, progress file) takes ~0.03 s: a
        # bar, shown only if this lasts over 2 s, so that a large study is not silent meanwhile.
        for plan in tqdm(plans, desc="study: preparing experiments", unit="experiment", delay=2.0,
                         leave=False):
            units.append(_Unit(plan, cache_dir, data, executor.threads))
            datasets[data_key(plan.config)] = units[-1].experiment.data
        for unit in units:
            unit.start()
        work = _task_order(units)
        tasks = [MethodTask(units[u].config, name, str(cache_dir), units[u].plan.export_dir is not None)
                 for u, name in work]
        finished = set()
        stage.now = _where(units, work, finished, executor)
        for index, result in executor.map_unordered(run_method, tasks, shared=datasets,
                                                      desc="study: experiments x methods"):
            unit_index, name = work[index]
            units[unit_index].record(name, result)
            finished.add(index)
            stage.now = _where(units, work, finished, executor)
        stage.now = "writing the results (every method had finished)"
        return [unit.finish() for unit in units]
    except KeyboardInterrupt as error:
        if isinstance(error, Interrupted):
            raise
        raise Interrupted(stage.now, plans[0].out_dir if out is None else out) from None
    finally:
        for unit in units:
            unit.release()


def _where(units, work, finished, executor) -> str:
    """What the run is doing now, for the line Ctrl-C prints."""
    remaining = [index for index in range(len(work)) if index not in finished]
    if not remaining:
        return "writing the results (every method had finished)"
    if not getattr(executor, "serial", False):
        return f"{len(finished)} of {len(work)} methods finished, the others running or queued"
    unit_index, name = work[remaining[0]]  # a serial executor runs them in order
    unit = units[unit_index]
    prefix = f"{unit.plan.label}: " if unit.plan.label else ""
    if name == ORIGINAL:
        return prefix + "training (or loading) the original model"
    methods = unit.config.methods
    return prefix + f"unlearning with {name} (method {methods.index(name) + 1} of {len(methods)})"


# ---- progress.json: the finished methods of one experiment ------------------------------------


def progress_config(config: ExperimentConfig, fingerprint: str) -> dict:
    """What a progress file is keyed on: the configuration without its list of methods (a run
    that adds a method keeps the finished ones) and the data's fingerprint."""
    values = dataclasses.asdict(config)
    del values["methods"]
    values["data"] = fingerprint
    if config.tflite_path is not None:  # the file is the original model: its contents, not its name
        values["tflite_sha256"] = tflite_sha256(config.tflite_path)
    return json_safe(values)


def tflite_weight_bits(path) -> tuple[int, ...]:
    """The distinct weight widths of a .tflite file's weighted layers, as load_tflite reads them."""
    from intunlearn.tflite import load_tflite

    return tuple(sorted({int(module.weight_bits) for module in load_tflite(Path(path)).modules()
                         if hasattr(module, "weight_bits")}))


def tflite_sha256(path) -> str:
    """SHA-256 (hex) of a .tflite file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# Where each field of a progress file's configuration comes from on the command line, for the
# message that refuses a resume with another configuration (a field not listed: --field-name).
OPTION_SOURCES = {
    "threads": "--cpus-per-task, the compute threads of each task: the local executor's default is every core, "
               "Ray's is 1",
    "float32_scales": "--export, which rounds activation scales to float32 before anything is evaluated",
    "pretrain_epochs": "--epochs",
    "arithmetic": "--pipelines",
    "seed": "--seeds / --seed",
    "data": "the data set's contents",
    "data_root": "--data-root",
    "tflite_sha256": "the contents of the --model tflite: file",
    "method_defaults": "this intunlearn version's method defaults",
}


def _option_source(field: str) -> str:
    return OPTION_SOURCES.get(field, "--" + field.replace("_", "-"))


def describe_differences(then: dict, now: dict) -> str:
    """'field: X then, Y now, set by --option' for each field that differs, and first, when
    the --model tflite: file is another, a sentence naming it."""
    names = sorted(set(then) | set(now))
    differences = [f"{name}: {then.get(name)!r} then, {now.get(name)!r} now, set by {_option_source(name)}"
                   for name in names if then.get(name) != now.get(name)]
    if then.get("tflite_sha256") not in (None, now.get("tflite_sha256")) and then.get("model") == now.get("model"):
        path = str(now.get("model", ""))[len(TFLITE_PREFIX):]
        differences.insert(0, f"the file {path} of --model {now.get('model')} has changed: its contents are not "
                              f"the model the finished methods unlearned")
    return "; ".join(differences)


def progress_checksum(progress: dict) -> str:
    """SHA-256 of a progress file's content (everything but its checksum), as JSON."""
    content = {key: value for key, value in progress.items() if key != "checksum"}
    return hashlib.sha256(json.dumps(json_safe(content), sort_keys=True, allow_nan=False).encode()).hexdigest()


def write_progress(path, progress: dict) -> None:
    write_json_atomic(path, {**progress, "checksum": progress_checksum(progress)})


def _evaluations_of(config: ExperimentConfig) -> set[str]:
    return {"float", DEPLOYED} if config.arithmetic == "float" else {*ARITHMETICS, DEPLOYED}


def _is_number(value, low=-math.inf, high=math.inf) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and low <= value <= high


def read_progress(path, config: ExperimentConfig, fingerprint: str, forget_mode: str) -> dict:
    """The finished methods recorded in progress.json, validated: its checksum, its schema and
    types, metrics in [0, 100] or null, times >= 0, and the configuration it was written for
    (the same as `config` but for the methods). ValueError naming the file, what is wrong and
    what to do otherwise."""
    path = Path(path)

    def bad(detail):
        return ValueError(f"{path} is not a progress file of intunlearn run ({detail}); {FRESH_HINT}")

    try:
        raw = path.read_bytes()
    except OSError as error:
        raise ValueError(f"{path} cannot be read ({error.strerror or error}); {FRESH_HINT}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not UTF-8 text (byte {error.start}: {raw[error.start:error.start + 1]!r}); "
                         f"{FRESH_HINT}") from None

    def constant(name):
        raise ValueError(f"{name} is not JSON")

    try:
        saved = json.loads(text, parse_constant=constant)
    except (ValueError, RecursionError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}); {FRESH_HINT}") from None
    if not isinstance(saved, dict):
        raise bad(f"a JSON {type(saved).__name__}, not an object")
    current = progress_config(config, fingerprint)
    if set(saved) == {"config_hash", "methods"}:  # written before PROGRESS_FORMAT 2: keyed on every option
        options = {k: v for k, v in dataclasses.asdict(config).items() if k not in LATER_OPTIONS}
        legacy = config_hash({**options, "data": fingerprint})
        if not isinstance(saved["methods"], dict):
            raise bad("'methods' is not an object")
        if saved["config_hash"] != legacy and saved["methods"]:
            raise ValueError(f"{path} holds the finished methods {', '.join(saved['methods'])} of a run with other "
                             f"options or data (an earlier intunlearn's progress file does not say which); rerun "
                             f"with the options it was written with to keep them, or use a fresh --out (or delete "
                             f"{path.parent}) to start over")
        if saved["methods"] and config.method_defaults != 1:  # format 1 predates the defaults' version 2
            raise ValueError(f"{path} holds the finished methods {', '.join(saved['methods'])} of an earlier "
                             f"intunlearn, whose methods had other defaults (version 1, this one has "
                             f"{config.method_defaults}); use a fresh --out (or delete {path.parent}) to start over")
    else:
        expected = {"format", "config_hash", "config", "methods", "checksum"}
        if set(saved) != expected:
            raise bad(f"its entries are {sorted(saved)}, expected {sorted(expected)}")
        if saved["format"] != PROGRESS_FORMAT:
            raise bad(f"format {saved['format']!r}, expected {PROGRESS_FORMAT}")
        if saved["checksum"] != progress_checksum(saved):
            raise ValueError(f"{path}: checksum mismatch: the file is damaged or was edited; {FRESH_HINT}")
        if not isinstance(saved["config"], dict) or not isinstance(saved["methods"], dict):
            raise bad("'config' and 'methods' must be objects")
        if saved["config"] != current or saved["config_hash"] != config_hash(current):
            differences = describe_differences(saved["config"], current)
            raise ValueError(f"{path} holds the finished methods {', '.join(saved['methods']) or '(none)'} of a run "
                             f"with another configuration ({differences or 'its key differs'}); rerun with the "
                             f"earlier options to keep them, or use a fresh --out (or delete {path.parent}) to start "
                             f"over")
    methods = saved["methods"]
    evaluations = _evaluations_of(config)
    metric_names = set(METRICS) | ({"MIA-NN"} if forget_mode == "class" else set())
    for name, entry in methods.items():
        where = f"method {name!r}"
        if not isinstance(entry, dict):
            raise bad(f"{where} is a JSON {type(entry).__name__}, not an object")
        allowed = {"metrics", "seconds", "diagnostics", "update_steps", "model_sha256"}
        required = {"metrics", "seconds"}
        if not required <= set(entry) <= allowed:
            raise bad(f"{where} has the entries {sorted(entry)}; expected metrics and seconds (and diagnostics, "
                      f"update_steps, model_sha256)")
        digest = entry.get("model_sha256", "0" * 64)  # absent in files from before it was recorded
        if not (isinstance(digest, str) and len(digest) == 64 and set(digest) <= set("0123456789abcdef")):
            raise bad(f"{where}: model_sha256 is {digest!r}, expected 64 hex digits")
        metrics = entry["metrics"]
        if not isinstance(metrics, dict) or set(metrics) != evaluations:
            found = sorted(metrics) if isinstance(metrics, dict) else type(metrics).__name__
            raise bad(f"{where}: its metrics are for {found}, expected {sorted(evaluations)}")
        for evaluation, values in metrics.items():
            if not isinstance(values, dict) or set(values) != metric_names:
                found = sorted(values) if isinstance(values, dict) else type(values).__name__
                raise bad(f"{where}: its {evaluation} metrics are {found}, expected {sorted(metric_names)}")
            for metric, value in values.items():  # only MIA-NN may be unmeasured (too few samples): null
                if not (_is_number(value, 0, 100) or (value is None and metric == "MIA-NN")):
                    raise bad(f"{where}: {evaluation} {metric} is {json.dumps(value)}; a metric is a number in "
                              f"[0, 100]" + (" or null (not measured)" if metric == "MIA-NN" else ""))
        if not _is_number(entry["seconds"], 0):
            raise bad(f"{where}: seconds is {entry['seconds']!r}, expected a number >= 0")
        steps = entry.get("update_steps")
        if steps is not None and not _is_number(steps, 0):
            raise bad(f"{where}: update_steps is {steps!r}, expected a number >= 0 or null")
        if not isinstance(entry.get("diagnostics", {}), dict):
            raise bad(f"{where}: diagnostics is not an object")
    return _missing_as_nan(methods)


def _evaluations(metrics: dict) -> list[str]:
    return [evaluation for evaluation in EVALUATIONS if evaluation in metrics]


def _summarise(config, entries, experiment) -> dict:
    retrain = entries.get("retrain")
    rows = []
    for name in ("original", *config.methods):
        entry = entries[name]
        row = {"method": name, "seconds": round(entry["seconds"], 2),
               "update_steps": entry.get("update_steps", 0.0 if name == "original" else None),
               "model_sha256": entry.get("model_sha256")}
        for evaluation in _evaluations(entry["metrics"]):
            metrics = dict(entry["metrics"][evaluation])
            metrics["gap"] = average_gap(metrics, retrain["metrics"][evaluation]) if retrain else None
            row[evaluation] = metrics
        row.update(entry.get("diagnostics", {}))
        rows.append(row)
    return {
        "config": dataclasses.asdict(config),
        "evaluations": _evaluations(entries["original"]["metrics"]),
        "forget_samples": len(experiment.y_forget), "retain_samples": len(experiment.y_retain),
        "test_samples": len(experiment.y_test),
        "metrics": list(METRICS) + (["MIA-NN"] if experiment.spec.mode == "class" else []),
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "python": platform.python_version(), "torch": torch.__version__},
        "rows": rows,
    }
