"""The demo report's CAM section says how the boxes from the maps score on the challenge."""

from __future__ import annotations

from pneumolib.course.report import cam_section


def _summary(**extra) -> dict:
    s = {"n": 5, "pointing_hit": 0.6, "energy_in_box": 0.4, "box_area_fraction": 0.1}
    for key in ("pointing_hit", "energy_in_box", "box_area_fraction"):
        s |= {f"{key}_ci_low": s[key] - 0.1, f"{key}_ci_high": s[key] + 0.1}
    return s | extra


def test_cam_section_reports_the_box_score_where_cam_made_boxes() -> None:
    score = {"value": 0.123, "ci": [0.05, 0.2], "n_images": 9}
    rule = {"method": "gradcam", "layer": "net.layer2"}
    text = "\n".join(cam_section({"val": _summary(), "test": _summary(rsna_map=score,
                                                                    box_rule=rule)}))  # fmt: skip
    assert "0.123 [0.050, 0.200] on test over 9 images" in text and "net.layer2" in text
    plain = "\n".join(cam_section({"val": _summary(), "test": _summary()}))
    assert "Kaggle" not in plain
