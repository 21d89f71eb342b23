"""Import a Hugging Face transformers directory with its task head (and sentence-transformers pooling).

The task comes from ``config.architectures``: ``BertForSequenceClassification`` exports the
classifier (output ``logits``, class names from ``id2label``), not the bare encoder. Supported
heads are in :data:`TASKS`; any other architecture (a causal LM such as ``GPT2LMHeadModel``,
a pre-training head) is refused by name. A sentence-transformers directory (``modules.json``
with a Pooling module) exports pooling and normalization too, output ``sentence_embedding``.

The model's inputs are the tokenizer's ``model_input_names`` that its forward() takes, so
DistilBERT (no ``token_type_ids``) imports as it is. Weights load only through safetensors or
``torch.load(weights_only=True)``: never an arbitrary unpickle.
"""

from __future__ import annotations

import inspect
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeship._workspace import scratch_dir
from edgeship.errors import InvalidModelError
from edgeship.importers.torch_module import check_parity, export_onnx
from edgeship.model import Model

__all__ = ["load_hf_dir", "DEFAULT_SEQ_LEN", "TASKS", "HeadSpec"]

DEFAULT_SEQ_LEN = 64


@dataclass(frozen=True)
class HeadSpec:
    """How one kind of head is built and exported."""

    task: str
    auto_class: str  # the transformers Auto class that builds it from a config
    outputs: tuple[str, ...]  # the ModelOutput fields exported, in order
    per_token: bool  # outputs have a sequence axis
    labelled: bool  # id2label names its classes


#: architecture name suffix -> head. ``Model`` is the bare encoder (feature extraction).
TASKS: dict[str, HeadSpec] = {
    "ForSequenceClassification": HeadSpec("text-classification", "AutoModelForSequenceClassification",
                                          ("logits",), False, True),
    "ForTokenClassification": HeadSpec("token-classification", "AutoModelForTokenClassification",
                                       ("logits",), True, True),
    "ForQuestionAnswering": HeadSpec("question-answering", "AutoModelForQuestionAnswering",
                                     ("start_logits", "end_logits"), True, False),
    "ForMaskedLM": HeadSpec("fill-mask", "AutoModelForMaskedLM", ("logits",), True, False),
    "Model": HeadSpec("feature-extraction", "AutoModel", ("last_hidden_state",), True, False),
}
_INPUT_ORDER = ("input_ids", "attention_mask", "token_type_ids")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidModelError(f"cannot read {str(path)!r}: {exc}") from None


def _load_state_dict(model_dir: Path) -> dict[str, Any]:
    safetensors_file = model_dir / "model.safetensors"
    bin_file = model_dir / "pytorch_model.bin"
    if safetensors_file.is_file():
        from safetensors.torch import load_file

        return load_file(str(safetensors_file))
    if bin_file.is_file():
        import torch

        try:  # weights_only: tensors and plain containers only, never arbitrary objects
            return torch.load(str(bin_file), map_location="cpu", weights_only=True)
        except Exception as exc:  # any unpickling failure means: not a plain tensor checkpoint
            raise InvalidModelError(
                f"{str(bin_file)!r} is not a plain tensor checkpoint ({type(exc).__name__}); "
                "convert it to model.safetensors."
            ) from None
    raise InvalidModelError(
        f"{str(model_dir)!r} has no model.safetensors or pytorch_model.bin; save the model with save_pretrained()."
    )


def _pooling_config(model_dir: Path) -> dict[str, Any] | None:
    modules_file = model_dir / "modules.json"
    if not modules_file.is_file():
        return None
    modules = _read_json(modules_file)
    for module in modules:
        if module.get("type", "").endswith("Pooling"):
            pooling_dir = (model_dir / module.get("path", "")).resolve()
            if not pooling_dir.is_relative_to(model_dir.resolve()):
                raise InvalidModelError(f"modules.json points outside {str(model_dir)!r}.")
            config = _read_json(pooling_dir / "config.json")
            modes = [k for k, v in config.items() if k.startswith("pooling_mode") and v]
            if modes not in (["pooling_mode_mean_tokens"], ["pooling_mode_cls_token"]):
                raise InvalidModelError(f"pooling {modes} is not supported; use mean or cls pooling.")
            normalize = any(m.get("type", "").endswith("Normalize") for m in modules)
            return {"mode": "mean" if modes[0].endswith("mean_tokens") else "cls", "normalize": normalize}
    return None


