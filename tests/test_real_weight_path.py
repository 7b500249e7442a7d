"""The real-weight path end to end, at miniature size: a Wan2.2-TI2V-5B-layout diffusers directory
(`benchmarks/mini_wan.py`: diffusers `WanTransformer3DModel` and `AutoencoderKLWan`, transformers umT5 and a
tokenizer; random weights) and a real-data folder (`meta_data.csv`), run through the shipped `*wan2.2-5b.yaml`
configs with only the paths, the resolution, the clip length and the gradient accumulation changed:
teacher -> teacher forcing -> GR-DMD -> a streamed clip with a swap, and `render`."""
import asyncio
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.mini_wan import WAN22_LATENT_CHANNELS, MiniWanConfig  # noqa: E402

SIZE = 64  # a multiple of the 2.2 VAE's 16x times the patch's 2
FRAMES = 21  # 6 latent frames: 2 chunks of 3


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """benchmarks/real_path_smoke.py's chain; each stage runs in its own process, as in production (the bf16
    configs cannot share accelerate's process-wide state with this test process's fp32 trainers)."""
    from benchmarks.real_path_smoke import MINI_DIR, main as smoke

    d = tmp_path_factory.mktemp("realpath")
    summary = smoke(["--out", str(d), "--size", str(SIZE), "--frames", str(FRAMES), "--clips", "4"])
    assert all(s["rc"] == 0 for s in summary["stages"].values())
    res = {name: json.loads((d / name / "result.json").read_text()) for name in summary["stages"]}
    return d, d / MINI_DIR, res


