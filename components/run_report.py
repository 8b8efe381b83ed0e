"""The run report: one self-contained HTML page (pictures inlined) that says how good the student
is and what the gate decided - shown in the ZenML dashboard and written by the DVC export stage."""
from __future__ import annotations

import base64
import html
import io
import math

from PIL import Image

from components.metrics.summary import summary_table


def _img(picture: Image.Image, alt: str) -> str:
    buf = io.BytesIO()
    picture.save(buf, format="PNG")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _markdown_table(md: str) -> str:
    """summary_table's markdown -> an HTML table (+ its footnote paragraphs)."""
    rows, notes = [], []
    for line in md.splitlines():
        if line.startswith("|---"):
            continue
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip("|").split("|")])
        elif line.strip():
            notes.append(f"<p>{html.escape(line)}</p>")
    head, body = rows[0], rows[1:]
    out = "<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr>"
    out += "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body)
    return out + "</table>" + "".join(notes)


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else html.escape(str(v))


def gate_html(decision: dict) -> str:
    verdict = (f'<p class="pass">PASSED - promoted to <b>{html.escape(str(decision["promote_to"]))}</b>'
               f'{" (model version " + html.escape(str(decision.get("model_version"))) + ")" if decision.get("model_version") else ""}</p>'
               if decision["passed"] else
               '<p class="fail">REJECTED - nothing promoted, export skipped: '
               + html.escape("; ".join(decision["reasons"])) + "</p>")
    rows = "".join(f"<tr><td>{html.escape(c['rule'])}</td><td>{_fmt(c['value'])}</td><td>{_fmt(c['threshold'])}</td>"
                   f"<td>{'pass' if c['passed'] else 'FAIL'}</td></tr>" for c in decision["checks"])
    return verdict + f"<table><tr><th>rule</th><th>value</th><th>threshold</th><th></th></tr>{rows}</table>"


def run_report(metrics: dict, decision: dict, curve: Image.Image, teacher_grid: Image.Image,
               student_grid: Image.Image, provenance: dict, title: str = "fewstep run report",
               training: Image.Image | None = None,
               guidance: tuple[Image.Image, list[dict]] | None = None) -> str:
    """The page: gate decision, metrics table, FID vs NFE, FID during distillation (`training`, when
    the run had checkpoint FIDs), FID and class accuracy vs w (`guidance`: the picture and its points, a
    guided chain), teacher vs student samples, provenance."""
    if metrics.get("student_nonfinite_samples"):
        table = (f"<p class='fail'>The student's samples contain NaN/inf ({metrics['student_nonfinite_samples']} of "
                 f"{metrics['num_samples']}): it cannot be scored.</p>")
    else:
        table = _markdown_table(summary_table(metrics))
    prov = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>"
                   for k, v in provenance.items())
    ratio = metrics.get("fid_ratio", math.nan)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
 body {{ font-family: sans-serif; margin: 24px; color: #222; }}
 table {{ border-collapse: collapse; margin: 8px 0 16px; }}
 td, th {{ border: 1px solid #ccc; padding: 4px 10px; text-align: left; }}
 .pass {{ color: #17632a; font-weight: bold; }} .fail {{ color: #a11; font-weight: bold; }}
 .grids {{ display: flex; gap: 24px; flex-wrap: wrap; }} img {{ image-rendering: pixelated; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>student FID {_fmt(metrics.get('student_fid'))} at {_fmt(metrics.get('student_nfe'))} NFE vs teacher
{_fmt(metrics.get('teacher_fid'))} at {_fmt(metrics.get('teacher_nfe'))} NFE (ratio {_fmt(ratio)})</p>
<h2>Quality gate</h2>
{gate_html(decision)}
<h2>Metrics</h2>
{table}
<h2>FID vs NFE</h2>
{_img(curve, "FID vs NFE")}
{"<h2>FID during distillation</h2>" + _img(training, "FID during distillation") if training is not None else ""}
{guidance_html(*guidance) if guidance is not None else ""}
<h2>Samples (one row per class)</h2>
<div class="grids"><figure>{_img(teacher_grid, "teacher samples")}<figcaption>teacher</figcaption></figure>
<figure>{_img(student_grid, "student samples")}<figcaption>student</figcaption></figure></div>
<h2>Provenance</h2>
<table>{prov}</table>
</body></html>
"""


def guidance_html(picture: Image.Image, points: list[dict]) -> str:
    """The guidance sweep: its picture and a table (one row per model, FID / class accuracy per w)."""
    ws = sorted({p["w"] for p in points})
    head = "".join(f"<th>w={w:g}</th>" for w in ws)
    rows = []
    for model in dict.fromkeys(p["model"] for p in points):          # in sweep order: teacher, then students
        got = {p["w"]: p for p in points if p["model"] == model}
        cells = "".join(f"<td>{_fmt(got[w]['fid'])} / {_fmt(got[w]['class_acc'])} ({got[w]['nfe']} NFE)</td>"
                        if w in got else "<td></td>" for w in ws)
        rows.append(f"<tr><td>{html.escape(model)}</td>{cells}</tr>")
    return (f"<h2>FID and class accuracy vs guidance w</h2>{_img(picture, 'FID and class accuracy vs w')}"
            f"<table><tr><th>model</th>{head}</tr>{''.join(rows)}</table>"
            "<p>FID / class accuracy (network evaluations per image) per w, CFG scale 1 + w: the teacher takes two "
            "evaluations per step where w > 0, a guided student one.</p>")


def training_curve(history: list[dict], metrics: dict) -> Image.Image | None:
    """The student's checkpoint FIDs (history rows with 'fid') against the iteration, with the teacher's
    FID and the real floor as lines; None when the run took none (distill.fid_every 0)."""
    from components.viz import fid_over_training

    points = [(int(h["iteration"]), float(h["fid"]), 0.0) for h in history if "fid" in h]
    if not points:
        return None
    return fid_over_training({"student": points}, float(metrics["teacher_fid"]), float(metrics["real_floor_fid"]))


def fid_points(teacher_curve: list[dict], metrics: dict) -> list[dict]:
    """The FID-vs-NFE points: the teacher at each step count, and the student (a CTM student: one curve
    per gamma of its step x gamma sweep)."""
    points = [dict(p) for p in teacher_curve]
    if metrics.get("student_fid_vs_nfe"):
        points += [{k: p[k] for k in ("model", "nfe", "fid")} for p in metrics["student_fid_vs_nfe"]]
    elif math.isfinite(float(metrics["student_fid"])):
        points.append({"model": "student", "nfe": metrics["student_nfe"],
                       "fid": metrics["student_fid"]})
    return points
