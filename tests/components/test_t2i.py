"""The text-to-image route on tiny random SD parts built once per session (offline: HF_HUB_OFFLINE=1):
tokenizer, prompt encoding as the stock pipeline does it, the latent denoiser's schedule, a two-iteration
latent DMD2 run (full and LoRA), export as a stock StableDiffusionPipeline and parity with the project's
sampler, the LoRA file with alpha != rank, and the bad inputs the issue names."""
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from components.config import ConfigError  # noqa: E402
from components.t2i.builtin import attribute_of, caption  # noqa: E402
from components.t2i.captions import CaptionDataset  # noqa: E402

STEPS4 = (999, 749, 499, 249)


def _captions(n=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    cls, attr, tpl = (torch.randint(0, k, (n,), generator=g) for k in (10, 2, 3))
    images = torch.rand((n, 3, 32, 32), generator=g) * 2 - 1
    caps = [caption(int(c), int(a), int(t)) for c, a, t in zip(cls, attr, tpl)]
    is_eval = torch.arange(n) % 4 == 0
    return CaptionDataset(images, caps, is_eval, cls, [f"c{i}" for i in range(10)], attr, ["dark", "light"])


@pytest.fixture(scope="session")
def t2i(tmp_path_factory):
    """Tiny random SD parts (text encoder, VAE, UNet, DDIM) around a synthetic caption set, its latent cache and
    teacher denoiser."""
    from components.t2i.config import TextConfig
    from components.t2i.latent import teacher_denoiser
    from components.t2i.parts import build_cache
    from components.t2i.run import stage_text
    from components.t2i.sd import build_unet, build_vae

    data = _captions()
    parts = stage_text(TextConfig(), data)
    torch.manual_seed(0)
    parts = parts.with_parts(vae=build_vae().eval(), unet=build_unet(8, 4, 64).eval())
    from diffusers import DDIMScheduler

    from components.t2i.sd import SD_SCHEDULE
    parts = parts.with_parts(scheduler=DDIMScheduler(**SD_SCHEDULE))
    cache = build_cache(data, parts)
    teacher = teacher_denoiser(parts.pipeline(), cache.table(), 4)
    root = tmp_path_factory.mktemp("t2i")
    parts.save(root / "teacher")
    return {"data": data, "parts": parts, "cache": cache, "teacher": teacher, "root": root}


def _dmd2(t2i, **kw):
    from components.methods.dmd2 import DMD2, DMD2Config
    from components.methods.trainer import distill

    cfg = DMD2Config(**{"iterations": 2, "batch_size": 8, "checkpoint_every": 0, "fid_every": 0, "log_every": 1,
                        "guidance_scale": 1.75, **kw})
    method = DMD2(t2i["teacher"], cfg, t2i["cache"].dataset())
    history = distill(method, progress=False)
    return method, history


@pytest.fixture(scope="session")
def students(t2i):
    """A 4-step full student and a 1-step LoRA student (alpha != rank), two iterations each, saved and exported."""
    from components.t2i.export import export_student
    from components.t2i.parts import save_student

    out = {}
    for name, kw in {"full4": {"denoising_timesteps": STEPS4},
                     "lora1": {"lora": {"rank": 2, "alpha": 8.0}}}.items():
        method, history = _dmd2(t2i, **kw)
        st = method.student()
        save_student(st, t2i["root"] / f"{name}_student")
        card = export_student(t2i["root"] / f"{name}_student", t2i["parts"], t2i["root"] / name)
        out[name] = {"method": method, "history": history, "student": st, "card": card}
    return out


# -- tokenizer and prompts -----------------------------------------------------------------------------
def test_tokenizer_round_trip_one_token_per_word(t2i):
    from transformers import CLIPTokenizer

    from components.t2i.sd import caption_words

    tok = t2i["parts"].tokenizer
    for c in t2i["data"].prompts():
        ids = tok(c).input_ids
        assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
        assert len(ids) == len(c.split()) + 2                         # every caption word is one token
        assert tok.decode(ids, skip_special_tokens=True) == c
    assert tok.decode(tok("a zebra").input_ids, skip_special_tokens=True) == "a zebra"   # byte fallback
    assert tok.model_max_length == 16 and set(caption_words(["A Dark bag"])) == {"a", "dark", "bag"}
    t2i["parts"].save(t2i["root"] / "tok_only")
    again = CLIPTokenizer.from_pretrained(t2i["root"] / "tok_only" / "tokenizer")
    assert again("a dark photo of a bag").input_ids == tok("a dark photo of a bag").input_ids


def test_prompt_embeddings_equal_the_stock_pipelines(t2i):
    pipe, cache = t2i["parts"].pipeline(), t2i["cache"]
    prompts = cache.prompts[:5]
    stock, neg = pipe.encode_prompt(prompts, torch.device("cpu"), 1, True)
    assert torch.equal(cache.embeddings[:5], stock)
    assert torch.equal(cache.embeddings[-1], neg[0])                  # the last row: the empty prompt
    assert cache.embeddings.shape == (len(cache.prompts) + 1, 16, 64)


def test_text_denoiser_sits_on_the_ddpm_schedule(t2i):
    den = t2i["teacher"]
    grid = den.training_sigmas(1000)
    assert den.sigma_to_t(grid[list(STEPS4)]).tolist() == list(STEPS4)
    abar = den.alphas_cumprod[999]
    assert abs(float(grid[999]) - float(((1 - abar) / abar).sqrt())) < 1e-4
    # epsilon prediction on the EDM scale: D(x, sigma) = x - sigma * eps_hat(x / sqrt(1 + sigma^2), t)
    x, ids, s = torch.randn(2, 4, 8, 8), torch.tensor([0, 1]), float(grid[499])
    with torch.no_grad():
        eps = den.unet(x / (1 + s**2) ** 0.5, torch.tensor([499.0, 499.0]),
                       encoder_hidden_states=t2i["cache"].embeddings[ids]).sample
        assert torch.allclose(den(x, s, ids), x - s * eps, atol=1e-5)
    assert den.initial_noise_scale(float(grid[999])) == pytest.approx((1 / float(abar)) ** 0.5, rel=1e-5)


# -- latent DMD2 -----------------------------------------------------------------------------------------
def test_two_iteration_latent_dmd2_full_and_lora(students, t2i):
    full, lora = students["full4"], students["lora1"]
    for s in (full, lora):
        logs = s["history"][0]
        assert all(torch.isfinite(torch.tensor(v)) for v in logs.values())
        assert {"loss_dm", "loss_fake", "loss_gan_G", "loss_gan_D"} <= set(logs)
    from components.nets.lora import count_parameters

    G_full, G_lora = full["method"].G, lora["method"].G
    assert count_parameters(G_lora, trainable_only=True) < count_parameters(G_full, trainable_only=True) / 10
    # only the adapters moved: the LoRA generator's base weights are still the teacher's
    base = {k: v for k, v in G_lora.unet.state_dict().items() if "lora_" not in k and "base_layer" not in k}
    teacher = t2i["teacher"].unet.state_dict()
    assert all(torch.equal(v, teacher[k]) for k, v in base.items() if k in teacher)
    assert full["student"].sampling["sampler"] == "fewstep" and len(full["student"].sampling["sigmas"]) == 5


def test_lora_rank_must_be_positive():
    from components.config import parse_section
    from components.methods.dmd2 import DMD2Config

    with pytest.raises(ConfigError, match=r"distill\.lora\.rank"):
        parse_section(DMD2Config, {"lora": {"rank": 0}}, "distill")


# -- export ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,steps", [("lora1", 1), ("full4", 4)])
def test_export_reloads_in_stock_diffusers_and_matches_the_projects_sampler(students, t2i, name, steps):
    from diffusers import DiffusionPipeline, LCMScheduler

    from components.t2i.latent import generate_latents

    folder = t2i["root"] / name
    pipe = DiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe.scheduler, LCMScheduler)
    assert not any("lora" in k for k in pipe.unet.state_dict())       # fused: stock diffusers needs no peft
    card = json.loads((folder / "fewstep_student.json").read_text())
    assert card["steps"] == steps and card["timesteps"] == ([999] if steps == 1 else list(STEPS4))
    ids = torch.tensor([0, 1, 2])
    prompts = [t2i["cache"].prompts[i] for i in ids]
    stock = pipe(prompts, num_inference_steps=steps, guidance_scale=0, generator=torch.Generator().manual_seed(3),
                 output_type="latent").images
    ours, _ = generate_latents(students[name]["student"], ids, seed=3)
    assert (stock - ours).abs().max() < 1e-4
    img = pipe(prompts[0], num_inference_steps=steps, guidance_scale=0, height=32, width=32, output_type="np").images
    assert img.shape == (1, 32, 32, 3)


