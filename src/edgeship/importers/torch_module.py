"""Export a PyTorch module to ONNX with a dynamic batch axis."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from edgeship._workspace import scratch_dir
from edgeship.errors import InvalidModelError
from edgeship.model import Model

__all__ = ["from_torch", "load_module_function", "export_onnx"]

DEFAULT_OPSET = 17


def _as_tuple(example_inputs: Any) -> tuple[Any, ...]:
    import torch

    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, dict):
        return tuple(example_inputs.values())
    if isinstance(example_inputs, (list, tuple)) and all(isinstance(t, torch.Tensor) for t in example_inputs):
        return tuple(example_inputs)
    raise InvalidModelError(
        f"example inputs must be a tensor, a tuple of tensors or a dict of tensors, got {type(example_inputs).__name__}."
    )


def export_onnx(
    module: Any,
    example_inputs: tuple[Any, ...],
    path: Path,
    input_names: list[str],
    output_names: list[str],
    dynamic_axes: dict[str, dict[int, str]],
    opset: int = DEFAULT_OPSET,
) -> None:
    """torch.onnx.export with the TorchScript exporter, whose graphs ORT's fusions match."""
    import torch

    module.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                example_inputs,
                str(path),
                input_names=input_names,
                output_names=output_names,
                dynamic_axes=dynamic_axes,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise InvalidModelError(
            f"the module {type(module).__name__} cannot be traced to ONNX: {first}. "
            "Make forward() use tensor operations only (no data-dependent Python control flow)."
        ) from None


def _parity_inputs(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """A second batch (2 samples) unlike the example: float inputs get fresh values."""
    import torch

    gen = torch.Generator().manual_seed(1234)
    out = []
    for t in args:
        t2 = torch.cat([t, t], dim=0)
        if t2.is_floating_point():
            t2 = t2 + torch.randn(t2.shape, generator=gen, dtype=t2.dtype) * (t2.std() + 1e-3)
        out.append(t2)
    return tuple(out)


def check_parity(module: Any, args: tuple[Any, ...], path: Path, input_names: list[str]) -> None:
    """Refuse an export that does not reproduce the module on a batch it was not traced on.

    Tracing records one path through forward(); Python control flow or ``.item()`` on data
    is frozen into constants and the model is silently wrong on other inputs.
    """
    from edgeship.core.session import open_session
    import torch

    probe = _parity_inputs(args)
    with torch.no_grad():
        expected = module(*probe)
    if hasattr(expected, "last_hidden_state"):
        expected = expected.last_hidden_state
    wanted = list(expected) if isinstance(expected, (tuple, list)) else [expected]
    session = open_session(path, threads=1)
    outputs = session.run(None, {n: t.numpy() for n, t in zip(input_names, probe)})
    for got, want in zip(outputs, wanted):  # every output, not only the first
        want = want.detach().numpy()
        scale = float(abs(want).max()) + 1e-6
        if got.shape != want.shape or float(abs(got - want).max()) > 1e-3 * scale + 1e-4:
            raise InvalidModelError(
                f"the ONNX export of {type(module).__name__} does not reproduce the module on a new batch "
                "(tracing froze data-dependent control flow or .item() into constants); make forward() "
                "use tensor operations only."
            )


def from_torch(
    module: Any,
    example_inputs: Any,
    input_names: list[str] | None = None,
    output_names: list[str] | None = None,
    opset: int = DEFAULT_OPSET,
    source: str | None = None,
) -> Model:
    """Export ``module`` to ONNX (batch axis dynamic) and return it as a Model.

    Example:
        >>> model = edgeship.from_torch(net, torch.randn(1, 1, 32, 32))
    """
    import torch

    if not isinstance(module, torch.nn.Module):
        raise InvalidModelError(f"from_torch needs a torch.nn.Module, got {type(module).__name__}.")
    args = _as_tuple(example_inputs)
    if input_names is None:
        input_names = list(example_inputs) if isinstance(example_inputs, dict) else (
            ["input"] if len(args) == 1 else [f"input_{i}" for i in range(len(args))]
        )
    with torch.no_grad():
        probe = module.eval()(*args)
    n_out = len(probe) if isinstance(probe, (tuple, list)) else 1
    if output_names is None:
        output_names = ["output"] if n_out == 1 else [f"output_{i}" for i in range(n_out)]
    axes = {name: {0: "batch"} for name in [*input_names, *output_names]}
    path = scratch_dir("torch") / "model.onnx"
    export_onnx(module, args, path, input_names, output_names, axes, opset)
    check_parity(module, args, path, input_names)
    return Model(
        path=path,
        source=source or f"torch:{type(module).__name__}",
        kind="torch",
        torch_module=module,
        export_inputs=args,
        teacher_module=module,
    )


def load_module_function(spec: str) -> Model:
    """``MODULE:FUNCTION`` (or ``path/file.py:FUNCTION``) returning ``(module, example_inputs)``."""
    from edgeship.core.usercode import load_callable

    func = load_callable(spec, "model function", InvalidModelError)
    result = func()
    if not (isinstance(result, tuple) and len(result) == 2):
        raise InvalidModelError(
            f"{spec} must return (torch module, example inputs), got {type(result).__name__}."
        )
    return from_torch(result[0], result[1], source=spec)
