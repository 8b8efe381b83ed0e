"""Flatten teacher/student figures into the run's metrics and a readable table."""
from __future__ import annotations


def excess_fid_ratio(student_excess: float, teacher_excess: float) -> float:
    """(student FID - floor) / (teacher FID - floor): how many times further above the real-vs-real
    floor the student is than its teacher (1: as close; < 1: closer). A teacher at or below the floor
    (excess <= 0, within the floor's noise) gives 0 for a student there too, else inf."""
    if teacher_excess > 0:
        return student_excess / teacher_excess
    return 0.0 if student_excess <= 0 else float("inf")


def summary(teacher: dict, student: dict, gap: dict) -> dict:
    """One flat dict: FIDs (with feature net, reference, counts), accuracy, NFE, wall-clock."""
    floor = teacher["real_floor"]
    t_sec, s_sec = teacher["sampling_seconds"], student["sampling_seconds"]
    return {
        "teacher_fid": teacher["fid"], "teacher_fid_train": teacher["fid_train"],
        "teacher_class_acc": teacher["class_acc"], "teacher_nfe": teacher["nfe"],
        "teacher_sampling_seconds": t_sec,
        "student_fid": student["fid"], "student_fid_train": student["fid_train"],
        "student_class_acc": student["class_acc"], "student_nfe": student["nfe"],
        "student_sampling_seconds": s_sec,
        "fid_ratio": student["fid"] / teacher["fid"] if teacher["fid"] > 0 else float("inf"),
        "distill_gap_fid": gap["fid"], "real_floor_fid": floor["fid"],
        "real_class_acc": teacher.get("real_class_acc"),      # None: teacher metrics from before it was recorded
        # excess FID: above the real-vs-real floor at the same sample count (what a model can still gain)
        "teacher_excess_fid": teacher["fid"] - floor["fid"], "student_excess_fid": student["fid"] - floor["fid"],
        "excess_fid_ratio": excess_fid_ratio(student["fid"] - floor["fid"], teacher["fid"] - floor["fid"]),
        # per-image times in different processes/steps; the benchmark measures both in one process
        "nfe_speedup": teacher["nfe"] / student["nfe"],
        "sampling_speedup": (t_sec / teacher["num_samples"]) / (s_sec / student["num_samples"]),
        "feature_net": student["fid_detail"]["feature_net"],
        "num_samples": student["num_samples"],
        "reference": f"{student['fid_detail']['reference']} (n={student['fid_detail']['num_reference']})",
        "real_floor": f"{floor['samples']} (n={floor['num_samples']}) vs {floor['reference']} (n={floor['num_reference']})",
        "teacher_sha256": teacher.get("teacher_sha256", ""),
        "teacher_kid": teacher["kid"], "student_kid": student["kid"],
        "teacher_latency_p50_ms": 1000 * teacher["latency_p50"], "student_latency_p50_ms": 1000 * student["latency_p50"],
        "teacher_throughput": teacher["throughput"], "student_throughput": student["throughput"],
        "student_nonfinite_samples": student["nonfinite_samples"],
    }


def summary_table(r: dict) -> str:
    """Markdown table of the figures people compare."""
    rows = [("", "teacher", "student"),
            ("FID vs eval split", f"{r['teacher_fid']:.3f}", f"{r['student_fid']:.3f}"),
            ("excess FID (FID - real floor)", f"{r['teacher_excess_fid']:.3f}", f"{r['student_excess_fid']:.3f}"),
            ("FID vs train split", f"{r['teacher_fid_train']:.3f}", f"{r['student_fid_train']:.3f}"),
            ("class accuracy", f"{r['teacher_class_acc']:.3f}", f"{r['student_class_acc']:.3f}"),
            ("NFE", str(r["teacher_nfe"]), str(r["student_nfe"])),
            *([("KID vs eval split", f"{r['teacher_kid']:.4f}", f"{r['student_kid']:.4f}")]
              if r["teacher_kid"] is not None and r["student_kid"] is not None else []),
            ("sampling seconds", f"{r['teacher_sampling_seconds']:.2f}", f"{r['student_sampling_seconds']:.2f}"),
            ("p50 latency per image (ms, batch 1)", f"{r['teacher_latency_p50_ms']:.1f}",
             f"{r['student_latency_p50_ms']:.1f}"),
            ("throughput (images/s)", f"{r['teacher_throughput']:.0f}", f"{r['student_throughput']:.0f}")]
    lines = [f"| {a} | {b} | {c} |" for a, b, c in rows]
    lines.insert(1, "|---|---|---|")
    lines.append(f"\nstudent/teacher FID ratio {r['fid_ratio']:.3f}, excess FID ratio {r['excess_fid_ratio']:.3f}; "
                 f"distillation gap FID(student, teacher) "
                 f"{r['distill_gap_fid']:.3f}; real floor {r['real_floor_fid']:.3f} [{r['real_floor']}]; "
                 f"sampling speedup {r['sampling_speedup']:.1f}x")
    if "agreement_rmse" in r:
        lines.append(f"student vs teacher on the same noise ({r['agreement_samples']} images): pixel RMSE "
                     f"{r['agreement_rmse']:.3f}, same class {r['agreement_class']:.3f}")
    lines.append(f"FID: feature net {r['feature_net']}, {r['num_samples']} generated samples per model "
                 f"(class-balanced), reference {r['reference']}")
    return "\n".join(lines)