def test_lora_file_with_alpha_loads_onto_the_teacher(students, t2i):
    from diffusers import DiffusionPipeline

    folder = t2i["root"] / "lora1"
    meta = json.loads((folder / "fewstep_student.json").read_text())["lora"]
    assert meta["rank"] == 2 and meta["alpha"] == 8.0
    fused = DiffusionPipeline.from_pretrained(folder)
    teacher = DiffusionPipeline.from_pretrained(t2i["root"] / "teacher")
    teacher.scheduler = fused.scheduler
    teacher.load_lora_weights(folder / "lora")
    for p in (fused, teacher):
        p.set_progress_bar_config(disable=True)
    kw = dict(num_inference_steps=1, guidance_scale=0, output_type="latent")
    a = fused(["a dark photo of a bag"], generator=torch.Generator().manual_seed(0), **kw).images
    b = teacher(["a dark photo of a bag"], generator=torch.Generator().manual_seed(0), **kw).images
    assert (a - b).abs().max() < 1e-4
    # the LoRA changed the teacher: the adapters are not zero after training
    teacher.unload_lora_weights()
    c = teacher(["a dark photo of a bag"], generator=torch.Generator().manual_seed(0), **kw).images
    assert (a - c).abs().max() > 1e-6


def test_saved_student_reloads_as_the_same_denoiser(students, t2i):
    from components.t2i.latent import generate_latents
    from components.t2i.parts import load_student

    st = load_student(t2i["root"] / "full4_student", t2i["cache"].table(), t2i["teacher"])
    a, _ = generate_latents(st, torch.tensor([0, 3]), seed=1)
    b, _ = generate_latents(students["full4"]["student"], torch.tensor([0, 3]), seed=1)
    assert torch.allclose(a, b, atol=1e-6)


