"""Pictures people look at: per-class sample grids and loss curves."""
from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image


def sample_grid(images: torch.Tensor, labels: torch.Tensor, num_classes: int, per_class: int = 8,
                cell: int = 32, pad: int = 2) -> Image.Image:
    """One row per class, `per_class` samples each; pixels [-1, 1] -> 0..255, nearest upscaling."""
    C, H, W = images.shape[1:]
    scale = max(1, cell // max(H, W))
    h, w = H * scale + pad, W * scale + pad
    canvas = np.full((num_classes * h + pad, per_class * w + pad, 3), 255, dtype=np.uint8)
    for c in range(num_classes):
        idx = torch.nonzero(labels == c).flatten()[:per_class]
        for j, i in enumerate(idx.tolist()):
            img = ((images[i].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
            if C == 1:
                img = np.repeat(img, 3, axis=2)
            img = np.kron(img, np.ones((scale, scale, 1), dtype=np.uint8))
            canvas[pad + c * h: pad + c * h + H * scale, pad + j * w: pad + j * w + W * scale] = img[..., :3]
    return Image.fromarray(canvas)


def windowed(losses: list[float], window: int = 50) -> list[dict]:
    """Per-step losses -> [{'iteration': i, 'loss': mean of the last `window`}] every `window` steps."""
    ends = list(range(window, len(losses) + 1, window)) or [len(losses)]
    return [{"iteration": e, "loss": sum(losses[max(0, e - window):e]) / len(losses[max(0, e - window):e])}
            for e in ends if e > 0]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _to_image(fig) -> Image.Image:
    plt = _pyplot()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def fid_vs_nfe(points: list[dict], title: str = "FID vs NFE") -> Image.Image:
    """points: {'model', 'nfe', 'fid'[, 'fid_std']}; one line per model (the teacher at several step
    counts), log-scaled NFE axis (and FID axis when the FIDs span more than 20x), error bars where a
    std is given."""
    fig, ax = _pyplot().subplots(figsize=(5, 3.4), dpi=100)
    for model in sorted({p["model"] for p in points}):
        pts = sorted((p["nfe"], p["fid"], p.get("fid_std", 0.0)) for p in points if p["model"] == model)
        nfe, fids, std = zip(*pts)
        ax.errorbar(nfe, fids, yerr=std if any(std) else None, marker="o" if model == "teacher" else "*",
                    markersize=6 if model == "teacher" else 14, capsize=3, label=model)
        for nfe, f, _ in pts:
            ax.annotate(f"{f:.1f}", (nfe, f), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xscale("log")
    fids = [p["fid"] for p in points if p["fid"] > 0]
    if fids and max(fids) > 20 * min(fids):      # a teacher at too few steps would flatten every other point
        ax.set_yscale("log")
    ax.set_xlabel("NFE (network evaluations per image)")
    ax.set_ylabel("FID (eval split)")
    ax.set_title(title)
    ax.legend()
    return _to_image(fig)


def fid_vs_w(points: list[dict], title: str = "FID and class accuracy vs guidance w") -> Image.Image:
    """points: {'model', 'w', 'fid', 'class_acc'} (metrics.evaluate.guidance_sweep); one curve per model
    (the CFG teacher, each step count of a guided student): FID on the left, class accuracy on the right."""
    fig, (ax_fid, ax_acc) = _pyplot().subplots(1, 2, figsize=(8, 3.4), dpi=100)
    for model in sorted({p["model"] for p in points}):
        pts = sorted((p["w"], p["fid"], p["class_acc"]) for p in points if p["model"] == model)
        w, fids, accs = zip(*pts)
        style = dict(marker="o" if model.startswith("teacher") else "*", label=model)
        ax_fid.plot(w, fids, **style)
        ax_acc.plot(w, accs, **style)
    for ax, label in ((ax_fid, "FID (eval split)"), (ax_acc, "class accuracy")):
        ax.set_xlabel("guidance strength w (CFG scale 1 + w)")
        ax.set_ylabel(label)
    ax_fid.legend(fontsize=8)
    fig.suptitle(title)
    return _to_image(fig)


def fid_over_training(curves: dict[str, list[tuple[int, float, float]]], teacher_fid: float, floor: float,
                      title: str = "FID during distillation") -> Image.Image:
    """curves: name -> [(iteration, FID mean over training seeds, std)]; the teacher's FID (default
    sampler) and the real-vs-real floor as horizontal lines: where each student converges, or not."""
    fig, ax = _pyplot().subplots(figsize=(6, 3.6), dpi=100)
    for name, pts in curves.items():
        it, mean, std = zip(*sorted(pts))
        ax.errorbar(it, mean, yerr=std, marker="o", markersize=4, capsize=3, label=name)
    ax.axhline(teacher_fid, color="black", linestyle="--", label=f"teacher {teacher_fid:.1f}")
    ax.axhline(floor, color="grey", linestyle=":", label=f"real floor {floor:.1f}")
    ax.set_xlabel("distillation iteration")
    ax.set_ylabel("FID (eval split)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _to_image(fig)


def loss_curve(history: list[dict], title: str) -> Image.Image:
    """Plot every 'loss*' series of a log history against its iteration."""
    fig, ax = _pyplot().subplots(figsize=(6, 3.2), dpi=100)
    keys = sorted({k for h in history for k in h if k.startswith("loss")})
    for k in keys:
        pts = [(h.get("iteration", i), h[k]) for i, h in enumerate(history) if k in h]
        if pts:
            ax.plot(*zip(*pts), label=k)
    ax.set_xlabel("iteration")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    return _to_image(fig)
