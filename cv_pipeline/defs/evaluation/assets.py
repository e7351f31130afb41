"""`adapter_evaluation` (base vs each adapter, measured) and `adapter_exports` (merged weights, Ollama)."""

import json

import dagster as dg
from pydantic import Field

from cv_pipeline.defs.metadata import image
from cv_pipeline.defs.operations.automation import FOLLOW_EVALUATION, FOLLOW_RETRAINED_ADAPTERS
from cv_pipeline.defs.operations.k8s import CPU_STEP, EXPORT_STEP, GPU_STEP
from cv_pipeline.defs.resources import DataDirResource, GPUResource
from cv_pipeline.evaluation import MergeMode
from cv_pipeline.profiles import Profile
from cv_pipeline.training.config import ADAPTER_SPECS


def build_evaluation_assets(profile: Profile, training: list[dg.AssetsDefinition]) -> list[dg.AssetsDefinition]:
    base_model, *adapters = training

    class EvaluationSettings(dg.Config):
        n_loss_examples: int = Field(profile.eval_loss_examples, description="Held-out pairs scored by teacher-forced loss.")
        n_generation_examples: int = Field(profile.eval_generation_examples, description="Held-out questions answered and scored.")
        max_new_tokens: int = Field(profile.eval_max_new_tokens, description="Length cap of generated answers.")
        batch_size: int = Field(8, description="Sequences per forward pass.")
        max_length: int = Field(profile.eval_max_length, description="Token cap per chat: question + answer when scored "
                                "by loss, prompt + generated answer when answering (a longer question is shortened).")
        seed: int = Field(0, description="Seed of the held-out sample.")
        merge_adapters: MergeMode = Field(
            "auto",
            description="Score adapters merged into the base weights: 'auto' only in float32 (exact); 'always' also "
            "in bf16 (3.8-5.5x faster decoding on an H200, but rounding lost up to 22% of an adapter's loss gain).",
        )

    @dg.asset(
        deps=["chat_dataset", base_model, *adapters],
        pool="gpu",
        op_tags=GPU_STEP,
        group_name="evaluation",
        automation_condition=FOLLOW_RETRAINED_ADAPTERS if profile.auto_retrain else None,
        code_version="7",  # 7: the report names the base model and says when the data was generated; 6: the answered questions are among the loss rows; rows an adapter trained on are left out; 5: an over-long question is shortened, the prompt's template kept; bf16 only on GPUs that compute in it; 4: answers scored up to their EOS, as trained; 3: merge_adapters 'auto' (merged only in float32; merged in float32, rounded once)
        kinds={"pytorch", "markdown"},
        description="Base model vs each adapter: held-out loss and perplexity, ROUGE-L and embedding similarity "
        "of generated answers, and the report's three prompts side by side.",
    )
    def adapter_evaluation(context: dg.AssetExecutionContext, config: EvaluationSettings, gpu: GPUResource, data_dir: DataDirResource) -> dg.MaterializeResult:
        from cv_pipeline.curation.dataset import dataset_source, load_split
        from cv_pipeline.evaluation.evaluator import REPORT_PROMPTS, TRAINING_SUMMARY, EvalConfig, evaluate_models, read_json

        device = gpu.info()
        test_rows = load_split(data_dir.published("chat_dataset"), "test").to_list()
        adapter_dirs = {name: data_dir.published("adapters", name, "adapter") for name in ADAPTER_SPECS}
        missing = [name for name, adapter_dir in adapter_dirs.items() if not (adapter_dir / "adapter_config.json").is_file()]
        if missing:
            raise dg.Failure(
                description="no trained adapter for " + ", ".join(missing) + ": materialise "
                + ", ".join(f"lora_adapter_{name}" for name in missing) + " first",
                allow_retries=False,
            )
        curves = {}
        for name, adapter_dir in adapter_dirs.items():
            summary = adapter_dir / TRAINING_SUMMARY
            if summary.exists():
                curves[name] = read_json(summary).get("loss_history", [])
        out_dir = data_dir.published("evaluation")
        results = evaluate_models(
            data_dir.base_model_dir(), adapter_dirs, test_rows, REPORT_PROMPTS,
            EvalConfig(**config.model_dump()), out_dir, log=context.log, device=device.device, training_curves=curves,
            data_source=dataset_source(data_dir.published("chat_dataset")),
        )
        files = results["artifacts"]
        metadata = {
            "report": dg.MetadataValue.path(files["report_md"]),
            "report_html": dg.MetadataValue.path(files["report_html"]),
            "metrics": dg.MetadataValue.md(results["markdown_table"]),
            "adapters_merged": results["adapters_merged"],
            "test_rows": results["n_test_rows"],
            "test_rows_left_out_as_trained_on": results["excluded_trained_rows"],
        }
        metadata |= {f"plot/{k[5:]}": image(v) for k, v in files.items() if k.startswith("plot_")}
        metadata |= {f"loss/{m}": round(v["loss"], 4) for m, v in results["models"].items()}
        return dg.MaterializeResult(metadata=metadata)

    @dg.asset_check(asset=adapter_evaluation, description="Each adapter's held-out loss is below the base model's.",
                    op_tags=CPU_STEP)
    def adapters_beat_base(data_dir: DataDirResource) -> dg.AssetCheckResult:
        metrics = json.loads((data_dir.published("evaluation") / "metrics.json").read_text())
        losses = {m: v["loss"] for m, v in metrics["models"].items()}
        worse = [m for m in losses if m != "base" and losses[m] >= losses["base"]]
        return dg.AssetCheckResult(passed=not worse, metadata={"losses": dg.MetadataValue.json(losses), "not_better": worse})

    @dg.asset(
        # After the evaluation (exports what was measured); reads the adapters and the base model itself.
        deps=[adapter_evaluation, base_model, *adapters],
        group_name="evaluation",
        automation_condition=FOLLOW_EVALUATION if profile.auto_retrain else None,
        code_version="2",  # 2: the export README names the embedded base's GGUF file
        kinds={"safetensors", "ollama"},
        op_tags=EXPORT_STEP,
        description="Per adapter: merged 16-bit weights, an Ollama Modelfile and a GGUF LoRA adapter.",
    )
    def adapter_exports(context: dg.AssetExecutionContext, data_dir: DataDirResource) -> dg.MaterializeResult:
        from cv_pipeline.evaluation.evaluator import read_json
        from cv_pipeline.evaluation.export import export_adapter

        metrics = data_dir.published("evaluation") / "metrics.json"
        measured = read_json(metrics).get("adapter_versions", {}) if metrics.is_file() else {}
        metadata = {}
        for name in ADAPTER_SPECS:
            res = export_adapter(data_dir.base_model_dir(), data_dir.published("adapters", name, "adapter"),
                                 data_dir.sub("exports") / name, model_name=f"cv-{name.replace('_', '-')}",
                                 measured_version=measured.get(name, ""))
            context.log.info(f"exported {name} to {res.out_dir}")
            if not res.evaluated:
                context.log.warning(
                    f"the {name} adapter exported is not the one the evaluation report measured (retrained since, "
                    "or never evaluated): materialise adapter_evaluation to measure it"
                )
            metadata[f"{name}/path"] = dg.MetadataValue.path(str(res.out_dir))
            metadata[f"{name}/evaluated"] = res.evaluated
            metadata[f"{name}/adapter_version"] = res.adapter_version
            metadata[f"{name}/modelfile"] = dg.MetadataValue.md(f"```\n{res.modelfile.read_text()}\n```")
        return dg.MaterializeResult(metadata=metadata)

    return [adapter_evaluation, adapters_beat_base, adapter_exports]
