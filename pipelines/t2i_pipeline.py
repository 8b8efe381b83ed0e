"""t2i_pipeline: captions -> (the built-in tokenizer + text encoder and VAE | a user's SD folder) -> latent cache ->
teacher -> feature net -> DMD2 (full or LoRA student) -> evaluate -> quality gate (promotes the t2i_student model
version) -> export as a stock StableDiffusionPipeline. Wiring only; the parameters are params_t2i.yaml's."""
from datetime import UTC, datetime
from typing import Any, Dict, Optional

from zenml import Model, pipeline

from components.t2i.run import load_t2i_params
from steps.names import T2I_MODEL_NAME
from steps.t2i_captions import t2i_captions
from steps.t2i_distill import t2i_distill
from steps.t2i_evaluate import t2i_evaluate
from steps.t2i_export import t2i_export
from steps.t2i_feature_net import t2i_feature_net
from steps.t2i_gate import t2i_gate
from steps.t2i_latents import t2i_latents
from steps.t2i_load_teacher import t2i_load_teacher
from steps.t2i_teacher import t2i_teacher
from steps.t2i_text_encoder import t2i_text_encoder
from steps.t2i_vae import t2i_vae


@pipeline(name="t2i_pipeline", model=Model(name=T2I_MODEL_NAME, description="Few-step latent text-to-image "
                                           "students (DMD2, full or LoRA); versions pass the quality gate to staging"))
def t2i_pipeline(params_file: Optional[str] = "params_t2i.yaml", data: Optional[Dict[str, Any]] = None,
                 text: Optional[Dict[str, Any]] = None, vae: Optional[Dict[str, Any]] = None,
                 teacher: Optional[Dict[str, Any]] = None, distill: Optional[Dict[str, Any]] = None,
                 evaluation: Optional[Dict[str, Any]] = None, gate: Optional[Dict[str, Any]] = None,
                 export: Optional[Dict[str, Any]] = None, compute: Optional[Dict[str, Any]] = None) -> None:
    """Sections passed here are merged over params_file's; everything is validated before any step runs."""
    cfg = load_t2i_params(params_file, data=data, text=text, vae=vae, teacher=teacher, distill=distill,
                          evaluation=evaluation, gate=gate, export=export, compute=compute)
    threads = cfg.compute.threads
    dataset = t2i_captions(cfg.data)
    if cfg.teacher.path:
        text_parts = vae_parts = t2i_load_teacher(cfg.teacher.path)
    else:
        text_parts, vae_parts = t2i_text_encoder(dataset, cfg.text), t2i_vae(dataset, cfg.vae, threads)
    cache = t2i_latents(dataset, text_parts, vae_parts, threads)
    teacher_parts = t2i_teacher(cache, text_parts, vae_parts, cfg.teacher, threads)
    net = t2i_feature_net(dataset, cfg.evaluation, threads)
    student, _, _ = t2i_distill(teacher_parts, cache, cfg.distill.model_dump(mode="json"), cfg.teacher.sampler_steps,
                             threads)
    metrics, _ = t2i_evaluate(teacher_parts, student, cache, dataset, net, cfg.teacher, cfg.evaluation, threads)
    decision = t2i_gate(metrics, cfg.gate, datetime.now(UTC).isoformat())
    t2i_export(student, teacher_parts, decision, metrics, cfg.export.path, cfg.export.overwrite)