def test_export_refuses_timesteps_the_stock_scheduler_does_not_take(t2i):
    from components.t2i.export import lcm_scheduler

    with pytest.raises(ConfigError, match="denoising_timesteps"):
        lcm_scheduler(t2i["parts"].scheduler, [999, 500])


# -- a user's folder -------------------------------------------------------------------------------------
@pytest.mark.parametrize("part", ["vae", "text_encoder", "tokenizer"])
def test_teacher_folder_missing_a_part_is_one_line(t2i, tmp_path, part):
    import shutil

    from components.t2i.sd import load_sd_folder

    shutil.copytree(t2i["root"] / "teacher", tmp_path / "sd")
    shutil.rmtree(tmp_path / "sd" / part)
    with pytest.raises(ConfigError, match=f"missing {part}/") as err:
        load_sd_folder(tmp_path / "sd")
    assert "\n" not in str(err.value) and "teacher.path" in str(err.value)


def test_user_folder_loads_and_tokenizer_longer_than_positions_is_refused(t2i, tmp_path):
    import shutil

    from components.t2i.sd import load_sd_folder

    pipe = load_sd_folder(t2i["root"] / "teacher")
    assert pipe.unet.config.cross_attention_dim == 64 and pipe.scheduler.config.prediction_type == "epsilon"
    shutil.copytree(t2i["root"] / "teacher", tmp_path / "sd")
    cfg_file = tmp_path / "sd" / "tokenizer" / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["model_max_length"] = 77
    cfg_file.write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="model_max_length 77 exceeds"):
        load_sd_folder(tmp_path / "sd")


