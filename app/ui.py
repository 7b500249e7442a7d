"""Gradio 6 Blocks UI; the <video> and its WebRTC offer/answer live in static/fc.js."""
from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from pathlib import Path  # noqa: E402

import gradio as gr  # noqa: E402

from .catalog import Catalog  # noqa: E402
from .config import STATIC_URL, AppConfig  # noqa: E402
from .images import ImageError  # noqa: E402
from .sessions import BadRequest, NotFoundError, SessionManager  # noqa: E402
from fashionchameleon.timeline import Timeline, TimelineError, format_schedule  # noqa: E402

VIDEO_PANEL = """
<div id="fc-panel">
  <video id="fc-video" autoplay muted playsinline></video>
  <div id="fc-status" data-kind="info">Pick a reference and a garment, then press Start.</div>
  <table id="fc-stats"><tbody>
    <tr><th>delivered fps</th><td id="fc-stat-fps">–</td><th>chunk time</th><td id="fc-stat-chunk">–</td></tr>
    <tr><th>time to first frame</th><td id="fc-stat-ttff">–</td><th>last swap latency</th><td id="fc-stat-swap">–</td></tr>
    <tr><th>wearing</th><td id="fc-stat-garment">–</td><th>pending swap</th><td id="fc-stat-pending">–</td></tr>
    <tr><th>video frames shown</th><td id="fc-stat-shown">–</td><th>recording</th><td id="fc-stat-rec">–</td></tr>
  </tbody></table>
  <div id="fc-downloads"></div>
</div>
"""

HELP = """**How to use:** 1) click a reference person (or upload one); 2) click a garment; 3) press **Start**;
4) click other garments to swap them live (rapid clicks coalesce to the last one); 5) **Record** / **Stop recording**
to download an MP4 + JSON timeline. Schedule swaps ahead with the *Timeline* box (`2 -> garment_id`, one per line)."""


def _gallery(catalog: Catalog, kind: str):
    return [(str(i.path), i.id) for i in catalog.items(kind)]


def _caption(evt: gr.SelectData, catalog: Catalog, kind: str) -> str | None:
    v = evt.value
    if isinstance(v, dict) and v.get("caption"):
        return v["caption"]
    items = catalog.items(kind)
    idx = evt.index if isinstance(evt.index, int) else (evt.index or [None])[0]
    return items[idx].id if isinstance(idx, int) and 0 <= idx < len(items) else None


def _selection(ref: str | None, garment: str | None) -> str:
    return f"Reference: **{ref or '—'}** · Garment: **{garment or '—'}**"


