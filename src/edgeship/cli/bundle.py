"""Bundle commands: keygen, pack (build side), verify and run (device side)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from edgeship.cli._common import console, guard, print_json
from edgeship.core.errors import ConfigError

__all__ = ["register"]

Trust = Annotated[list[Path], typer.Option("--trust", help="Trusted public key(s), signing.pub.")]
DecryptKey = Annotated[Optional[Path], typer.Option("--decrypt-key", help="content.key, for encrypted bundles.")]


def keygen(
    out: Annotated[Path, typer.Option("--out", help="Folder for signing.key (mode 0600) and signing.pub.")],
    content_key: Annotated[bool, typer.Option("--content-key", help="Also write content.key, 256 bits for encryption.")] = False,
    pkcs11: Annotated[Optional[str], typer.Option("--pkcs11", help="Make the signing key inside this PKCS#11 token (pkcs11:token=...;object=...?module-path=...); only signing.pub is written.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the key paths as JSON.")] = False,
) -> None:
    """Make an Ed25519 signing key pair (and, on request, a content key), in files or in a PKCS#11 token."""
    from edgeship.bundle.keys import generate_keys

    def make() -> dict[str, Any]:
        if pkcs11 is None:
            return generate_keys(out, content_key)
        from edgeship.bundle.hsm import generate_signing_key
        from edgeship.bundle.keys import write_public_key

        if content_key:
            raise ConfigError("--content-key with --pkcs11: make content.key in a file, then put it into each "
                              "device's token with `edgeship provision-key`.")
        return {"private": pkcs11, "public": write_public_key(out / "signing.pub", generate_signing_key(pkcs11))}

    paths = guard(make)
    if as_json:
        print_json({k: str(v) for k, v in paths.items()})
        return
    for kind, path in paths.items():
        console.print(f"{kind:8s} {path}", highlight=False)


def provision_key(
    content_key: Annotated[Path, typer.Argument(help="content.key (from `edgeship keygen --content-key`).")],
    pkcs11: Annotated[str, typer.Option("--pkcs11", help="The device's token and the key's label: pkcs11:token=...;object=...?module-path=...")],
) -> None:
    """Put a content key into a device's PKCS#11 token (sensitive, not extractable, decrypt only); then
    give --decrypt-key the same URI instead of a file."""
    from edgeship.bundle.hsm import import_content_key
    from edgeship.bundle.keys import load_content_key

    guard(lambda: import_content_key(pkcs11, load_content_key(content_key)))
    console.print("content key stored in the token; the file can now be removed from the device", highlight=False)