def head_for(architectures: list[str] | None, model_dir: Path) -> tuple[str, HeadSpec]:
    """(architecture, head) from ``config.architectures``; no architecture means the bare encoder."""
    if not architectures:
        return "(none given)", TASKS["Model"]
    arch = architectures[0]
    for suffix, spec in TASKS.items():
        if suffix != "Model" and arch.endswith(suffix):
            return arch, spec
    if re.fullmatch(r"[A-Za-z0-9]+Model", arch) and "Head" not in arch:  # BertModel, not GPT2LMHeadModel
        return arch, TASKS["Model"]
    supported = ", ".join(f"*{s}" for s in TASKS)
    raise InvalidModelError(
        f"{str(model_dir)!r} is a {arch}, which edgeship does not import yet; supported heads: {supported}. "
        "Causal language models are a separate path (see the LLM support)."
    )


class _LazyModules:
    """Module-level (so picklable, for worker processes) wrappers, built on first use."""

    _classes: dict[str, Any] = {}

    @classmethod
    def get(cls, name: str) -> Any:
        if name not in cls._classes:
            cls._classes.update(_define_wrappers())
        return cls._classes[name]


def _define_wrappers() -> dict[str, Any]:
    import torch

    global TaskModel

    class TaskModel(torch.nn.Module):  # type: ignore[no-redef]
        """A transformers model called with positional tensors (ONNX inputs) returning its head's outputs,
        or, with ``pooling``, the pooled (and normalized) sentence embedding."""

        def __init__(self, model: Any, input_names: list[str], outputs: list[str],
                     pooling: dict[str, Any] | None = None) -> None:
            super().__init__()
            self.model, self.input_names, self.outputs, self.pooling = model, input_names, outputs, pooling

        def forward(self, *args):  # type: ignore[no-untyped-def]
            kwargs = dict(zip(self.input_names, args))
            out = self.model(**kwargs)
            if self.pooling is None:
                values = tuple(getattr(out, name) for name in self.outputs)
                return values[0] if len(values) == 1 else values
            hidden = out.last_hidden_state
            if self.pooling["mode"] == "cls":
                emb = hidden[:, 0]
            else:
                mask = kwargs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                emb = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            if self.pooling["normalize"]:
                emb = torch.nn.functional.normalize(emb, p=2.0, dim=1)
            return emb

    TaskModel.__qualname__ = "TaskModel"
    return {"TaskModel": TaskModel}


def __getattr__(name: str) -> Any:  # pickle looks the classes up here by name
    if name == "TaskModel":
        return _LazyModules.get(name)
    raise AttributeError(name)


def _first_int(config: dict[str, Any], *names: str) -> int:
    for name in names:
        value = config.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return 0


def _check_sizes_read(model_dir: Path, weights: int) -> None:
    """A lower bound on the parameters from config.json's own numbers (an embedding table, one
    hidden x hidden matrix per layer), checked before anything is built."""
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return  # transformers reports it
    if not isinstance(config, dict):
        return
    hidden = _first_int(config, "hidden_size", "d_model", "dim", "n_embd")
    floor = (_first_int(config, "vocab_size") * hidden
             + _first_int(config, "num_hidden_layers", "n_layers", "n_layer", "num_layers") * hidden * hidden)
    if floor > 1.25 * weights + 1_000_000:
        raise InvalidModelError(
            f"config.json in {str(model_dir)!r} describes at least {floor / 1e6:.0f} M parameters, but the weights "
            f"there hold {weights / 1e6:.1f} MB: the config does not match the weights (check vocab_size and the "
            "layer sizes).")


def check_config_fits_weights(make: Any, model_dir: Path) -> None:
    """Refuse a config.json that describes a model far larger than the weights beside it (an absurd
    vocab_size would otherwise allocate gigabytes before anything is checked): ``make()`` builds the
    model on PyTorch's meta device, which allocates nothing, and its parameters are counted."""
    import torch

    weights = sum(f.stat().st_size for pattern in ("*.safetensors", "pytorch_model*.bin") for f in model_dir.glob(pattern))
    _check_sizes_read(model_dir, weights)  # first from the config's numbers: building 10^5 layers, even on meta, is slow
    try:
        with torch.device("meta"):
            params = sum(p.numel() for p in make().parameters())
    except (ValueError, TypeError, RuntimeError, OverflowError) as exc:
        raise InvalidModelError(f"the config in {str(model_dir)!r} does not describe a buildable model: "
                                f"{str(exc).splitlines()[0][:200]}") from None
    if params > 1.25 * weights + 1_000_000:  # a byte per parameter at the least (int8); fp32 is four
        raise InvalidModelError(
            f"config.json in {str(model_dir)!r} describes {params / 1e6:.0f} M parameters, but the weights there hold "
            f"{weights / 1e6:.1f} MB: the config does not match the weights (check vocab_size and the layer sizes).")