def build_blocks(manager: SessionManager, catalog: Catalog, cfg: AppConfig) -> gr.Blocks:
    fps = manager.fps
    with gr.Blocks(title="FashionChameleon") as demo:
        gr.Markdown("# FashionChameleon: live garment swap")
        gr.Markdown(HELP)
        with gr.Row():
            with gr.Column(scale=3):
                gr.HTML(VIDEO_PANEL, elem_id="fc-video-block")
                with gr.Row():
                    start_btn = gr.Button("Start", variant="primary", elem_id="fc-start")
                    stop_btn = gr.Button("Stop", elem_id="fc-stop")
                    rec_btn = gr.Button("Record", elem_id="fc-record")
                    rec_stop_btn = gr.Button("Stop recording", elem_id="fc-record-stop")
                message = gr.Markdown("", elem_id="fc-message")
                rec_files = gr.File(label="Recording (MP4 + timeline JSON)", file_count="multiple",
                                    interactive=False, height=120, elem_id="fc-rec-files")
            with gr.Column(scale=2):
                refs = _gallery(catalog, "reference")
                ref_gallery = gr.Gallery(refs, label="Reference person" + ("" if refs else " (none bundled: upload one)"),
                                         columns=4, height=cfg.gallery_height_px, fit_columns=False, allow_preview=False,
                                         elem_id="fc-references")
                ref_upload = gr.UploadButton("Upload reference", file_types=["image"], elem_id="fc-ref-upload")
                garment_gallery = gr.Gallery(_gallery(catalog, "garment"), label="Garments (click to swap live)",
                                             columns=4, height=cfg.gallery_height_px, fit_columns=False, allow_preview=False,
                                             elem_id="fc-garments")
                garment_upload = gr.UploadButton("Upload garment", file_types=["image"], elem_id="fc-garment-upload")
                selection = gr.Markdown(_selection(catalog.default_id("reference"), catalog.default_id("garment")),
                                        elem_id="fc-selection")
                prompt = gr.Textbox(cfg.default_prompt, label="Motion prompt", elem_id="fc-prompt")
                seed = gr.Number(cfg.default_seed, precision=0, label="Seed", elem_id="fc-seed")
                schedule = gr.Textbox("", lines=3, label=f"Timeline: '<seconds> -> <garment id>' per line ({fps:g} fps)",
                                      placeholder="2 -> garment_b\n4 -> garment_c", elem_id="fc-schedule")
                timeline_upload = gr.UploadButton("Load timeline JSON", file_types=[".json"], elem_id="fc-timeline-upload")
        ref_id = gr.Textbox(catalog.default_id("reference") or "", visible="hidden", elem_id="fc-ref-id")
        garment_id = gr.Textbox(catalog.default_id("garment") or "", visible="hidden", elem_id="fc-garment-id")
        sid = gr.Textbox("", visible="hidden", elem_id="fc-sid")

        def on_ref_select(evt: gr.SelectData, garment):
            rid = _caption(evt, catalog, "reference")
            return rid, _selection(rid, garment)

        async def on_garment_select(evt: gr.SelectData, ref, session_id):
            gid = _caption(evt, catalog, "garment")
            note = ""
            if session_id:
                try:
                    manager.swap(session_id, gid)
                    note = f"Swap to **{gid}** requested."
                except NotFoundError:
                    note = "The stream has ended; press Start."
                except (ImageError, BadRequest) as e:
                    note = f"⚠ {e}"
            return gid, _selection(ref, gid), note

        def on_upload(kind: str):
            async def handler(file, ref, garment, session_id):
                path = Path(file if isinstance(file, str) else getattr(file, "name", ""))
                try:
                    item = catalog.add_upload(kind, path.read_bytes())
                except ImageError as e:
                    return gr.skip(), ref, garment, _selection(ref, garment), f"⚠ Upload rejected: {e}"
                except OSError:
                    return gr.skip(), ref, garment, _selection(ref, garment), "⚠ Upload failed"
                note = f"Uploaded {kind} **{item.id}**."
                if kind == "reference":
                    ref = item.id
                else:
                    garment = item.id
                    if session_id:
                        try:
                            manager.swap(session_id, item.id)
                            note += " Swap requested."
                        except NotFoundError:
                            pass
                return _gallery(catalog, kind), ref, garment, _selection(ref, garment), note

            return handler

        def on_timeline(file):
            try:
                tl = Timeline.from_json(Path(file if isinstance(file, str) else file.name).read_text())
            except (TimelineError, OSError, UnicodeDecodeError) as e:
                return gr.skip(), gr.skip(), gr.skip(), f"⚠ Timeline rejected: {e}"
            text = format_schedule(tl.swaps, fps)
            return text, tl.prompt or gr.skip(), tl.seed, f"Loaded timeline with {len(tl.swaps)} swaps."

        async def on_record(session_id):
            if not session_id:
                return "⚠ Start a stream first."
            try:
                manager.record_start(session_id)
            except (NotFoundError, BadRequest) as e:
                return f"⚠ {e if isinstance(e, BadRequest) else 'the stream has ended'}"
            return "Recording…"

        async def on_record_stop(session_id):
            try:
                r = await manager.record_stop(session_id)
            except (NotFoundError, BadRequest) as e:
                return gr.skip(), f"⚠ {e if isinstance(e, BadRequest) else 'no active stream'}"
            mp4, js = manager.recording_path(r["id"], "mp4"), manager.recording_path(r["id"], "json")
            return [str(mp4), str(js)], f"Recorded {r['frames']} frames."

        ref_gallery.select(on_ref_select, [garment_id], [ref_id, selection])
        garment_gallery.select(on_garment_select, [ref_id, sid], [garment_id, selection, message],
                               trigger_mode="always_last", show_progress="hidden")
        ref_upload.upload(on_upload("reference"), [ref_upload, ref_id, garment_id, sid],
                          [ref_gallery, ref_id, garment_id, selection, message])
        garment_upload.upload(on_upload("garment"), [garment_upload, ref_id, garment_id, sid],
                              [garment_gallery, ref_id, garment_id, selection, message])
        timeline_upload.upload(on_timeline, [timeline_upload], [schedule, prompt, seed, message])
        start_btn.click(None, [ref_id, garment_id, prompt, seed, schedule], [sid],
                        js="(r, g, p, s, t) => window.fc.start(r, g, p, s, t)")
        stop_btn.click(None, [], [sid], js="() => window.fc.stop()")
        rec_btn.click(on_record, [sid], [message])
        rec_stop_btn.click(on_record_stop, [sid], [rec_files, message])
    return demo


def mount_ui(app, manager: SessionManager, catalog: Catalog, cfg: AppConfig):
    demo = build_blocks(manager, catalog, cfg)
    allowed = [str(p) for p in (cfg.references_dir, cfg.garments_dir, manager.record_dir, catalog.upload_dir)]
    head = f'<link rel="stylesheet" href="{STATIC_URL}/fc.css"><script src="{STATIC_URL}/fc.js"></script>'
    return gr.mount_gradio_app(app, demo, path=cfg.ui_path, allowed_paths=allowed, head=head,
                               max_file_size=cfg.images.max_upload_bytes, footer_links=[], server_name=cfg.host,
                               server_port=cfg.port)


__all__ = ["build_blocks", "mount_ui"]