def _read_labels(labels: Path | None) -> list[str] | None:
    if labels is None:
        return None
    try:
        return [line.strip() for line in labels.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read --labels {str(labels)!r}: {exc}.") from None


def pack(
    model: Annotated[Path, typer.Argument(help="An .onnx file, an `edgeship optimize` output folder (packs its choice), or an ONNX Runtime GenAI folder.")],
    name: Annotated[str, typer.Option("--name", help="Bundle name, e.g. digits-cnn.")],
    version: Annotated[int, typer.Option("--version", help="Integer version; devices refuse lower ones.")],
    sign_key: Annotated[Path, typer.Option("--sign-key", help="signing.key from `edgeship keygen`.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="The .edgeship file to write.")],
    encrypt_key: Annotated[Optional[Path], typer.Option("--encrypt-key", help="content.key: encrypt the model (AES-256-GCM).")] = None,
    target: Annotated[Optional[str], typer.Option("--target", help="The device profile this bundle is for (see `edgeship targets`).")] = None,
    labels: Annotated[Optional[Path], typer.Option("--labels", help="A text file with one class label per line (default: the model's id2label).")] = None,
    preoptimize: Annotated[bool, typer.Option("--preoptimize/--no-preoptimize", help="Apply ONNX Runtime's portable graph optimizations now, so devices load faster.")] = True,
    tokenizer: Annotated[Optional[Path], typer.Option("--tokenizer", help="A Hugging Face directory or tokenizer.json: the device then takes text (default for an optimize folder of a Hugging Face model: its own).")] = None,
    max_length: Annotated[Optional[int], typer.Option("--max-length", help="Tokens per text on the device (default: the evaluation's, else 128).")] = None,
    split: Annotated[Optional[Path], typer.Option("--split", help="A folder from `edgeship split --out`: a hybrid bundle (the model, its head and the plan), and the tail's bundle beside it (<out>-tail.edgeship) for the upstream.")] = None,
) -> None:
    """Pack a model into one signed (optionally encrypted) bundle with a manifest."""
    from edgeship.bundle.llm import is_genai_folder, pack_llm
    from edgeship.bundle.pack import pack as pack_bundle

    if is_genai_folder(model):
        path = guard(lambda: pack_llm(model, name, version, sign_key, out, encrypt_key, target))
    else:
        path = guard(lambda: pack_bundle(model, name, version, sign_key, out, encrypt_key, target,
                                         _read_labels(labels), preoptimize, tokenizer, max_length, split))
    if split is not None:
        from edgeship.bundle.pack import tail_bundle_path

        tail = tail_bundle_path(path)
        console.print(f"packed {name}-tail v{version} -> {tail} ({tail.stat().st_size:,} bytes): serve it upstream",
                      highlight=False)
    console.print(f"packed {name} v{version} -> {path} ({path.stat().st_size:,} bytes)", highlight=False)


def verify(
    bundle: Annotated[Path, typer.Argument(help="A .edgeship file.")],
    trust: Trust,
    decrypt_key: DecryptKey = None,
    state_dir: Annotated[Optional[Path], typer.Option("--state-dir", help="Where this device remembers accepted versions.")] = None,
    allow_downgrade: Annotated[bool, typer.Option("--allow-downgrade", help="Accept a version lower than one accepted before.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the verified manifest as JSON.")] = False,
) -> None:
    """Check signature, digests, format, version (anti-rollback) and decryption."""
    from edgeship.bundle.format import verify_bundle
    from edgeship.bundle.keys import load_content_key, load_public_keys
    from edgeship.bundle.llm import LLM_FORMAT, bundle_format, verify_llm_bundle

    def work() -> Any:
        key = load_content_key(decrypt_key) if decrypt_key else None
        keys = load_public_keys(list(trust))
        if bundle_format(bundle) != LLM_FORMAT:
            return verify_bundle(bundle, keys, key, state_dir, allow_downgrade).manifest
        import shutil
        import tempfile

        with tempfile.TemporaryDirectory(prefix="edgeship-verify-") as scratch:  # streamed, then discarded
            manifest = verify_llm_bundle(bundle, keys, key, Path(scratch) / "model", state_dir, allow_downgrade).manifest
            shutil.rmtree(Path(scratch) / "model", ignore_errors=True)
        return manifest

    m = guard(work)
    if as_json:
        print_json(m)
        return
    what = (f"model sha256 {m['model_sha256'][:16]}..." if "model_sha256" in m
            else f"{len(m['files'])} files, {sum(f['size'] for f in m['files'].values()):,} bytes")
    console.print(f"verified {m['name']} v{m['version']} ({'encrypted' if m['encryption'] else 'plain'}, "
                  f"created {m['created']}, {what})", highlight=False, markup=False)


def _read_npz(path: Path) -> dict[str, Any]:
    import numpy as np

    from edgeship.core.errors import DataMismatchError

    try:
        with np.load(path, allow_pickle=False) as archive:
            return {k: archive[k] for k in archive.files}
    except (OSError, ValueError) as exc:
        raise DataMismatchError(f"cannot read --input {str(path)!r} as an .npz without pickles: {exc}.") from None


def run(
    bundle: Annotated[Path, typer.Argument(help="A .edgeship file.")],
    trust: Trust,
    input: Annotated[Optional[Path], typer.Option("--input", help="An .npz with one array per model input.")] = None,
    text: Annotated[Optional[list[str]], typer.Option("--text", help="A text to run (repeat for several); for bundles packed with a tokenizer.")] = None,
    top: Annotated[int, typer.Option("--top", min=1, help="With --text on a classifier: how many labels to show per text.")] = 1,
    decrypt_key: DecryptKey = None,
    output: Annotated[Optional[Path], typer.Option("--output", help="Write the outputs to this .npz.")] = None,
    threads: Annotated[int, typer.Option("--threads", min=1, help="Intra-op threads.")] = 2,
    as_json: Annotated[bool, typer.Option("--json", help="Print the outputs (or labels) as JSON.")] = False,
) -> None:
    """Verify a bundle, self-test it, and run one prediction (on an .npz, or on texts)."""
    import numpy as np

    from edgeship.runtime import Runtime

    texts = list(text or [])

    def work() -> Any:
        if (input is None) == (not texts):
            raise ConfigError('give exactly one of --input x.npz or --text "...".')
        inputs = _read_npz(input) if input is not None else {"text": texts}
        runtime = Runtime.open(bundle, [str(t) for t in trust], decrypt_key, threads)
        outputs = runtime.predict(inputs)
        if output is not None:
            import io

            from edgeship.core.files import atomic_write_bytes

            buffer = io.BytesIO()
            np.savez(buffer, **outputs)
            atomic_write_bytes(output, buffer.getvalue())
        labelled = bool(texts) and runtime.labels and runtime.manifest.get("task") == "text-classification"
        first = runtime.manifest["outputs"][0]["name"]
        return outputs, runtime.rank(outputs[first], top) if labelled else None

    outputs, classes = guard(work)
    if as_json:
        print_json({"labels": [[{"label": l, "score": s} for l, s in r] for r in classes]} if classes is not None
                   else {k: v.tolist() for k, v in outputs.items()})
        return
    if classes is not None:
        for sentence, ranked in zip(texts, classes):
            console.print(f"{sentence!r}: " + ", ".join(f"{label} ({score:.3g})" for label, score in ranked),
                          highlight=False, markup=False)
        return
    for name, value in outputs.items():
        console.print(f"{name}: shape {list(value.shape)}, dtype {value.dtype}, "
                      f"first values {np.round(value.reshape(-1)[:5], 4).tolist()}", highlight=False)


def register(app: typer.Typer, build: bool) -> None:
    app.command()(keygen)
    if build:
        app.command()(pack)
    app.command()(verify)
    app.command()(run)
    app.command("provision-key")(provision_key)