def test_pretrained_build_loads_every_weight_and_describes_the_directory(chain):
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    from teacher.common import ModelConfig, build_components

    _, mini, _ = chain
    comp = build_components(ModelConfig(preset="wan2.2-5b", pretrained=str(mini), height=SIZE, width=SIZE))
    ref = WanTransformer3DModel.from_pretrained(mini / "transformer").state_dict()
    ours = comp.transformer.state_dict()
    assert ref.keys() == ours.keys() and all(torch.equal(ref[k], ours[k]) for k in ref)
    vae = AutoencoderKLWan.from_pretrained(mini / "vae")
    # the preset now describes the directory, not the 5B defaults it started from
    p = comp.preset
    assert p.transformer["num_layers"] == MiniWanConfig.layers and p.transformer["in_channels"] == vae.config.z_dim
    assert p.spatial_factor == 16 and p.temporal_factor == 4 and p.latent_hw == (SIZE // 16, SIZE // 16)
    assert p.text == {**p.text, "kind": "umt5", "dim": MiniWanConfig.text_dim, "path": str(mini)}
    assert comp.vae.latents_mean == list(vae.config.latents_mean)
    emb = comp.text_encoder(["walks forward", ""])
    # "walks forward </s>" and "</s>": 3 and 1 real tokens, the padding zeroed as Wan does
    assert emb.shape[-1] == MiniWanConfig.text_dim and emb[0, :3].abs().amin() > 0 and emb[1, :1].abs().amin() > 0
    assert emb[0, 3:].abs().sum() == 0 and emb[1, 1:].abs().sum() == 0


def test_stage_vae_loads_only_the_vae_of_a_pretrained_directory(chain):
    """`teacher.cache_latents` encodes with the pretrained VAE and size the stage will use, without its transformer."""
    from fashionchameleon.data.latent_cache import module_fingerprint
    from teacher.common import ModelConfig, build_components, build_stage_vae

    _, mini, _ = chain
    cfg = ModelConfig(preset="wan2.2-5b", pretrained=str(mini), height=SIZE, width=SIZE)
    preset, vae = build_stage_vae(cfg)
    comp = build_components(cfg)
    assert module_fingerprint(vae) == module_fingerprint(comp.vae)
    assert (preset.height, preset.width, preset.vae) == (comp.preset.height, comp.preset.width, comp.preset.vae)


def test_stages_train_and_write_loadable_folders(chain):
    from teacher.common import load_stage

    d, mini, res = chain
    for stage in ("teacher", "tf", "dmd"):
        assert res[stage]["step"] == 2
        # the configs' bf16 (CPU autocast here), one process
        assert (res[stage]["mixed_precision"], res[stage]["distributed_type"]) == ("bf16", "NO")
        rows = list(csv.DictReader((d / stage / "log.csv").open()))
        # DMD's generator updates every 5th step (grad_norm is nan in between); its critic every step
        norms = [float(r[k]) for r in rows for k in ("grad_norm", "grad_norm_critic") if r.get(k) not in (None, "")]
        assert rows and all(float(r["lr"]) > 0 for r in rows)
        assert [n for n in norms if np.isfinite(n)] and all(n > 0 for n in norms if np.isfinite(n))
        assert all(np.isfinite(float(r["loss"] or r["critic_loss"])) for r in rows)
        preset = json.loads((d / stage / "final" / "preset.json").read_text())
        assert (preset["height"], preset["width"]) == (SIZE, SIZE) and preset["text"]["path"] == str(mini)
    teacher = load_stage(d / "teacher" / "final")
    from diffusers import WanTransformer3DModel

    init = WanTransformer3DModel.from_pretrained(mini / "transformer").state_dict()
    moved = max(float((teacher.transformer.state_dict()[k] - v).abs().max()) for k, v in init.items())
    assert moved > 0  # two optimizer steps from the pretrained weights
    assert (d / "dmd" / "final_critic" / "transformer").is_dir()


def test_student_streams_and_swaps(chain):
    from fashionchameleon.data.folder import read_image
    from fashionchameleon.stream import StreamingEngine

    d, _, _ = chain
    eng = StreamingEngine.from_checkpoint(d / "dmd" / "final")
    ref = read_image(str(d / "data" / "src" / "000000.png"))
    g1, g2 = (read_image(str(d / "data" / "cloth" / f"00000{i}.png")) for i in (0, 1))

    def run(swap_at):
        s = eng.new_session()
        out = []
        for f in s.start(ref, g1, "walks forward", max_frames=30, seed=3):
            if f.index == swap_at:
                s.request_swap(g2)
            out.append(f)
        return out

    plain, swapped = run(None), run(8)
    assert [f.index for f in swapped] == list(range(30))
    assert all(f.image.shape == (SIZE, SIZE, 3) for f in swapped)
    gens = [f.swap_generation for f in swapped]
    assert gens[0] == 0 and gens[-1] == 1
    first_new = gens.index(1)
    same = [np.array_equal(a.image, b.image) for a, b in zip(plain, swapped)]
    assert all(same[:first_new]) and not all(same[first_new:])  # the new garment reaches the frames


def test_render_from_the_real_path_checkpoint(chain, tmp_path):
    d, _, _ = chain
    out = tmp_path / "clip.mp4"
    cmd = [sys.executable, "-m", "fashionchameleon.cli", "render", "--checkpoint", str(d / "dmd" / "final"),
           "--reference", str(d / "data" / "src" / "000000.png"), "--garment", str(d / "data" / "cloth" / "000000.png"),
           "--garment", str(d / "data" / "cloth" / "000001.png"), "--swap-at", "8", "--frames", "16",
           "--prompt", "walks forward", "--seed", "1", "--out", str(out)]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    timeline = json.loads(out.with_suffix(".json").read_text())
    assert out.stat().st_size > 0 and [s["frame"] for s in timeline["swaps"]] == [0, 8]


def test_mismatched_directory_fails_clearly(chain, tmp_path):
    from diffusers import WanTransformer3DModel

    from teacher.common import ModelConfig, build_components

    _, mini, _ = chain
    bad = tmp_path / "mixed"
    shutil.copytree(mini, bad)
    shutil.rmtree(bad / "transformer")
    cfg = json.loads((mini / "transformer" / "config.json").read_text())
    kw = {k: v for k, v in cfg.items() if not k.startswith("_")}
    WanTransformer3DModel(**{**kw, "in_channels": 16, "out_channels": 16}).save_pretrained(bad / "transformer")
    with pytest.raises(ValueError, match="in_channels=16 but the VAE has z_dim=48"):
        build_components(ModelConfig(preset="wan2.2-5b", pretrained=str(bad), height=SIZE, width=SIZE))
    no_tok = tmp_path / "no_tokenizer"
    shutil.copytree(mini, no_tok)
    shutil.rmtree(no_tok / "tokenizer")
    with pytest.raises(FileNotFoundError, match="umT5 tokenizer not found.*no_tokenizer"):
        build_components(ModelConfig(preset="wan2.2-5b", pretrained=str(no_tok), height=SIZE, width=SIZE))
    with pytest.raises(ValueError, match="multiple of 32x32"):
        build_components(ModelConfig(preset="wan2.2-5b", pretrained=str(mini), height=SIZE + 16, width=SIZE))


def test_dmd_on_the_real_path_under_ddp(chain, tmp_path):
    """The paper-scale DMD config (frozen umT5 passed through the wrapper, Wan VAE, bf16 autocast, gradient
    checkpointing) under a 2-process DDP launch: the generator's ranks stay identical after its update."""
    from ddp_helpers import launch, max_diff, rank_emas

    d, _, _ = chain
    launch("distill.train_dmd", "--config", str(d / "dmd.yaml"), "--smoke", "--out", str(tmp_path / "dmd"))
    last = sorted((tmp_path / "dmd").glob("step_*"))[-1]
    a, b = rank_emas(last, "generator")
    assert max_diff(a, b) == 0.0
    rows = list(csv.DictReader((tmp_path / "dmd" / "log.csv").open()))
    assert any(r["gen_loss"] not in ("", "nan") for r in rows)  # the generator did update
    assert (tmp_path / "dmd" / "final" / "preset.json").is_file()


def test_teacher_samples_with_umt5_and_cfg(chain, tmp_path):
    """Many-step CFG sampling of the real-path teacher: umT5 encodes the prompt and the empty (null) prompt."""
    from teacher.sample import main as sample

    d, _, _ = chain
    res = sample(["--ckpt", str(d / "teacher" / "final"), "--reference", str(d / "data" / "src" / "000000.png"),
                  "--garment", str(d / "data" / "cloth" / "000001.png"), "--prompt", "walks forward",
                  "--frames", str(FRAMES), "--steps", "3", "--guidance", "3", "--out", str(tmp_path)])
    assert Path(res["sheet"]).is_file() and all(Path(v).stat().st_size > 0 for v in res["videos"])


@pytest.mark.usefixtures("loopback_ice")
async def test_app_serves_the_real_path_checkpoint(chain, tmp_path):
    """`fashionchameleon serve --checkpoint <real-path stage>`: loopback WebRTC frames, then a live swap."""
    import httpx

    from app.config import AppConfig
    from app.loopback import LoopbackViewer
    from app.server import build_app
    from fashionchameleon.stream import StreamingEngine

    d, _, _ = chain
    for kind, src in (("references", "src"), ("garments", "cloth")):
        (tmp_path / kind).mkdir()
        for i in (0, 1):
            shutil.copy(d / "data" / src / f"00000{i}.png", tmp_path / kind / f"{kind[0]}{i}.png")
    engine = StreamingEngine.from_checkpoint(d / "dmd" / "final", device="cpu")
    app = build_app(engine, with_ui=False, config=AppConfig(references_dir=tmp_path / "references",
                                                            garments_dir=tmp_path / "garments",
                                                            record_dir=tmp_path / "rec"))
    manager = app.state.manager
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://fc.test") as http:
            v = LoopbackViewer(http, keep_images=True)
            r = await v.start(reference="r0", garment="g0", prompt="walks forward", seed=1)
            assert v.status_code == 200, r
            assert await v.wait_frames(12, timeout=30) >= 12
            assert (await http.post("/api/swap", json={"sid": v.sid, "garment": "g1"})).status_code == 200
            deadline = time.perf_counter() + 30  # queued chunks in the old garment play out first
            while manager.stats(v.sid)["current_garment"] != "g1" and time.perf_counter() < deadline:
                await asyncio.sleep(0.05)
            n = len(v.frames)
            assert await v.wait_frames(n + 6, timeout=30) >= n + 6
            stats = manager.stats(v.sid)
            await v.close()
    finally:
        await manager.shutdown()
    assert stats["current_garment"] == "g1" and stats["last_swap_latency_s"] is not None
    assert v.frames[-1].image.shape[:2] == (SIZE, SIZE)


def test_streaming_a_raw_diffusers_directory_explains_what_to_do(chain):
    from fashionchameleon.stream import CheckpointError, StreamingEngine

    _, mini, _ = chain
    with pytest.raises(CheckpointError, match="diffusers pipeline directory.*model.pretrained"):
        StreamingEngine.from_checkpoint(mini)


def test_teacher_resume_on_the_real_path_is_exact(chain, tmp_path):
    """`--until 3` then `--resume` on the real-data folder (random clip windows, bf16 autocast; 2 optimizer steps
    an epoch, so the resume crosses into a new epoch's windows) gives the uninterrupted run's weights."""
    from safetensors.torch import load_file

    d, _, _ = chain
    base = [sys.executable, "-m", "teacher.train_teacher", "--config", str(d / "teacher.yaml"), "--smoke",
            "--max-steps", "4"]
    for extra in ([], ["--until", "3"], ["--resume"]):
        out = tmp_path / ("split" if extra else "full")
        r = subprocess.run([*base, "--out", str(out), *extra], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
    full, split = (load_file(str(tmp_path / run / "step_000004" / "teacher" / "model.safetensors"))
                   for run in ("full", "split"))
    assert full.keys() == split.keys() and all(torch.equal(full[k], split[k]) for k in full)


def test_fast_decoder_for_the_wan22_latent_space(chain, tmp_path):
    """teacher/configs/vae_fastdec_wan2.2-5b.yaml on the miniature directory: a FastVAE decoder trained on the Wan2.2
    VAE's latents of the folder's videos, then put into the DMD stage with `make_stage --vae`; the stream keeps its
    latents (same encoder) and decodes with the new decoder."""
    from benchmarks.real_path_smoke import derive
    from fashionchameleon.stream import StreamingEngine
    from fashionchameleon.vae import HybridVAE, WanVAE, load_vae

    d, mini, _ = chain
    cfg = derive("teacher/configs/vae_fastdec_wan2.2-5b.yaml", tmp_path / "fastdec.yaml",
                 train={"output_dir": str(tmp_path / "run")},
                 finetune={"encoder": str(mini / "vae")},
                 data={"root": str(d / "data"), "val_root": str(d / "data"), "height": SIZE, "width": SIZE,
                       "frames": 9, "val_length": 1})
    r = subprocess.run([sys.executable, "-m", "teacher.train_vae", "--config", str(cfg), "--smoke"], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    vae = load_vae(tmp_path / "run" / "final")
    assert isinstance(vae, HybridVAE) and isinstance(vae.encoder, WanVAE)
    assert (vae.z_dim, vae.spatial_factor) == (WAN22_LATENT_CHANNELS, 16) and not vae.decoder.config.shortcut
    stage = tmp_path / "fast_stage"
    r = subprocess.run([sys.executable, "-m", "distill.make_stage", "--like", str(d / "dmd" / "final"), "--out",
                        str(stage), "--vae", str(tmp_path / "run" / "final")], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    from benchmarks.real_path_smoke import stream_check

    summary = stream_check(stage, d / "data")
    assert summary["frames"] == 30 and summary["swap_generation_last"] == 1
    assert isinstance(StreamingEngine.from_checkpoint(stage).vae, HybridVAE)


def test_the_lease_check_runs_without_pyav(tmp_path):
    """`gpu_lease.sh real_fsdp` runs `real_path_smoke.py --data world`: a lent GPU's image has no PyAV, and its wheel
    does not fit beside the working tree in a call. PyAV is blocked here for every stage's process."""
    block = tmp_path / "noav"
    block.mkdir()
    (block / "av.py").write_text('raise ImportError("PyAV blocked")\n')
    env = {**os.environ, "PYTHONPATH": str(block)}
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks/real_path_smoke.py"), "--out", str(tmp_path / "run"),
                        "--data", "world", "--size", str(SIZE), "--frames", str(FRAMES), "--json",
                        str(tmp_path / "s.json")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((tmp_path / "s.json").read_text())
    assert all(s["rc"] == 0 and s["step"] == 2 for s in summary["stages"].values())
    assert summary["stream"]["frames"] == 30 and summary["stream"]["swap_generation_last"] == 1
    assert not (tmp_path / "run" / "data").exists()  # no mp4 folder was written
