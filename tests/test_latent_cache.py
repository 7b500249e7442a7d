"""Latent cache: cached batches == encoding on the fly, training through it, and caches that must be refused."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from distill import train_dmd, train_tf
from fashionchameleon.data.latent_cache import (LatentCache, LatentCacheError, LatentCacheWriter, META_FILE,
                                                module_fingerprint)
from teacher import cache_latents, train_teacher
from teacher.common import (ModelConfig, Triplets, build_components, build_dataset, build_stage_vae, encode_batch,
                            region_loss_weight, training_dataset)

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "teacher/configs/smoke.yaml"
CLIPS = 5


def masked_config(tmp_path: Path, **data) -> Path:
    """The teacher smoke config with both loss masks on (so the cache must carry both coverages)."""
    cfg = yaml.safe_load(SMOKE.read_text())
    cfg["data"].update(garment_loss_weight=4.0, body_loss_weight=2.0, **data)
    path = tmp_path / "teacher_masked.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cache")
    config = masked_config(tmp)
    out = tmp / "latents"
    meta = cache_latents.main(["--config", str(config), "--out", str(out), "--clips", str(CLIPS),
                               "--batch-size", "2", "--shard-size", "2", "--threads", "1"])
    return config, out, meta


def test_cached_batches_equal_encoding_on_the_fly(cache):
    """lucidrains-style: what a step reads from the cache == what it would encode from the rendered clips."""
    config, out, meta = cache
    assert meta["clips"] == CLIPS and len(meta["shards"]) == 3  # 2 + 2 + 1
    model_cfg, data = cache_latents.load_sections(str(config))
    comp = build_components(model_cfg)
    cached = training_dataset(data, comp, data.train_length, data.seed)
    assert not isinstance(cached, LatentCache)  # the config itself names no cache
    data.latent_cache = str(out)
    cached = training_dataset(data, comp, data.train_length, data.seed)
    assert isinstance(cached, LatentCache) and len(cached) == CLIPS
    pix = Triplets(build_dataset(data, comp.preset, "train", CLIPS, data.seed))
    collate = torch.utils.data.default_collate
    b_cache = collate([cached[i] for i in range(CLIPS)])
    b_pix = collate([pix[i] for i in range(CLIPS)])
    assert list(b_cache["prompt"]) == list(b_pix["prompt"])
    for a, b in zip(encode_batch(comp.vae, b_cache, "cpu"), encode_batch(comp.vae, b_pix, "cpu")):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    shape = b_pix["video"].shape
    lat_shape = encode_batch(comp.vae, b_pix, "cpu")[2].shape
    w_cache = region_loss_weight(b_cache, lat_shape, comp.preset.temporal_factor, data)
    w_pix = region_loss_weight(b_pix, lat_shape, comp.preset.temporal_factor, data)
    assert w_pix is not None and w_pix.max() > 1.0, f"no garment in {shape}?"
    torch.testing.assert_close(w_cache, w_pix)


def test_teacher_and_teacher_forcing_train_from_the_cache(cache, tmp_path):
    config, out, _ = cache
    res = train_teacher.main(["--config", str(config), "--smoke", "--out", str(tmp_path / "t"),
                              "--latent-cache", str(out)])
    assert res["step"] == 4 and torch.isfinite(torch.tensor(res["loss"]))
    assert (tmp_path / "t/final/transformer/config.json").is_file()
    # teacher forcing from that teacher, on a cache of its own clip length
    tf_cfg = yaml.safe_load((ROOT / "distill/configs/tf_smoke.yaml").read_text())
    tf_cfg["model"]["init"] = str(tmp_path / "t/final")
    tf_path = tmp_path / "tf.yaml"
    tf_path.write_text(yaml.safe_dump(tf_cfg))
    tf_cache = tmp_path / "tf_latents"
    cache_latents.main(["--config", str(tf_path), "--out", str(tf_cache), "--clips", "4", "--threads", "1"])
    res = train_tf.main(["--config", str(tf_path), "--smoke", "--out", str(tmp_path / "tf"),
                         "--latent-cache", str(tf_cache)])
    assert res["step"] == 4 and (tmp_path / "tf/final/transformer/config.json").is_file()


def test_a_cache_that_does_not_fit_the_stage_is_refused(cache, tmp_path, capsys):
    config, out, _ = cache
    model_cfg, data = cache_latents.load_sections(str(config))
    comp = build_components(model_cfg)
    data.latent_cache = str(out)
    # another VAE (another latent space)
    other = build_components(model_cfg)
    with torch.no_grad():
        next(other.vae.parameters()).add_(0.01)
    with pytest.raises(LatentCacheError, match="another VAE"):
        training_dataset(data, other, data.train_length, data.seed)
    # another clip length
    data.frames = 9
    with pytest.raises(LatentCacheError, match="frames"):
        training_dataset(data, comp, data.train_length, data.seed)
    data.frames = 13
    training_dataset(data, comp, data.train_length, data.seed)  # fits
    # a loss mask the cache was built without
    plain = tmp_path / "plain"
    cache_latents.main(["--config", str(SMOKE), "--out", str(plain), "--clips", "2", "--threads", "1"])
    data.latent_cache = str(plain)
    with pytest.raises(LatentCacheError, match="garment_cov"):
        training_dataset(data, comp, data.train_length, data.seed)
    # DMD needs pixels
    dmd_cfg = yaml.safe_load((ROOT / "distill/configs/dmd_smoke.yaml").read_text())
    dmd_cfg.setdefault("data", {})["latent_cache"] = str(out)
    dmd_path = tmp_path / "dmd.yaml"
    dmd_path.write_text(yaml.safe_dump(dmd_cfg))
    with pytest.raises(SystemExit):
        train_dmd.main(["--config", str(dmd_path), "--smoke", "--out", str(tmp_path / "dmd")])
    assert "GR-DMD needs the garment pixels" in capsys.readouterr().err


def test_several_caches_read_as_one(cache, tmp_path):
    """Caches built apart (another data seed, another session) train as one dataset, item for item the caches in
    order; caches with different tensors are refused before a batch fails to collate."""
    config, out, _ = cache
    cfg = yaml.safe_load(config.read_text())
    cfg["data"]["seed"] = cfg["data"].get("seed", 0) + 1
    other_cfg = tmp_path / "other_seed.yaml"
    other_cfg.write_text(yaml.safe_dump(cfg))
    other = tmp_path / "other"
    cache_latents.main(["--config", str(other_cfg), "--out", str(other), "--clips", "2", "--threads", "1"])
    model_cfg, data = cache_latents.load_sections(str(config))
    comp = build_components(model_cfg)
    data.latent_cache = [str(out), str(other)]
    both = training_dataset(data, comp, data.train_length, data.seed)
    a, b = LatentCache(out), LatentCache(other)
    assert len(both) == len(a) + len(b) == CLIPS + 2
    assert a[0]["prompt"] != b[0]["prompt"] or not torch.equal(a[0]["video_latent"], b[0]["video_latent"])
    for i, ref in enumerate([a[j] for j in range(len(a))] + [b[j] for j in range(len(b))]):
        torch.testing.assert_close(both[i]["video_latent"], ref["video_latent"], atol=0, rtol=0)
        assert both[i]["prompt"] == ref["prompt"]
    res = train_teacher.main(["--config", str(config), "--smoke", "--out", str(tmp_path / "t"),
                              "--latent-cache", str(out), str(other)])
    assert res["step"] == 4 and torch.isfinite(torch.tensor(res["loss"]))
    # a cache with only the garment's coverage beside one with the body's too: each fits a garment-only loss,
    # together they would not collate
    cfg["data"]["body_loss_weight"] = 0.0
    garment_only_cfg = tmp_path / "garment_only.yaml"
    garment_only_cfg.write_text(yaml.safe_dump(cfg))
    garment_only = tmp_path / "garment_only"
    cache_latents.main(["--config", str(garment_only_cfg), "--out", str(garment_only), "--clips", "2",
                        "--threads", "1"])
    data.body_loss_weight = 0.0
    data.latent_cache = [str(out), str(garment_only)]
    with pytest.raises(LatentCacheError, match="different tensors"):
        training_dataset(data, comp, data.train_length, data.seed)
    data.latent_cache = [str(out), str(tmp_path / "nowhere")]
    with pytest.raises(LatentCacheError, match="not found"):
        training_dataset(data, comp, data.train_length, data.seed)


def test_lazy_reads_equal_the_in_memory_cache(cache):
    """A cache too big for memory is read clip by clip from the shards, item for item the same, also in
    data-loader worker processes (each opens its own handles)."""
    _, out, _ = cache
    eager, lazy = LatentCache(out), LatentCache(out, max_memory_mb=0)
    assert eager.in_memory and not lazy.in_memory and not lazy.tensors
    assert lazy.keys == eager.keys and len(lazy) == len(eager) == CLIPS
    for i in list(range(CLIPS)) + [-1]:  # across the 2 + 2 + 1 shard boundaries
        a, b = eager[i], lazy[i]
        assert a.keys() == b.keys() and a["prompt"] == b["prompt"]
        for k in a:
            if k != "prompt":
                assert a[k].dtype == b[k].dtype
                torch.testing.assert_close(a[k], b[k], atol=0, rtol=0)
    with pytest.raises(IndexError, match="out of range"):
        lazy[CLIPS]
    collate = torch.utils.data.default_collate
    loader = torch.utils.data.DataLoader(lazy, batch_size=2, num_workers=2)
    batches = list(loader)
    whole = collate([eager[i] for i in range(CLIPS)])
    torch.testing.assert_close(torch.cat([b["video_latent"] for b in batches]), whole["video_latent"])
    assert sum((b["prompt"] for b in batches), []) == whole["prompt"]


def test_broken_caches_fail_with_a_clear_message(cache, tmp_path):
    _, out, _ = cache
    with pytest.raises(LatentCacheError, match="not found"):
        LatentCache(tmp_path / "nowhere")
    unfinished = tmp_path / "unfinished"
    w = LatentCacheWriter(unfinished, {}, shard_size=1)
    w.add({k: torch.zeros(1, 2, 1, 2, 2) for k in ("reference", "garment", "video")}, ["p"])
    with pytest.raises(LatentCacheError, match="never finished"):
        LatentCache(unfinished)  # a shard is written, meta.json is not
    w.close()
    assert len(LatentCache(unfinished)) == 1
    with pytest.raises(FileExistsError):
        LatentCacheWriter(unfinished, {})
    # a corrupt shard names itself
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in out.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "shard_00001.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(LatentCacheError, match="shard_00001.safetensors is corrupt"):
        LatentCache(broken)
    good = (out / "shard_00001.safetensors").read_bytes()
    (broken / "shard_00001.safetensors").write_bytes(good[:-64])  # header intact, the data cut short
    for mode in (True, False):
        with pytest.raises(LatentCacheError, match="shard_00001.safetensors is corrupt"):
            LatentCache(broken, in_memory=mode)
    (broken / "shard_00001.safetensors").unlink()
    with pytest.raises(LatentCacheError, match="shard missing"):
        LatentCache(broken)
    meta = json.loads((out / META_FILE).read_text())
    (broken / META_FILE).write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(LatentCacheError, match="version"):
        LatentCache(broken)
    with pytest.raises(ValueError, match="clips"):
        cache_latents.main(["--config", str(SMOKE), "--out", str(tmp_path / "none"), "--clips", "0"])


def test_fingerprint_follows_the_weights():
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    assert module_fingerprint(a) == module_fingerprint(b)
    assert module_fingerprint(a) == module_fingerprint(b.double())  # the same weights in another precision
    b.float()
    with torch.no_grad():
        b.bias[0] += 1e-6
    assert module_fingerprint(a) != module_fingerprint(b)


@pytest.mark.parametrize("kind", ["init", "init+vae", "vae", "random"])
def test_stage_vae_is_the_stages_vae_without_the_transformer(kind):
    """What the cache encodes with == what the stage will fingerprint and train at (VAE weights, size, factors)."""
    ckpt = ROOT / "assets/checkpoints"
    cfg = {"init": ModelConfig(preset="tiny", init=str(ckpt / "teacher_tiny")),
           "init+vae": ModelConfig(preset="tiny", init=str(ckpt / "teacher_tiny"), vae=str(ckpt / "vae_tiny_dec")),
           "vae": ModelConfig(preset="tiny", vae=str(ckpt / "vae_tiny"), height=128, width=96),
           "random": ModelConfig(preset="test")}[kind]
    preset, vae = build_stage_vae(cfg)
    comp = build_components(cfg)
    assert module_fingerprint(vae) == module_fingerprint(comp.vae)
    assert (preset.height, preset.width, preset.temporal_factor, preset.vae) == (
        comp.preset.height, comp.preset.width, comp.preset.temporal_factor, comp.preset.vae)
    assert not vae.training and not any(p.requires_grad for p in vae.parameters())
    with pytest.raises(FileNotFoundError, match="not a stage checkpoint"):
        build_stage_vae(ModelConfig(preset="tiny", init=str(ckpt)))