# -- built-in captions -------------------------------------------------------------------------------------
def test_captions_state_class_and_measured_attribute():
    assert caption(7, 0, 0) == "a dark photo of a sneaker" and caption(8, 1, 2) == "a light image of a bag"
    imgs = torch.stack([torch.full((3, 4, 4), -0.8), torch.full((3, 4, 4), 0.5)])
    got = attribute_of(imgs, torch.tensor([3, 3]), torch.full((10,), 0.4))
    assert got.tolist() == [0, 1]                                     # dark below the class threshold, light above


def test_vae_scaling_factor_gives_unit_std_latents():
    from components.t2i.config import VAEConfig
    from components.t2i.train import encode_latents, train_vae

    x = torch.rand((16, 3, 32, 32), generator=torch.Generator().manual_seed(0)) * 2 - 1
    vae, report = train_vae(VAEConfig(train_steps=2, batch_size=8), x, 32, progress=False)
    assert vae.config.scaling_factor == pytest.approx(1 / report["latent_std"])
    assert float(encode_latents(vae, x).std()) == pytest.approx(1.0, abs=1e-4)
    assert report["latent_shape"] == [4, 8, 8]


# -- the run config ----------------------------------------------------------------------------------------
def test_run_config_bad_input_is_one_line_naming_the_field(t2i, tmp_path):
    import shutil

    from components.t2i.run import load_t2i_params, resolve_t2i

    cfg = resolve_t2i({})
    assert cfg.distill.guidance_scale == 1.75 and list(cfg.distill.denoising_timesteps) == [999]
    cases = [({"distill": {"lora": {"rank": -1}}}, "distill.lora.rank"),
             ({"data": {"resolution": 36}}, "data.resolution"),
             ({"data": {"source": "folder"}}, "data.path"),
             ({"distill": {"method": "ctm"}}, "distill.method"),
             ({"nonsense": {}}, "unknown section"),
             ({"teacher": {"path": str(tmp_path / "nowhere")}}, "no such folder")]
    for values, needle in cases:
        with pytest.raises(ConfigError, match=needle.replace(".", r"\.")) as err:
            resolve_t2i(values)
        assert "\n" not in str(err.value)
    shutil.copytree(t2i["root"] / "teacher", tmp_path / "sd")
    shutil.rmtree(tmp_path / "sd" / "vae")
    with pytest.raises(ConfigError, match="missing vae/"):             # checked before any step runs
        load_t2i_params(None, teacher={"path": str(tmp_path / "sd")})
    (tmp_path / "p.yaml").write_text("distill: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_t2i_params(tmp_path / "p.yaml")


def test_v_prediction_teacher_maps_onto_the_edm_interface(t2i):
    """A v-predicting SD 2.x-style UNet: D(x, sigma) = sqrt(abar) x_vp - sqrt(1 - abar) v_hat."""
    from components.diffusion.text_denoiser import TextDenoiser

    base = t2i["teacher"]
    den = TextDenoiser(base.unet, t2i["cache"].table(), base.alphas_cumprod, "v_prediction")
    s = float(den.training_sigmas(1000)[600])
    x, ids = torch.randn(2, 4, 8, 8), torch.tensor([2, 0])
    a, sv = 1 / (1 + s**2) ** 0.5, s / (1 + s**2) ** 0.5
    with torch.no_grad():
        v = den.unet(a * x, torch.tensor([600.0, 600.0]), encoder_hidden_states=t2i["cache"].embeddings[ids]).sample
        assert torch.allclose(den(x, s, ids), a * (a * x) - sv * v, atol=1e-5)