def _build(config: Any, head: HeadSpec, model_dir: Path) -> Any:
    """The head's model from ``config``, with the directory's weights (tied weights allowed to be absent)."""
    import transformers

    state = _load_state_dict(model_dir)  # first: a checkpoint that is not plain tensors is refused as such
    check_config_fits_weights(lambda: getattr(transformers, head.auto_class).from_config(config), model_dir)
    try:
        # eager attention exports the MatMul/Softmax pattern that ONNX Runtime's BERT fusions recognize
        model = getattr(transformers, head.auto_class).from_config(config, attn_implementation="eager").eval()
    except ValueError as exc:  # the Auto class does not know this model type
        raise InvalidModelError(f"cannot build a {head.task} model for {str(model_dir)!r}: "
                                f"{str(exc).splitlines()[0]}") from None
    own = set(model.state_dict())
    prefix = f"{model.base_model_prefix}."
    if not set(state) & own:  # the encoder's weights saved with, or without, the base model's prefix
        for renamed in ({k.removeprefix(prefix): v for k, v in state.items()}, {prefix + k: v for k, v in state.items()}):
            if set(renamed) & own:
                state = renamed
                break
    missing, _ = model.load_state_dict(state, strict=False)
    model.tie_weights()
    params = dict(model.named_parameters(remove_duplicate=False))
    loaded = {params[k].data_ptr() for k in state if k in params}
    missing = [k for k in missing if not k.endswith("position_ids")
               and not (k in params and params[k].data_ptr() in loaded)]  # tied to a loaded weight
    if missing:
        raise InvalidModelError(
            f"weights in {str(model_dir)!r} do not match the config: {len(missing)} missing, e.g. {missing[0]!r}."
        )
    return model


def _input_names(tokenizer: Any, model: Any) -> list[str]:
    """The tokenizer's model_input_names that the model's forward() takes, in a stable order."""
    takes = set(inspect.signature(model.forward).parameters)
    names = [n for n in tokenizer.model_input_names if n in takes]
    if "input_ids" not in names:
        raise InvalidModelError(f"the tokenizer's inputs {tokenizer.model_input_names} do not fit the model, "
                                f"which takes {sorted(takes)}.")
    return sorted(names, key=lambda n: _INPUT_ORDER.index(n) if n in _INPUT_ORDER else len(_INPUT_ORDER))


def load_hf_dir(model_dir: Path | str, seq_len: int = DEFAULT_SEQ_LEN) -> Model:
    """Export a transformers directory with its task head to ONNX (batch and sequence axes dynamic)."""
    import torch
    from transformers import AutoConfig, AutoTokenizer

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise InvalidModelError(
            f"{str(model_dir)!r} is a folder without config.json; give a Hugging Face model directory."
        )
    try:
        config = AutoConfig.from_pretrained(str(model_dir), local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise InvalidModelError(f"cannot read the config in {str(model_dir)!r}: {exc}") from None
    pooling = _pooling_config(model_dir)
    arch, head = head_for(getattr(config, "architectures", None), model_dir)
    if pooling is not None:
        head = TASKS["Model"]
    network = _build(config, head, model_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    names = _input_names(tokenizer, network)
    example = tokenizer(["edgeship"], padding="max_length", max_length=seq_len, return_tensors="pt")
    args = tuple(example[n].to(torch.int64) for n in names)
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    wrapper = _LazyModules.get("TaskModel")
    if pooling is not None:
        module, outputs, task = wrapper(network, names, ["last_hidden_state"], pooling).eval(), \
            ["sentence_embedding"], "sentence-embedding"
        axes["sentence_embedding"] = {0: "batch"}
    else:
        module, outputs, task = wrapper(network, names, list(head.outputs)).eval(), list(head.outputs), head.task
        axes |= {o: ({0: "batch", 1: "sequence"} if head.per_token else {0: "batch"}) for o in outputs}
    labels: tuple[str, ...] = ()
    if head.labelled and pooling is None:
        id2label = {int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}
        labels = tuple(id2label.get(i, str(i)) for i in range(int(getattr(config, "num_labels", len(id2label)))))
    path = scratch_dir("hf") / "model.onnx"
    export_onnx(module, args, path, names, outputs, axes)
    check_parity(module, args, path, names)
    return Model(
        path=path,
        source=str(model_dir),
        kind="hf",
        tokenizer_dir=model_dir.resolve(),
        torch_module=module,
        export_inputs=args,
        teacher_module=module,
        task=task,
        labels=labels,
    )
